// One job: live loss and accuracy charts, controls, details, hyperparameters, checkpoints and events.

import { api, EventCursor } from "./api.js";
import { h, when, duration, number, badge, copyButton } from "./dom.js";
import { LineChart } from "./chart.js";
import { pollMs, repeat } from "./poll.js";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const LOSS = [
  { key: "train_loss", label: "training loss", color: "#2f5bd3" },
  { key: "valid_loss", label: "validation loss", color: "#d9822b" },
  { key: "full_valid_loss", label: "full validation loss", color: "#1f8a4c" },
];
const ACCURACY = [
  { key: "train_mean_token_accuracy", label: "training token accuracy", color: "#2f5bd3" },
  { key: "valid_mean_token_accuracy", label: "validation token accuracy", color: "#d9822b" },
  { key: "full_valid_mean_token_accuracy", label: "full validation token accuracy", color: "#1f8a4c" },
];

export function renderJob(root, jobId, onError) {
  const title = h("h1", {}, h("span", { class: "mono" }, jobId));
  const status = h("span", { id: "job-status" });
  const buttons = {
    pause: h("button", { id: "pause" }, "Pause"),
    resume: h("button", { id: "resume" }, "Resume"),
    cancel: h("button", { id: "cancel", class: "danger" }, "Cancel"),
  };
  title.append(status, h("span", { class: "actions" }, buttons.pause, buttons.resume, buttons.cancel));
  const errorBox = h("div", { class: "error-box", id: "job-error", hidden: true });
  const stepText = h("div", { class: "muted", id: "job-step" }, "Waiting for the first step…");
  const bar = h("div", { style: "width: 0%" });
  const lossBox = h("div", { id: "loss-chart" });
  const accuracyBox = h("div", { id: "accuracy-chart" });
  const details = h("dl", { class: "kv" });
  const hyper = h("dl", { class: "kv", id: "hyperparameters" });
  const checkpoints = h("tbody");
  const events = h("tbody");
  root.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    title,
    errorBox,
    h("div", { class: "panel" }, stepText, h("div", { class: "progress" }, bar)),
    h("div", { class: "grid" },
      h("div", { class: "panel" }, h("h2", {}, "Loss"), lossBox),
      h("div", { class: "panel" }, h("h2", {}, "Token accuracy"), accuracyBox)),
    h("div", { class: "grid", style: "margin-top: 16px" },
      h("div", { class: "panel" }, h("h2", {}, "Details"), details),
      h("div", { class: "panel" }, h("h2", {}, "Hyperparameters"), hyper)),
    h("div", { class: "panel", style: "margin-top: 16px" }, h("h2", {}, "Checkpoints"),
      h("table", { id: "checkpoints" }, h("thead", {}, h("tr", {},
        ["Step", "Training loss", "Validation loss", "Token accuracy", "Model name"].map((t) => h("th", {}, t)))),
      checkpoints)),
    h("div", { class: "panel" }, h("h2", {}, "Events"),
      h("div", { class: "events" }, h("table", { id: "events" }, events))),
  );

  const loss = new LineChart(lossBox, LOSS);
  const accuracy = new LineChart(accuracyBox, ACCURACY, { yMin: 0, yMax: 1 });
  const cursor = new EventCursor(jobId);
  let job = null;
  let latest = {};

  const refresh = async () => {
    job = await api.retrieveJob(jobId);
    const fresh = await cursor.poll();
    for (const event of fresh) {
      events.prepend(h("tr", {},
        h("td", {}, when(event.created_at)),
        h("td", { class: `level-${event.level}` }, event.message)));
      if (event.type === "metrics" && event.data) {
        latest = { ...latest, ...event.data };
        for (const s of LOSS) loss.add(s.key, event.data.step, event.data[s.key]);
        for (const s of ACCURACY) accuracy.add(s.key, event.data.step, event.data[s.key]);
      }
    }
    if (fresh.length) {
      loss.draw();
      accuracy.draw();
    }
    showJob();
    const page = await api.listCheckpoints(jobId);
    checkpoints.replaceChildren(...page.data.map(checkpointRow));
    if (!page.data.length) checkpoints.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "None yet.")));
    return !ENDED.has(job.status);
  };

  const showJob = () => {
    status.replaceChildren(badge(job.status));
    buttons.cancel.disabled = ENDED.has(job.status);
    buttons.pause.disabled = !["queued", "running"].includes(job.status);
    buttons.resume.disabled = job.status !== "paused";
    const err = job.error && job.error.message ? job.error : null;
    errorBox.hidden = !err;
    if (err) {
      errorBox.replaceChildren(h("strong", {}, "Failed: "), err.message,
        err.code ? h("span", { class: "muted" }, ` (code ${err.code}${err.param ? `, param ${err.param}` : ""})`) : "");
    }
    if (latest.total_steps) {
      const pct = Math.min(100, (100 * latest.step) / latest.total_steps);
      bar.style.width = `${pct}%`;
      const parts = [`Step ${latest.step} / ${latest.total_steps}`];
      if (latest.train_loss !== undefined) parts.push(`loss ${number(latest.train_loss)}`);
      if (latest.valid_loss !== undefined) parts.push(`validation loss ${number(latest.valid_loss)}`);
      if (job.estimated_finish && !ENDED.has(job.status)) parts.push(`ETA ${when(job.estimated_finish)}`);
      stepText.textContent = parts.join(" · ");
    } else if (ENDED.has(job.status)) {
      stepText.textContent = `Job ${job.status.replace("_", " ")}.`;
    }
    if (job.status === "succeeded") bar.style.width = "100%";
    const method = job.method?.type || "supervised";
    const model = job.fine_tuned_model;
    details.replaceChildren(...pairs([
      ["Base model", job.model],
      ["Method", method],
      ["Created", when(job.created_at)],
      ["Finished", when(job.finished_at)],
      ["Duration", duration(job.created_at, ENDED.has(job.status) ? job.finished_at || job.created_at : null)],
      ["Training file", job.training_file],
      ["Validation file", job.validation_file || "–"],
      ["Trained tokens", number(job.trained_tokens)],
      ["Seed", job.seed ?? "–"],
      ["Fine-tuned model", model ? [h("code", { id: "fine-tuned-model" }, model), " ", copyButton(model),
        " ", h("a", { href: `#/chat?model=${encodeURIComponent(model)}` }, "chat")] : "–"],
      ["Result files", (job.result_files || []).join(", ") || "–"],
    ]));
    const hp = job.method?.[method]?.hyperparameters || job.hyperparameters || {};
    hyper.replaceChildren(...pairs(Object.entries(hp).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : v])));
  };

  const act = (name, call) => buttons[name].addEventListener("click", async () => {
    buttons[name].disabled = true;
    try {
      job = await call(jobId);
      showJob();
      await refresh();
    } catch (error) {
      onError(error);
      showJob();
    }
  });
  act("cancel", api.cancelJob);
  act("pause", api.pauseJob);
  act("resume", api.resumeJob);

  let stop = repeat(refresh, pollMs(2000), onError);
  // A resumed job runs again, so polling restarts when the user resumes.
  buttons.resume.addEventListener("click", () => { stop(); stop = repeat(refresh, pollMs(2000), onError); });
  return () => stop();
}

function pairs(entries) {
  return entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "–" : v)]);
}

function checkpointRow(c) {
  const m = c.metrics || {};
  return h("tr", {},
    h("td", {}, c.step_number),
    h("td", {}, number(m.train_loss)),
    h("td", {}, number(m.valid_loss ?? m.full_valid_loss)),
    h("td", {}, number(m.train_mean_token_accuracy)),
    h("td", {}, h("code", {}, c.fine_tuned_model_checkpoint), " ", copyButton(c.fine_tuned_model_checkpoint)));
}
