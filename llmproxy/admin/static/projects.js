// Projects page: list with spend against budgets, create, edit (name, upstream key, upstream URL,
// limits), activate and deactivate.
"use strict";

(() => {
  const { api, el, button, badge, flash, showError, time, dash, fill, formValues, spend, changes, fillForm } = Admin;
  const LIMITS = { max_cost_usd: "number", max_tokens: "number", tokens_per_minute: "number" };
  const form = document.getElementById("project-form");
  const table = document.getElementById("projects");
  let editing = null; // the project being edited, null when creating

  function openForm(project) {
    editing = project;
    form.reset();
    document.getElementById("project-form-title").textContent = project ? `Edit ${project.name}` : "New project";
    form.elements.name.value = project ? project.name : "";
    form.elements.upstream_base_url.value = project && project.upstream_base_url ? project.upstream_base_url : "";
    fillForm(form, project || {}, LIMITS);
    form.elements.api_key.required = !project;
    form.elements.api_key.placeholder = project ? `unchanged (${project.api_key})` : "sk-…";
    document.getElementById("api-key-help").textContent = project
      ? "Leave empty to keep the current key."
      : "The key the proxy sends upstream for this project's tokens.";
    form.hidden = false;
    form.elements.name.focus();
  }

  function closeForm() {
    form.hidden = true;
    form.reset();
    editing = null;
  }

  async function save(event) {
    event.preventDefault();
    const values = formValues(form);
    const body = { name: values.name };
    if (values.api_key) body.api_key = values.api_key;
    const url = values.upstream_base_url || null;
    try {
      if (editing) {
        if (url !== editing.upstream_base_url) body.upstream_base_url = url;
        Object.assign(body, changes(form, editing, LIMITS));
        await api("PATCH", `/manage/projects/${editing.id}`, body);
        flash(`Project ${body.name} saved.`, "ok");
      } else {
        if (url) body.upstream_base_url = url;
        Object.assign(body, changes(form, {}, LIMITS));
        await api("POST", "/manage/projects", body);
        flash(`Project ${body.name} created.`, "ok");
      }
      closeForm();
      await load();
    } catch (error) {
      showError(error);
    }
  }

  async function setActive(project, active) {
    if (!active && !window.confirm(`Deactivate ${project.name}? Its tokens stop working until it is activated again.`)) return;
    try {
      await api("PATCH", `/manage/projects/${project.id}`, { is_active: active });
      flash(`Project ${project.name} ${active ? "activated" : "deactivated"}.`, "ok");
      await load();
    } catch (error) {
      showError(error);
    }
  }

  async function revokeTokens(project) {
    if (!window.confirm(`Revoke every token of ${project.name}?`)) return;
    try {
      const result = await api("POST", `/manage/projects/${project.id}/tokens/revoke`);
      flash(`${result.revoked_count} token(s) of ${project.name} revoked (${result.already_revoked_count} already were).`, "ok");
    } catch (error) {
      showError(error);
    }
  }

  function row(project) {
    const status = project.is_active ? badge("active", "ok") : badge("inactive", "bad");
    const tokens = el("a", { className: "small-link", href: `/admin/tokens?project_id=${encodeURIComponent(project.id)}` }, "Tokens");
    const actions = el(
      "td",
      { className: "actions-cell" },
      tokens,
      button("Edit", () => openForm(project)),
      project.is_active
        ? button("Deactivate", () => setActive(project, false), "small danger")
        : button("Activate", () => setActive(project, true)),
      button("Revoke tokens", () => revokeTokens(project), "small danger"),
    );
    return el(
      "tr",
      { dataset: { id: project.id } },
      el("td", {}, el("strong", {}, project.name), el("div", { className: "muted" }, el("code", {}, project.id))),
      el("td", {}, project.upstream_base_url ? el("code", {}, project.upstream_base_url) : el("span", { className: "muted" }, "default")),
      el("td", {}, el("code", {}, dash(project.api_key))),
      el("td", {}, status),
      el("td", { className: "spend-cell" }, spend(project)),
      el("td", {}, time(project.created_at)),
      actions,
    );
  }

  async function load() {
    try {
      const list = await Admin.projects();
      fill(table, list.map(row));
    } catch (error) {
      showError(error);
    }
  }

  document.getElementById("new-project").addEventListener("click", () => openForm(null));
  document.getElementById("cancel-project").addEventListener("click", closeForm);
  form.addEventListener("submit", save);
  load();
})();
