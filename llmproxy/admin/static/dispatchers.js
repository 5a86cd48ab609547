// Dispatchers page: delivery counters and lag per service, and the event bus, from GET /metrics.
"use strict";

(() => {
  const { el, badge, dash, fill } = Admin;
  const INTERVAL_MS = 5000;
  const view = document.getElementById("dispatch-view");
  const statusBadge = document.getElementById("metrics-status");

  function setStatus(text, kind) {
    statusBadge.textContent = text;
    statusBadge.className = kind ? `badge ${kind}` : "badge";
  }

  function showDisabled() {
    document.getElementById("metrics-disabled").hidden = false;
    document.getElementById("dispatchers-card").hidden = true;
    document.getElementById("bus-card").hidden = true;
    setStatus("metrics disabled", "warn");
  }

  const num = (value) => el("td", { className: "num" }, dash(value));

  function row(service, f) {
    const lag = f.lag === null || f.lag === undefined ? "—" : f.lag;
    return el(
      "tr",
      {},
      el("td", {}, el("strong", {}, service)),
      num(f.delivered),
      num(f.retried),
      el("td", { className: "num" }, f.failed ? badge(String(f.failed), "bad") : "0"),
      el("td", { className: "num" }, f.dead_lettered ? badge(String(f.dead_lettered), "bad") : "0"),
      el("td", { className: "num" }, lag),
      num(f.pending),
      num(f.reports),
    );
  }

  function figure(label, value) {
    return el("div", {}, el("dt", {}, label), el("dd", {}, dash(value)));
  }

  function render(metrics) {
    const services = Object.entries(metrics.dispatchers || {}).sort(([a], [b]) => a.localeCompare(b));
    fill(document.getElementById("dispatchers"), services.map(([name, f]) => row(name, f)));
    const events = metrics.events || {};
    const redis = metrics.redis_up === null || metrics.redis_up === undefined ? "n/a" : metrics.redis_up ? "up" : "down";
    document.getElementById("bus").replaceChildren(
      figure("Published", events.published),
      figure("Dropped", events.dropped),
      figure("Spilled (Redis down)", events.spilled),
      figure("Waiting to publish", events.pending),
      figure("Stream length", events.stream_length),
      figure("Redis", redis),
    );
  }

  // The dead-letter count comes from the admin API, metrics enabled or not.
  async function refreshDeadLetters() {
    const count = document.getElementById("dead-count");
    try {
      const page = await Admin.api("GET", "/admin/api/dead-letters?limit=0");
      count.textContent = page.configured ? String(page.count) : "not kept";
      count.className = page.count ? "badge bad" : "badge ok";
    } catch (error) {
      count.textContent = "unreachable";
      count.className = "badge warn";
    }
  }

  async function refresh() {
    try {
      const response = await fetch("/metrics", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.status === 404) {
        showDisabled();
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
      await refreshDeadLetters();
      setStatus(`updated ${new Date().toLocaleTimeString()}`, "ok");
    } catch (error) {
      setStatus(`unreachable: ${error.message}`, "bad");
    }
    setTimeout(refresh, INTERVAL_MS);
  }

  if (view.dataset.metrics === "disabled") {
    showDisabled();
    refreshDeadLetters();
  } else refresh();
})();
