// The files list, with upload and delete.

import { api } from "./api.js";
import { h, when, number } from "./dom.js";

export function renderFiles(root, onError) {
  const body = h("tbody");
  const input = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,.txt" });
  const purpose = h("select", { id: "upload-purpose" },
    ["fine-tune", "user_data", "batch"].map((p) => h("option", { value: p }, p)));
  const button = h("button", { class: "primary", id: "upload" }, "Upload");
  const load = async () => {
    try {
      const page = await api.listFiles();
      body.replaceChildren(...page.data.map((f) => h("tr", { dataset: { file: f.id } },
        h("td", { class: "mono" }, f.id),
        h("td", {}, f.filename),
        h("td", {}, f.purpose),
        h("td", {}, number(f.bytes)),
        h("td", {}, when(f.created_at)),
        h("td", {}, h("button", { class: "small danger", onclick: () => remove(f.id) }, "Delete")))));
      if (!page.data.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No files yet.")));
      onError(null);
    } catch (error) {
      onError(error);
    }
  };
  const remove = async (id) => {
    if (!confirm(`Delete ${id}?`)) return;
    try { await api.deleteFile(id); } catch (error) { onError(error); }
    await load();
  };
  button.addEventListener("click", async () => {
    if (!input.files.length) return;
    button.disabled = true;
    try {
      await api.uploadFile(input.files[0], purpose.value);
      input.value = "";
      await load();
    } catch (error) {
      onError(error);
    } finally {
      button.disabled = false;
    }
  });
  root.append(
    h("h1", {}, "Files"),
    h("div", { class: "panel upload" }, input, purpose, button),
    h("div", { class: "panel" }, h("table", { id: "files" },
      h("thead", {}, h("tr", {}, ["File", "Name", "Purpose", "Bytes", "Created", ""].map((t) => h("th", {}, t)))),
      body)),
  );
  load();
}
