// Events page: a live tail of the JSONL event log, polled every 2 s from /admin/api/events.
"use strict";

(() => {
  const { api, el, badge, showError, time, dash } = Admin;
  const INTERVAL_MS = 2000;
  const MAX_ROWS = 200;
  const table = document.getElementById("events");
  const body = table.tBodies[0];
  const statusBadge = document.getElementById("events-status");
  const pause = document.getElementById("pause-events");
  let names = new Map();
  let cursor = null;
  let paused = false;
  let timer = null;

  function statusKind(status) {
    if (status >= 500) return "bad";
    if (status >= 400) return "warn";
    return "ok";
  }

  function row(event, fresh) {
    const duration = typeof event.duration_ms === "number" ? `${event.duration_ms.toFixed(1)} ms` : "—";
    return el(
      "tr",
      { className: fresh ? "fresh" : undefined },
      el("td", {}, time(event.time, true)),
      el("td", {}, badge(String(event.status), statusKind(event.status))),
      el("td", {}, event.method),
      el("td", { className: "path" }, event.path),
      el("td", {}, dash(event.model)),
      el("td", { className: "num" }, duration),
      el("td", { className: "num" }, dash(event.tokens)),
      el("td", {}, dash(names.get(event.project_id) || event.project_id)),
    );
  }

  function setStatus(text, kind) {
    statusBadge.textContent = text;
    statusBadge.className = kind ? `badge ${kind}` : "badge";
  }

  async function poll() {
    timer = null;
    if (paused) return;
    try {
      const query = cursor === null ? "" : `?after=${cursor}`;
      const tail = await api("GET", `/admin/api/events${query}`);
      if (!tail.configured) {
        document.getElementById("events-unconfigured").hidden = false;
        table.hidden = true;
        pause.hidden = true;
        setStatus("no event log configured");
        return;
      }
      const fresh = cursor !== null;
      cursor = tail.cursor;
      // newest first: the batch goes on top, in its own order
      body.prepend(...tail.events.map((event) => row(event, fresh)));
      while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
      document.getElementById("events-empty").hidden = body.rows.length > 0;
      setStatus(`live · every ${INTERVAL_MS / 1000} s`, "ok");
    } catch (error) {
      setStatus("unreachable", "bad");
      showError(error);
    }
    timer = setTimeout(poll, INTERVAL_MS);
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      clearTimeout(timer);
      setStatus("paused", "warn");
    } else {
      poll();
    }
  });

  Admin.projects()
    .then((list) => { names = new Map(list.map((p) => [p.id, p.name])); }, showError)
    .then(poll);
})();
