// A chat box to try a model through the chat completions API, streaming the answer.

import { api } from "./api.js";
import { h } from "./dom.js";

export function renderChat(root, initialModel, onError) {
  const select = h("select", { id: "chat-model" });
  const log = h("div", { class: "chat-log", id: "chat-log" });
  const text = h("textarea", { id: "chat-input", placeholder: "Say something… (Enter to send, Shift+Enter for a new line)" });
  const send = h("button", { class: "primary", id: "chat-send" }, "Send");
  const clear = h("button", {}, "New chat");
  const history = [];

  const submit = async () => {
    const content = text.value.trim();
    if (!content || !select.value) return;
    text.value = "";
    history.push({ role: "user", content });
    log.append(h("div", { class: "msg user" }, content));
    const answer = h("div", { class: "msg assistant" }, "…");
    log.append(answer);
    send.disabled = true;
    let reply = "";
    try {
      for await (const piece of api.streamChat(select.value, history)) {
        reply += piece;
        answer.textContent = reply;
        log.scrollTop = log.scrollHeight;
      }
      history.push({ role: "assistant", content: reply });
      onError(null);
    } catch (error) {
      answer.textContent = reply || "(no answer)";
      history.pop();
      onError(error);
    } finally {
      send.disabled = false;
    }
  };
  send.addEventListener("click", submit);
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); }
  });
  clear.addEventListener("click", () => { history.length = 0; log.replaceChildren(); });

  root.append(
    h("h1", {}, "Chat", h("span", { class: "actions" }, select, clear)),
    h("div", { class: "panel" }, log, h("div", { class: "chat-form" }, text, send)),
  );
  api.listModels().then((page) => {
    const ids = page.data.map((m) => m.id);
    if (initialModel && !ids.includes(initialModel)) ids.unshift(initialModel);
    // Fine-tuned models first: they are what people come here to try.
    ids.sort((a, b) => Number(b.startsWith("ft:")) - Number(a.startsWith("ft:")));
    select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    if (initialModel) select.value = initialModel;
  }).catch(onError);
}
