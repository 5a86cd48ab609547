// Usage page: the page is drawn on the server; this only applies a changed select at once, and
// forgets the chosen token when the project changes (it belongs to the other project).
"use strict";

(() => {
  const form = document.getElementById("usage-filter");
  if (!form) return;
  form.addEventListener("change", (event) => {
    if (event.target.tagName !== "SELECT") return;
    if (event.target.name === "project_id") form.elements.token_id.value = "";
    form.requestSubmit();
  });
})();
