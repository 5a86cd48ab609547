// Dead letters page: the newest events a backend refused for good, from /admin/api/dead-letters.
"use strict";

(() => {
  const { api, el, badge, showError, time, dash, fill } = Admin;
  const statusBadge = document.getElementById("dead-status");

  function row(letter) {
    return el(
      "tr",
      {},
      el("td", { className: "path" }, letter.id),
      el("td", {}, time(letter.time, true)),
      el("td", {}, el("strong", {}, letter.service)),
      el("td", { className: "path" }, `${letter.method} ${letter.path}`),
      el("td", {}, dash(letter.status)),
      el("td", {}, letter.error),
    );
  }

  async function load() {
    try {
      const page = await api("GET", "/admin/api/dead-letters?limit=200");
      if (!page.configured) {
        document.getElementById("dead-unconfigured").hidden = false;
        document.getElementById("dead-letters").hidden = true;
        statusBadge.textContent = "not kept";
        return;
      }
      document.getElementById("dead-where").textContent = `${page.count} in ${page.where}, newest first`;
      fill(document.getElementById("dead-letters"), page.entries.map(row));
      document.getElementById("dead-empty").hidden = page.count > 0;
      statusBadge.replaceWith(badge(String(page.count), page.count ? "bad" : "ok"));
    } catch (error) {
      statusBadge.textContent = "unreachable";
      showError(error);
    }
  }

  load();
})();
