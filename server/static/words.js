// Visual-word gallery: (re)generate it as a `words` child run, then reload when it has finished.
"use strict";
(function () {
  const root = document.getElementById("words");
  const runId = Number(root.dataset.runId);
  const button = document.getElementById("generate-words");
  const status = document.getElementById("words-status");
  const error = document.getElementById("action-error");

  async function watch(childId) {
    const result = await Lab.api("GET", `/runs/${childId}`);
    if (!result.ok) return;
    const child = result.data;
    status.innerHTML = `Gallery run <a href="/runs/${child.id}">#${child.id}</a> is ${Lab.esc(child.state)}${child.error ? ": " + Lab.esc(child.error) : ""}.`;
    if (child.state === "succeeded") location.reload();
    else if (!Lab.terminal(child.state)) setTimeout(() => watch(childId), 2000);
  }

  button.addEventListener("click", async () => {
    error.hidden = true;
    button.disabled = true;
    const result = await Lab.api("POST", `/runs/${runId}/words`, {});
    button.disabled = false;
    if (!result.ok) {
      error.hidden = false;
      error.textContent = result.status === 401 ? "Log in to generate visual words." : Lab.errorText(result);
      return;
    }
    watch(result.data.id);
  });
  Lab.api("GET", `/runs/${runId}/words`).then((r) => {
    if (r.ok && r.data.latest && !Lab.terminal(r.data.latest.state)) watch(r.data.latest.id);
  });
})();
