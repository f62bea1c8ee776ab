// The JSON API (/api/v1) as functions. Errors throw an Error with the server's message.

const BASE = "/api/v1";

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
    init.keepalive = true;
  }
  const res = await fetch(BASE + path, init);
  if (res.status === 204) return null;
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(json.error?.message ?? `${method} ${path}: HTTP ${res.status}`);
    e.status = res.status;
    throw e;
  }
  return json;
}

const q = (params) => new URLSearchParams(params).toString();
const id = encodeURIComponent;

export const api = {
  users: (limit = 50, after = "") => call("GET", `/users?${q(after ? { limit, after } : { limit })}`),
  user: (userId) => call("GET", `/users/${id(userId)}`),
  createUser: (name) => call("POST", "/users", { name }),
  feed: (userId, refresh, limit = 20) =>
    call("GET", `/users/${id(userId)}/feed?${q({ limit, refresh })}`),
  next: (userId, songId, refresh, limit = 15) =>
    call("GET", `/users/${id(userId)}/next/${id(songId)}?${q({ limit, refresh })}`),
  recordPlay: (userId, songId) => call("POST", `/users/${id(userId)}/plays/${id(songId)}`),
  search: (query, skip, limit = 15) => call("GET", `/search?${q({ query, limit, skip })}`),
  song: (songId) => call("GET", `/songs/${id(songId)}`),
  logEvent: (event) => call("POST", "/events", event),
  /** For page close: the browser sends it after the page is gone. */
  beacon: (event) => navigator.sendBeacon(`${BASE}/events`, JSON.stringify(event)),
  status: () => call("GET", "/status"),
};
