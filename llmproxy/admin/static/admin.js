// llmproxy admin UI: what every page shares. No framework; data goes into the page as text nodes only.
"use strict";

const Admin = (() => {
  const csrfToken = document.querySelector('meta[name="csrf-token"]').getAttribute("content");

  class ApiError extends Error {
    constructor(message, status, param) {
      super(message);
      this.status = status;
      this.param = param;
    }
  }

  // Calls the management API with the session cookie; changes carry the CSRF token.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
    const options = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    if (response.status === 401) {
      window.location.assign("/admin/login");
      throw new ApiError("Your session has ended: sign in again.", 401);
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error ? data.error : {};
      throw new ApiError(error.message || `HTTP ${response.status}`, response.status, error.param);
    }
    return data;
  }

  // el("td", {className: "num", title: "…"}, "text", otherNode): children become text nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) throw new Error("event handlers are attached with addEventListener");
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function button(label, onClick, className) {
    const node = el("button", { type: "button", className: className || "small" }, label);
    node.addEventListener("click", onClick);
    return node;
  }

  function badge(text, kind) {
    return el("span", { className: kind ? `badge ${kind}` : "badge" }, text);
  }

  let flashTimer = null;
  function flash(message, kind) {
    const box = document.getElementById("flash");
    box.textContent = message;
    box.className = kind ? `alert ${kind}` : "alert";
    box.hidden = false;
    clearTimeout(flashTimer);
    if (kind !== "error") flashTimer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  function showError(error) {
    if (error && error.status === 401) return;
    flash(error && error.message ? error.message : String(error), "error");
  }

  const pad = (n) => String(n).padStart(2, "0");
  // A timestamp as local "YYYY-MM-DD HH:MM[:SS]" text, the ISO value in its title.
  function time(iso, seconds) {
    if (!iso) return el("span", { className: "muted" }, "—");
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return el("span", {}, iso);
    let text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (seconds) text += `:${pad(d.getSeconds())}`;
    return el("time", { datetime: iso, title: iso }, text);
  }

  function dash(value) {
    return value === null || value === undefined || value === "" ? "—" : value;
  }

  // Rows into a table's tbody; the table's sibling ".empty" shows when there are none.
  function fill(table, rows) {
    const body = table.tBodies[0];
    body.replaceChildren(...rows);
    const empty = table.parentElement.querySelector(".empty");
    if (empty) empty.hidden = rows.length > 0;
  }

  async function projects() {
    const list = await api("GET", "/manage/projects");
    list.sort((a, b) => a.name.localeCompare(b.name));
    return list;
  }

  function projectOptions(select, list, keep) {
    const chosen = keep === undefined ? select.value : keep;
    const fixed = Array.from(select.options).filter((o) => o.value === "");
    select.replaceChildren(...fixed);
    for (const p of list) {
      select.append(el("option", { value: p.id }, p.is_active ? p.name : `${p.name} (inactive)`));
    }
    if (Array.from(select.options).some((o) => o.value === chosen)) select.value = chosen;
  }

  function formValues(form) {
    const values = {};
    for (const [key, value] of new FormData(form).entries()) values[key] = typeof value === "string" ? value.trim() : value;
    return values;
  }

  // USD as the Usage page writes it: cents from $1 on, four significant digits below.
  function money(value) {
    if (value === null || value === undefined) return "—";
    if (value === 0) return "$0";
    if (Math.abs(value) >= 1) return `$${value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
    const digits = Math.min(Math.max(2, 3 - Math.floor(Math.log10(Math.abs(value)))), 12);
    const [whole, fraction] = value.toFixed(digits).split(".");
    return `$${whole}.${fraction.replace(/0+$/, "").padEnd(2, "0")}`;
  }

  function meter(value, max, label) {
    // optimum at 0: the bar turns amber past 75 % of the budget and red past 90 %
    const bar = el("meter", { min: 0, max, value: Math.min(value, max), low: max * 0.75, high: max * 0.9, optimum: 0, title: label });
    return el("div", { className: "spend-line" }, bar, el("span", {}, label));
  }

  // A token's or project's spend: a bar against each budget it has, plain figures where it has none.
  function spend(holder) {
    const tokens = holder.prompt_tokens + holder.completion_tokens;
    const cost = holder.max_cost_usd === null
      ? el("div", { className: "spend-line" }, money(holder.cost_usd))
      : meter(holder.cost_usd, holder.max_cost_usd, `${money(holder.cost_usd)} / ${money(holder.max_cost_usd)}`);
    const count = holder.max_tokens === null
      ? el("div", { className: "spend-line muted" }, `${tokens.toLocaleString("en-US")} tokens`)
      : meter(tokens, holder.max_tokens, `${tokens.toLocaleString("en-US")} / ${holder.max_tokens.toLocaleString("en-US")} tokens`);
    return el("div", { className: "spend" }, cost, count);
  }

  // The PATCH body that changes ``current`` into what the form says: only fields that differ; an
  // empty field is null (no limit). kinds: "number", "text", "list" (comma- or space-separated).
  function changes(form, current, kinds) {
    const body = {};
    for (const [name, kind] of Object.entries(kinds)) {
      const raw = form.elements[name].value.trim();
      let value = raw === "" ? null : raw;
      if (value !== null && kind === "number") value = Number.isNaN(Number(raw)) ? raw : Number(raw);
      if (value !== null && kind === "list") value = raw.split(/[\s,]+/).filter(Boolean);
      const before = current[name] === undefined ? null : current[name];
      if (JSON.stringify(value) !== JSON.stringify(before)) body[name] = value;
    }
    return body;
  }

  // Fills the form's fields from ``current`` (a list shows comma-separated, null as empty).
  function fillForm(form, current, kinds) {
    for (const [name, kind] of Object.entries(kinds)) {
      const value = current[name];
      form.elements[name].value = value === null || value === undefined ? "" : kind === "list" ? value.join(", ") : String(value);
    }
  }

  return {
    api, el, button, badge, flash, showError, time, dash, fill, projects, projectOptions, formValues, ApiError,
    money, spend, changes, fillForm,
  };
})();
