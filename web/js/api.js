// Talking to the server: JSON GETs with the bearer token (asked for once on a 401, kept for the
// tab or, if asked, the browser), error messages from `{"error": ...}`, downloads. Relative URLs
// (`api/v1/...`) so the page also works behind a path-prefixing proxy.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

const TOKEN_KEY = "kiln.authToken";
let memoryToken = ""; // the token given on this page, should storage be disabled
let onUnauthorized = () => {};
export let authRequired = false;

export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function authToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || memoryToken;
  } catch {
    return memoryToken; // storage disabled
  }
}

export function authHeaders() {
  const t = authToken();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

export function saveToken(token, remember) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
    if (remember) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lasts until the page is left */ }
  memoryToken = token;
}

async function messageOf(res) {
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { text, body, msg: body && typeof body.error === "string" ? body.error : (text.trim() || res.statusText) };
}

/** A GET whose answer is OK, or the server's error message as an ApiError. */
async function okResponse(url, signal, accept) {
  let res;
  try {
    res = await fetch(url, { signal, headers: { Accept: accept, ...authHeaders() } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the Kiln server (${e.message})`, 0);
  }
  if (!res.ok) {
    const { msg } = await messageOf(res);
    if (res.status === 401) {
      authRequired = true;
      onUnauthorized(msg);
    }
    throw new ApiError(`${msg} (HTTP ${res.status})`, res.status);
  }
  return res;
}

/** A binary answer (the flame graph's columnar format) as an ArrayBuffer. */
export async function getBinary(url, signal) {
  const res = await okResponse(url, signal, "application/octet-stream");
  return res.arrayBuffer();
}

export async function getJson(url, signal) {
  const res = await okResponse(url, signal, "application/json");
  const { body } = await messageOf(res);
  if (body === null) throw new ApiError(`unexpected non-JSON answer from ${url.split("?")[0]}`, res.status);
  return body;
}

/** `path?params` with the empty parameters left out. */
export function apiUrl(path, params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) p.set(k, String(v));
  return `${path}?${p}`;
}

/** Saves a Blob or string under `filename`. */
export function saveFile(data, filename, type = "application/octet-stream") {
  const blob = data instanceof Blob ? data : new Blob([data], { type });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Downloads a server file with the token (a plain link cannot send the header). */
export async function download(url, filename) {
  const res = await fetch(url, { headers: authHeaders() });
  if (!res.ok) {
    const { msg } = await messageOf(res);
    if (res.status === 401) onUnauthorized(msg);
    throw new ApiError(`download failed: ${msg} (HTTP ${res.status})`, res.status);
  }
  saveFile(await res.blob(), filename);
}
