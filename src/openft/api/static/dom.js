// Building DOM nodes and formatting values for display.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function when(ts) {
  if (!ts) return "–";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit" });
}

export function duration(start, end) {
  if (!start) return "–";
  const seconds = Math.max(0, Math.round((end || Date.now() / 1000) - start));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return hours ? `${hours}h ${minutes}m` : `${minutes}m ${seconds % 60}s`;
}

export function number(value) {
  if (value === undefined || value === null) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(4);
  return typeof value === "number" ? value.toLocaleString() : String(value);
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status.replace("_", " "));
}

export function copyButton(text) {
  const button = h("button", { class: "small", title: "Copy", onclick: async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "copied";
    } catch {
      // Clipboard access can be refused (non-secure origin): select the text for a manual copy.
      const range = document.createRange();
      range.selectNodeContents(button.previousSibling);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
  } }, "copy");
  return button;
}
