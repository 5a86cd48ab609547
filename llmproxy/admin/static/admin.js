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

  return { api, el, button, badge, flash, showError, time, dash, fill, projects, projectOptions, formValues, ApiError };
})();
