// Tokens page: list with filters and spend against budgets, generate (the raw token shown once), edit
// limits (PATCH /manage/tokens/{id}: validated and audited by the API), revoke, revoke a project's all.
"use strict";

(() => {
  const { api, el, button, badge, flash, showError, time, dash, fill, formValues, spend, changes, fillForm } = Admin;
  const createForm = document.getElementById("token-form");
  const filter = document.getElementById("token-filter");
  const table = document.getElementById("tokens");
  const revokeAll = document.getElementById("revoke-all");
  const created = document.getElementById("created-token");
  const createdValue = document.getElementById("created-token-value");
  const limitsForm = document.getElementById("limits-form");
  // what the limits form edits, and how each field reads
  const LIMITS = {
    name: "text",
    max_cost_usd: "number",
    max_tokens: "number",
    tokens_per_minute: "number",
    max_requests: "number",
    rate_limit_per_minute: "number",
    allowed_models: "list",
  };
  let names = new Map();
  let editing = null; // the token whose limits the form shows

  // the API's one computed status, so the UI, the CLI and active_only agree
  const STATUS_KINDS = { active: "ok", expired: "warn", exhausted: "warn", revoked: "bad" };

  function status(token) {
    return badge(token.status, STATUS_KINDS[token.status] || "");
  }

  async function revoke(token) {
    if (!window.confirm(`Revoke ${token.token}? Requests with it are refused at once.`)) return;
    try {
      await api("DELETE", `/manage/tokens/${token.id}`);
      flash(`Token ${token.token} revoked.`, "ok");
      await loadTokens();
    } catch (error) {
      showError(error);
    }
  }

  function openLimits(token) {
    editing = token;
    fillForm(limitsForm, token, LIMITS);
    document.getElementById("limits-form-title").textContent = `Limits of ${token.name || token.token}`;
    limitsForm.hidden = false;
    limitsForm.scrollIntoView({ block: "nearest" });
    limitsForm.elements.name.focus();
  }

  function closeLimits() {
    limitsForm.hidden = true;
    limitsForm.reset();
    editing = null;
  }

  async function saveLimits(event) {
    event.preventDefault();
    if (!editing) return;
    const body = changes(limitsForm, editing, LIMITS);
    if (Object.keys(body).length === 0) {
      flash("Nothing changed.", "ok");
      closeLimits();
      return;
    }
    try {
      const token = await api("PATCH", `/manage/tokens/${editing.id}`, body);
      flash(`Limits of ${token.name || token.token} saved.`, "ok");
      closeLimits();
      await loadTokens();
    } catch (error) {
      showError(error);
    }
  }

  function label(token) {
    const hint = el("code", {}, token.token);
    return token.name ? el("td", {}, el("strong", {}, token.name), el("div", {}, hint)) : el("td", {}, hint);
  }

  function row(token) {
    const requests = token.max_requests ? `${token.request_count} / ${token.max_requests}` : String(token.request_count);
    const rate = token.rate_limit_per_minute ? `${token.rate_limit_per_minute}/min` : "—";
    return el(
      "tr",
      { dataset: { id: token.id } },
      label(token),
      el("td", {}, dash(names.get(token.project_id))),
      el("td", {}, status(token)),
      el("td", { className: "spend-cell" }, spend(token)),
      el("td", { className: "num", title: `${token.cache_hit_count} cache hit(s)` }, requests),
      el("td", { className: "num" }, rate),
      el("td", {}, time(token.expires_at)),
      el("td", {}, time(token.last_used_at)),
      el("td", {}, time(token.created_at)),
      el(
        "td",
        { className: "actions-cell" },
        button("Limits", () => openLimits(token)),
        token.is_active ? button("Revoke", () => revoke(token), "small danger") : "",
      ),
    );
  }

  async function loadTokens() {
    const params = new URLSearchParams();
    const project = filter.elements.project_id.value;
    if (project) params.set("project_id", project);
    if (filter.elements.active_only.checked) params.set("active_only", "true");
    revokeAll.hidden = !project;
    const query = params.toString();
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
    try {
      const tokens = await api("GET", `/manage/tokens${query ? `?${query}` : ""}`);
      tokens.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      fill(table, tokens.map(row));
    } catch (error) {
      showError(error);
    }
  }

  async function loadProjects() {
    const list = await Admin.projects();
    names = new Map(list.map((p) => [p.id, p.name]));
    const wanted = new URLSearchParams(location.search);
    Admin.projectOptions(filter.elements.project_id, list, wanted.get("project_id") || "");
    filter.elements.active_only.checked = wanted.get("active_only") === "true";
    Admin.projectOptions(createForm.elements.project_id, list.filter((p) => p.is_active));
    if (filter.elements.project_id.value) createForm.elements.project_id.value = filter.elements.project_id.value;
  }

  function showCreated(token) {
    createdValue.textContent = token.token;
    const expiry = token.expires_at ? `expires ${new Date(token.expires_at).toLocaleString()}` : "never expires";
    document.getElementById("created-token-meta").textContent =
      `For project ${dash(names.get(token.project_id))}, ${expiry}. Listings show it only as ${token.token_hint}.`;
    created.hidden = false;
    created.scrollIntoView({ block: "nearest" });
  }

  function hideCreated() {
    createdValue.textContent = "";
    created.hidden = true;
  }

  async function copyToken() {
    const copy = document.getElementById("copy-token");
    try {
      await navigator.clipboard.writeText(createdValue.textContent);
      copy.textContent = "Copied";
    } catch (_) {
      // no clipboard access (plain http): select the text for Ctrl+C instead
      window.getSelection().selectAllChildren(createdValue);
      copy.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { copy.textContent = "Copy"; }, 2500);
  }

  async function generate(event) {
    event.preventDefault();
    const values = formValues(createForm);
    const body = { project_id: values.project_id };
    for (const key of ["duration_minutes", "max_requests", "rate_limit_per_minute", "max_cost_usd"]) {
      if (values[key]) body[key] = Number(values[key]);
    }
    if (values.name) body.name = values.name;
    try {
      const token = await api("POST", "/manage/tokens", body);
      showCreated(token);
      createForm.elements.duration_minutes.value = "";
      createForm.elements.max_requests.value = "";
      createForm.elements.rate_limit_per_minute.value = "";
      createForm.elements.name.value = "";
      createForm.elements.max_cost_usd.value = "";
      await loadTokens();
    } catch (error) {
      showError(error);
    }
  }

  async function revokeProject() {
    const id = filter.elements.project_id.value;
    if (!id || !window.confirm(`Revoke every token of ${names.get(id)}?`)) return;
    try {
      const result = await api("POST", `/manage/projects/${id}/tokens/revoke`);
      flash(`${result.revoked_count} token(s) revoked, ${result.already_revoked_count} already were (${result.total_tokens} in all).`, "ok");
      await loadTokens();
    } catch (error) {
      showError(error);
    }
  }

  createForm.addEventListener("submit", generate);
  limitsForm.addEventListener("submit", saveLimits);
  document.getElementById("cancel-limits").addEventListener("click", closeLimits);
  filter.addEventListener("change", loadTokens);
  filter.addEventListener("submit", (event) => { event.preventDefault(); loadTokens(); });
  revokeAll.addEventListener("click", revokeProject);
  document.getElementById("copy-token").addEventListener("click", copyToken);
  document.getElementById("dismiss-token").addEventListener("click", hideCreated);
  loadProjects().then(loadTokens, showError);
})();
