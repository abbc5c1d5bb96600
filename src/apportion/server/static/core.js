// Shared helpers of the dashboard: the signed-in key, REST calls, the event bus, small DOM tools.
// No framework, no bundler: every page module imports what it needs from here.

const KEY_STORAGE = "apportion.apiKey";

export const session = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  who: null, // {key_id, name, scope, account, user, auth_enabled} from GET /auth/whoami
};

export function setKey(key) {
  session.key = key || "";
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

// What each scope allows, as the server's Scope (server/auth.py) says.
const ALLOWS = {
  read: ["read"],
  submit: ["read", "submit"],
  policies: ["read", "policies"],
  operator: ["read", "operator"],
  admin: ["read", "submit", "policies", "operator", "admin"],
};

/** True when the signed-in key's scope allows `needed`. */
export function can(needed) {
  return !!session.who && (ALLOWS[session.who.scope] || []).includes(needed);
}

/** True when the signed-in key may change a job or hold ({account, user}): its own user's in its
 * own account, or anyone's for an admin key (the server's rule, apportion/ownership.py). */
export function mayChange(record) {
  const who = session.who;
  if (!who) return false;
  if (who.scope === "admin") return true;
  return can("submit") && record.account === who.account && record.user === who.user;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Call the REST API with the key in the Authorization header (never in a URL).
 *  Returns the parsed JSON body (or the Response with `raw: true`); throws ApiError on 4xx/5xx
 *  unless `allowError` is set, in which case the error envelope is returned. */
export async function api(path, { method = "GET", body, form, headers = {}, raw = false, allowError = false } = {}) {
  const init = { method, headers: { ...headers } };
  if (session.key) init.headers.Authorization = `Bearer ${session.key}`;
  if (form) init.body = form;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (raw) return response;
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { message: text };
  }
  if (!response.ok && !allowError) throw new ApiError(response.status, parsed);
  return parsed;
}

// ------------------------------------------------------------------ event bus
const listeners = new Map();

/** Listen to events by type ("*" for all); returns nothing, listeners live as long as the page. */
export function on(type, fn) {
  if (!listeners.has(type)) listeners.set(type, []);
  listeners.get(type).push(fn);
}

export function emit(event) {
  for (const key of [event.type, "*"]) {
    for (const fn of listeners.get(key) || []) {
      try {
        fn(event);
      } catch (err) {
        console.error("event listener failed", event.type, err);
      }
    }
  }
}

// ------------------------------------------------------------------ DOM helpers
export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
/** Escape any value for use inside HTML text or a quoted attribute. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Run `fn` at most once per `ms`, after the last call (trailing debounce). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** Parse a JSON text field; throws an Error naming the field when it is not valid JSON. */
export function parseJsonField(text, name) {
  const trimmed = (text || "").trim();
  if (!trimmed) return {};
  try {
    return JSON.parse(trimmed);
  } catch (err) {
    throw new Error(`${name} is not valid JSON: ${err.message}`);
  }
}

/** Show a message in a page's status line; kind is "ok", "error" or "" (neutral). */
export function say(target, text, kind = "") {
  const node = typeof target === "string" ? $(target) : target;
  if (!node) return;
  node.textContent = text;
  node.className = `message ${kind}`.trim();
}

export function errorText(err) {
  if (err instanceof ApiError) {
    const code = err.body && err.body.error ? err.body.error.code : err.status;
    return `${code}: ${err.message}`;
  }
  return String(err && err.message ? err.message : err);
}
