// The dashboard's entry point: the API-key field, the hash router and the error notice.

import { apiKey, setApiKey, ApiError } from "./api.js";
import { renderJobs } from "./jobs.js";
import { renderJob } from "./job.js";
import { renderFiles } from "./files.js";
import { renderChat } from "./chat.js";

const view = document.getElementById("view");
const notice = document.getElementById("notice");
let stopCurrent = () => {};

export function showError(error) {
  if (!error) {
    notice.hidden = true;
    return;
  }
  let text = error.message || String(error);
  if (error instanceof ApiError && error.status === 401) {
    text += " Enter an API key (top right); create one with `openft keys create`.";
  }
  notice.textContent = text;
  notice.hidden = false;
}

// Each view renders into a fresh container and returns a function that stops its timers.
const routes = [
  [/^#\/jobs\/([^/?]+)$/, (m, root) => renderJob(root, decodeURIComponent(m[1]), showError)],
  [/^#\/files$/, (m, root) => renderFiles(root, showError)],
  [/^#\/chat(?:\?model=(.*))?$/, (m, root) => renderChat(root, m[1] ? decodeURIComponent(m[1]) : "", showError)],
  [/^(#\/?(jobs)?)?$/, (m, root) => renderJobs(root, showError)],
];

function route() {
  stopCurrent();
  showError(null);
  const hash = location.hash;
  const root = document.createElement("div");
  view.replaceChildren(root);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`) || (!hash && a.dataset.nav === "jobs"));
  }
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (match) {
      stopCurrent = render(match, root) || (() => {});
      return;
    }
  }
  root.textContent = "Page not found.";
  stopCurrent = () => {};
}

const keyInput = document.getElementById("api-key");
keyInput.value = apiKey();
keyInput.addEventListener("change", () => {
  setApiKey(keyInput.value.trim());
  route();
});
window.addEventListener("hashchange", route);
route();
