// The jobs list: status, model, created, duration and trained tokens, refreshed while open.

import { api } from "./api.js";
import { h, when, duration, number, badge } from "./dom.js";
import { pollMs, repeat } from "./poll.js";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);

export function renderJobs(root, onError) {
  const body = h("tbody");
  root.append(
    h("h1", {}, "Fine-tuning jobs"),
    h("div", { class: "panel" },
      h("table", { id: "jobs" },
        h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Created", "Duration", "Trained tokens",
          "Fine-tuned model"].map((t) => h("th", {}, t)))),
        body)),
    h("p", { class: "muted" }, "Create jobs with ", h("code", {}, "openft jobs create FILE.jsonl"),
      " or any OpenAI client."),
  );
  return repeat(async () => {
    const page = await api.listJobs();
    body.replaceChildren(...page.data.map(row));
    if (!page.data.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet.")));
  }, pollMs(5000), onError);
}

function row(job) {
  const end = ENDED.has(job.status) ? job.finished_at || job.created_at : null;
  return h("tr", { class: "link", dataset: { job: job.id }, onclick: () => { location.hash = `#/jobs/${job.id}`; } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
    h("td", {}, badge(job.status)),
    h("td", {}, job.model),
    h("td", {}, when(job.created_at)),
    h("td", {}, job.status === "failed" && !job.finished_at ? "–" : duration(job.created_at, end)),
    h("td", {}, number(job.trained_tokens)),
    h("td", { class: "mono" }, job.fine_tuned_model || "–"),
  );
}
