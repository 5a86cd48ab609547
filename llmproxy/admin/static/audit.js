// Audit log page: filters (action, result, project) and paging over GET /manage/audit, newest first.
"use strict";

(() => {
  const { api, el, badge, showError, time, dash, fill } = Admin;
  const PAGE_SIZE = 25;
  const filter = document.getElementById("audit-filter");
  const table = document.getElementById("audit");
  const prev = document.getElementById("prev-page");
  const next = document.getElementById("next-page");
  const info = document.getElementById("page-info");
  let names = new Map();
  let page = 1;

  const RESULT_KIND = { success: "ok", denied: "warn", error: "bad" };

  function details(record) {
    const text = record.details && Object.keys(record.details).length ? JSON.stringify(record.details) : "";
    return el("td", { className: "details" }, text ? el("code", { title: text }, text) : "");
  }

  function row(record) {
    const project = record.project_id ? names.get(record.project_id) || record.project_id : null;
    return el(
      "tr",
      {},
      el("td", {}, time(record.timestamp, true)),
      el("td", {}, el("code", {}, record.action)),
      el("td", {}, badge(record.result, RESULT_KIND[record.result])),
      el("td", {}, dash(record.reason)),
      el("td", {}, record.actor),
      el("td", {}, dash(project)),
      el("td", { title: dash(record.user_agent) }, dash(record.client_ip)),
      details(record),
    );
  }

  async function load() {
    const params = new URLSearchParams({ page: String(page), page_size: String(PAGE_SIZE) });
    for (const key of ["action", "result", "project_id"]) {
      const value = filter.elements[key].value;
      if (value) params.set(key, value);
    }
    try {
      const result = await api("GET", `/manage/audit?${params}`);
      fill(table, result.events.map(row));
      const pages = Math.max(result.total_pages, 1);
      info.textContent = `Page ${result.page} of ${pages} · ${result.total_count} record(s)`;
      prev.disabled = page <= 1;
      next.disabled = page >= pages;
    } catch (error) {
      showError(error);
    }
  }

  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    page = 1;
    load();
  });
  filter.addEventListener("change", () => {
    page = 1;
    load();
  });
  prev.addEventListener("click", () => {
    page = Math.max(1, page - 1);
    load();
  });
  next.addEventListener("click", () => {
    page += 1;
    load();
  });

  Admin.projects()
    .then((list) => {
      names = new Map(list.map((p) => [p.id, p.name]));
      Admin.projectOptions(filter.elements.project_id, list);
    }, showError)
    .then(load);
})();
