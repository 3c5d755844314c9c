// The dashboard's only way to the server: the public /v1 API, with the user's key as Bearer.

const KEY_STORAGE = "openft.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function request(method, path, { json, body, query } = {}) {
  const url = new URL(`/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  const init = { method, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (json) init.body = JSON.stringify(json);
  if (body) init.body = body;
  const response = await fetch(url, init);
  if (!response.ok) {
    let error = {};
    try { error = (await response.json()).error || {}; } catch { /* not JSON: keep the status */ }
    throw new ApiError(response.status, error);
  }
  return response;
}

const get = async (path, query) => (await request("GET", path, { query })).json();
const post = async (path, json) => (await request("POST", path, { json })).json();
const jobPath = (id) => `/fine_tuning/jobs/${encodeURIComponent(id)}`;

export const api = {
  listJobs: (limit = 100) => get("/fine_tuning/jobs", { limit }),
  retrieveJob: (id) => get(jobPath(id)),
  listEvents: (id, after, limit = 100) => get(`${jobPath(id)}/events`, { after, limit }),
  listCheckpoints: (id) => get(`${jobPath(id)}/checkpoints`, { limit: 100 }),
  cancelJob: (id) => post(`${jobPath(id)}/cancel`),
  pauseJob: (id) => post(`${jobPath(id)}/pause`),
  resumeJob: (id) => post(`${jobPath(id)}/resume`),
  listFiles: () => get("/files", { limit: 1000 }),
  deleteFile: async (id) => (await request("DELETE", `/files/${encodeURIComponent(id)}`)).json(),
  uploadFile: async (file, purpose) => {
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    return (await request("POST", "/files", { body: form })).json();
  },
  listModels: () => get("/models"),
  // Yields content pieces of a streamed chat completion (server-sent events).
  async *streamChat(model, messages) {
    const response = await request("POST", "/chat/completions", { json: { model, messages, stream: true } });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const blocks = buffer.split("\n\n");
      buffer = blocks.pop();
      for (const block of blocks) {
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(500, chunk.error);
          const piece = chunk.choices?.[0]?.delta?.content;
          if (piece) yield piece;
        }
      }
    }
  },
};

// Events arrive newest first and "after" pages towards older ones; this returns the events that
// are new since the last call, oldest first, reading pages until it meets one already seen.
export class EventCursor {
  constructor(jobId) {
    this.jobId = jobId;
    this.lastSeen = null;
  }

  async poll() {
    const fresh = [];
    let after;
    for (;;) {
      const page = await api.listEvents(this.jobId, after);
      for (const event of page.data) {
        if (event.id === this.lastSeen) return this.advance(fresh);
        fresh.push(event);
      }
      if (!page.data.length || !page.has_more) return this.advance(fresh);
      after = page.data[page.data.length - 1].id;
    }
  }

  advance(fresh) {
    if (fresh.length) this.lastSeen = fresh[0].id;
    return fresh.reverse();
  }
}
