// Events page: the JSONL event log, newest first, from /admin/api/events: filters, a live tail of what
// is appended (polled every 2 s), older pages on demand, a row opens the event in full.
"use strict";

(() => {
  const { api, el, badge, showError, time, dash, flash } = Admin;
  const INTERVAL_MS = 2000;
  const MAX_LIVE_ROWS = 500; // live rows past this drop off the bottom (Older reads them again)
  const FILTERS = ["project_id", "token_id", "status", "model", "q"];
  const table = document.getElementById("events");
  const body = table.tBodies[0];
  const statusBadge = document.getElementById("events-status");
  const pause = document.getElementById("pause-events");
  const form = document.getElementById("events-filter");
  const olderButton = document.getElementById("older-events");
  const scanInfo = document.getElementById("scan-info");
  const empty = document.getElementById("events-empty");
  let projectNames = new Map();
  let tokens = [];
  let tokenNames = new Map();
  let cursor = null; // where the live tail goes on (after=)
  let older = null; // where the next older page starts (before=)
  let paused = false;
  let timer = null;
  let generation = 0; // answers to an older filter are dropped

  function statusKind(status) {
    if (status >= 500) return "bad";
    if (status >= 400) return "warn";
    return "ok";
  }

  function detailUrl(event) {
    return `/admin/events/${encodeURIComponent(event.id)}?at=${event.at}`;
  }

  function row(event, fresh) {
    const duration = typeof event.duration_ms === "number" ? `${event.duration_ms.toFixed(1)} ms` : "—";
    const link = el("a", { href: detailUrl(event) }, time(event.time, true));
    const tr = el(
      "tr",
      { className: fresh ? "fresh" : undefined, dataset: { at: event.at } },
      el("td", {}, link),
      el("td", {}, badge(String(event.status), statusKind(event.status))),
      el("td", {}, event.method),
      el("td", { className: "path" }, event.path),
      el("td", {}, dash(event.model)),
      el("td", { className: "num" }, duration),
      el("td", { className: "num" }, dash(event.tokens)),
      el("td", {}, dash(projectNames.get(event.project_id) || event.project_id)),
      el("td", {}, dash(tokenNames.get(event.token_id) || event.token_id.slice(0, 8))),
    );
    tr.addEventListener("click", (click) => {
      if (click.target.closest("a") || window.getSelection().toString()) return;
      window.location.assign(detailUrl(event));
    });
    return tr;
  }

  function setStatus(text, kind) {
    statusBadge.textContent = text;
    statusBadge.className = kind ? `badge ${kind}` : "badge";
  }

  function filterParams() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function filtered() {
    return filterParams().toString() !== "";
  }

  async function fetchPage(extra) {
    const params = filterParams();
    for (const [key, value] of Object.entries(extra)) params.set(key, String(value));
    const query = params.toString();
    return api("GET", `/admin/api/events${query ? `?${query}` : ""}`);
  }

  function showPager(page) {
    older = page.older;
    olderButton.hidden = older === null;
    const mib = (page.scanned / 1048576).toFixed(1);
    scanInfo.textContent = older !== null && page.events.length < 50 ? `searched ${mib} MiB of the log so far` : "";
  }

  function showEmpty() {
    empty.textContent = filtered()
      ? "No events match in the part of the log searched so far."
      : "No events yet: they appear here as requests go through the proxy.";
    empty.hidden = body.rows.length > 0;
  }

  function unconfigured() {
    document.getElementById("events-unconfigured").hidden = false;
    table.hidden = true;
    pause.hidden = true;
    form.hidden = true;
    setStatus("no event log configured");
  }

  // The newest page for the current filters: replaces the rows, restarts the live tail.
  async function load() {
    const mine = ++generation;
    clearTimeout(timer);
    timer = null;
    history.replaceState(null, "", filtered() ? `?${filterParams()}` : location.pathname);
    try {
      const page = await fetchPage({});
      if (mine !== generation) return;
      if (!page.configured) return unconfigured();
      cursor = page.cursor;
      body.replaceChildren(...page.events.map((event) => row(event, false)));
      showPager(page);
      showEmpty();
      setStatus(paused ? "paused" : `live · every ${INTERVAL_MS / 1000} s`, paused ? "warn" : "ok");
    } catch (error) {
      setStatus("unreachable", "bad");
      showError(error);
    }
    if (!paused) timer = setTimeout(poll, INTERVAL_MS);
  }

  async function poll() {
    timer = null;
    if (paused || cursor === null) return;
    const mine = generation;
    try {
      const page = await fetchPage({ after: cursor });
      if (mine !== generation) return;
      cursor = page.cursor;
      body.prepend(...page.events.map((event) => row(event, true)));
      if (body.rows.length > MAX_LIVE_ROWS) {
        while (body.rows.length > MAX_LIVE_ROWS) body.deleteRow(-1);
        older = Number(body.rows[body.rows.length - 1].dataset.at);
        olderButton.hidden = false;
      }
      showEmpty();
      setStatus(`live · every ${INTERVAL_MS / 1000} s`, "ok");
    } catch (error) {
      setStatus("unreachable", "bad");
      showError(error);
    }
    if (!paused && mine === generation) timer = setTimeout(poll, INTERVAL_MS);
  }

  async function loadOlder() {
    if (older === null) return;
    const mine = generation;
    olderButton.disabled = true;
    try {
      const page = await fetchPage({ before: older });
      if (mine !== generation) return;
      body.append(...page.events.map((event) => row(event, false)));
      showPager(page);
      showEmpty();
      if (page.events.length === 0 && page.older === null) flash("That is the start of the event log.", "ok");
    } catch (error) {
      showError(error);
    } finally {
      olderButton.disabled = false;
    }
  }

  function tokenOptions() {
    const select = form.elements.token_id;
    const chosen = select.value;
    const project = form.elements.project_id.value;
    const fixed = Array.from(select.options).filter((o) => o.value === "");
    select.replaceChildren(...fixed);
    for (const token of tokens) {
      if (project && token.project_id !== project) continue;
      select.append(el("option", { value: token.id }, tokenNames.get(token.id)));
    }
    select.value = Array.from(select.options).some((o) => o.value === chosen) ? chosen : "";
  }

  async function loadNames() {
    const [projects, tokenList] = await Promise.all([Admin.projects(), api("GET", "/manage/tokens")]);
    projectNames = new Map(projects.map((p) => [p.id, p.name]));
    tokens = tokenList.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    tokenNames = new Map(tokens.map((t) => [t.id, t.name ? `${t.name} (${t.token})` : t.token]));
    const wanted = new URLSearchParams(location.search);
    Admin.projectOptions(form.elements.project_id, projects, wanted.get("project_id") || "");
    form.elements.token_id.value = "";
    tokenOptions();
    for (const name of FILTERS) {
      if (name !== "project_id" && wanted.get(name)) {
        if (name === "token_id" && !tokenNames.has(wanted.get(name))) {
          form.elements.token_id.append(el("option", { value: wanted.get(name) }, wanted.get(name).slice(0, 8)));
        }
        form.elements[name].value = wanted.get(name);
      }
    }
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      clearTimeout(timer);
      timer = null;
      setStatus("paused", "warn");
    } else {
      poll();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  form.elements.project_id.addEventListener("change", () => {
    tokenOptions();
    load();
  });
  form.elements.token_id.addEventListener("change", load);
  document.getElementById("clear-filter").addEventListener("click", () => {
    form.reset();
    tokenOptions();
    load();
  });
  olderButton.addEventListener("click", loadOlder);

  loadNames().catch(showError).then(load);
})();
