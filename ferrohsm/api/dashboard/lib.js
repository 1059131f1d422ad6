// Shared helpers: DOM building (text only, never HTML), the session, the API client, formatting.
//
// Security rules this file enforces for the whole dashboard:
// - Data reaches the page only as text nodes or attribute values (h() below); nothing ever
//   assigns innerHTML, so a key description holding HTML renders as the characters it contains.
// - The token lives in sessionStorage (gone when the tab closes) and travels only in the
//   Authorization header; API responses are fetched with cache "no-store", so key metadata and
//   audit records are never written to the browser's HTTP cache.
// - Roles decide which buttons are shown, for convenience only: the server enforces every action.

// ---- DOM ----------------------------------------------------------------------------------

/** h("a", {href: "#/keys", class: "link", onclick: fn}, "text", childNode, [more]) */
export function h(tag, props = null, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return el;
}

/** Replace ``node``'s children, leaving out null, undefined and false as h() does (the DOM's
 * own replaceChildren would show them as the words "null" or "false"). */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter(
    (child) => child !== null && child !== undefined && child !== false));
}

export function option(value, label, selected) {
  return h("option", { value, selected: value === selected }, label);
}

export function field(label, control, hint = null) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control,
    hint && h("span", { class: "field-hint" }, hint));
}

export function stateBadge(state) {
  return h("span", { class: `badge state-${state}` }, String(state).replaceAll("_", " "));
}

export function timeEl(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: iso }, fmtTime(iso));
}

/** Always UTC, and labelled so: the audit log, the API and the CLI all speak UTC, and a time
 * read off the screen must match them whatever the browser's time zone. */
export function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
}

/** The query of a view's URL fragment (#/keys?tag=prod) as URLSearchParams. */
export function hashQuery() {
  const at = location.hash.indexOf("?");
  const query = at < 0 ? "" : location.hash.slice(at + 1);
  return new URLSearchParams(query.split("#", 1)[0]); // as the router, ignore a pasted "#anchor"
}

/** Keep a view's filters in its URL (bookmarkable, shareable, kept by reload and Back) without
 * re-rendering: replaceState fires no hashchange. Empty values are left out. */
export function keepInUrl(path, values) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) if (value) params.set(name, value);
  const query = params.toString();
  const target = query ? `${path}?${query}` : path;
  if (location.hash !== target) history.replaceState(null, "", target);
}

// ---- key names ----------------------------------------------------------------------------

const names = new Map(); // key id -> name (null: unnamed); dropped at sign-out
const MAX_NAME_PAGES = 10;

/** Names of the keys ``ids`` (approvals and audit records carry ids only). Read from the key
 * listing, 1000 a page, until every id is known (at most MAX_NAME_PAGES pages): one audited
 * listing per page, where describing each key would add an audit record per key. A key this
 * token cannot see, or beyond those pages, keeps its id. */
export async function keyNames(ids) {
  let missing = new Set(ids.filter((id) => id && !names.has(id)));
  let token = null;
  for (let page = 0; missing.size && page < MAX_NAME_PAGES; page += 1) {
    const query = new URLSearchParams({ limit: 1000 });
    if (token) query.set("page_token", token);
    let data;
    try {
      ({ data } = await api(`/v1/keys?${query}`));
    } catch (err) {
      if (err.status === 401) throw err;
      break;
    }
    for (const key of data?.keys ?? []) names.set(key.id, key.name ?? null);
    missing = new Set([...missing].filter((id) => !names.has(id)));
    token = data?.next_page_token;
    if (!token) break;
  }
  return names;
}

// ---- approvals ----------------------------------------------------------------------------

const APPROVAL_PAGE = 1000; // the API's largest page
export const APPROVAL_PAGES = 20; // 20,000 requests of one state: past that, page the API itself

/** Every approval in ``state`` as the API lists them (ascending id: UUIDv7, so oldest first),
 * following next_page_token for at most ``maxPages`` pages. The API has no "newest first" and
 * no key filter, so a view that must show the newest, or one key's, reads them all: one page
 * of 100 silently hid the rest. {items, complete}: complete false when the cap cut it short. */
export async function listApprovals(state, maxPages = APPROVAL_PAGES) {
  const items = [];
  let token = null;
  for (let page = 0; page < maxPages; page += 1) {
    const query = new URLSearchParams({ state, limit: APPROVAL_PAGE });
    if (token) query.set("page_token", token);
    const { data } = await api(`/v1/approvals?${query}`);
    items.push(...(Array.isArray(data) ? data : data?.approvals ?? []));
    token = Array.isArray(data) ? null : data?.next_page_token;
    if (!token) return { items, complete: true };
  }
  return { items, complete: false };
}

/** A link to a key showing its name (its id when unnamed or unknown), the id as a tooltip. */
export function keyLink(id, extra = "") {
  const name = names.get(id);
  return h("a", { href: `#/keys/${encodeURIComponent(id)}`, title: id,
    class: name ? "key-name" : "mono small", dataset: { keyRef: id } },
  name ?? id, extra);
}

export function plural(n, word) {
  return `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;
}

export function loading(label = "Loading…") {
  return h("p", { class: "loading", role: "status" }, label);
}

export function emptyState(title, hint = null, action = null) {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, title),
    hint && h("p", null, hint), action);
}

/** Whether trying the same request again may succeed: the network, the server's own failures,
 * a wait. A 400, 403 or 404 is about the request, the role or the address: it cannot. */
export function transient(err) {
  return err.status === 0 || err.status >= 500 || [408, 429].includes(err.status);
}

export function errorPanel(err, retry = null) {
  return h("div", { class: "panel error", role: "alert" },
    h("p", { class: "error-title" }, err.title ?? "Something went wrong"),
    h("p", null, err.message),
    err.requestId && h("p", { class: "muted small" }, `Request ID: ${err.requestId}`),
    retry && h("button", { type: "button", onclick: retry }, "Try again"));
}

/** A short message in the polite live region at the top of the page. */
export function notify(message, kind = "info") {
  const region = document.getElementById("notice");
  region.replaceChildren(h("div", { class: `notice ${kind}` }, message,
    h("button", { type: "button", class: "link", "aria-label": "Dismiss",
      onclick: () => region.replaceChildren() }, "×")));
}

export function clearNotice() {
  document.getElementById("notice").replaceChildren();
}

/**
 * A modal confirmation; resolves to the typed value ("" without an input) or null if cancelled.
 * input: {label, maxLength, expect, value, multiline} — with `expect`, confirming needs that
 * exact text typed; `value` fills the box first; `multiline` makes it a text area.
 */
export function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false,
                                 input = null }) {
  const dialog = document.getElementById("confirm");
  return new Promise((resolve) => {
    const confirm = h("button", { type: "submit", class: danger ? "danger" : "primary",
      "data-confirm": "" }, confirmLabel);
    const cancel = h("button", { type: "button", onclick: () => dialog.close("cancel") }, "Cancel");
    let box = null;
    const problem = h("p", { class: "form-error", id: "confirm-error", role: "alert",
      hidden: true });
    if (input) {
      // No maxlength: the browser would cut a long paste without a word. Too long is said.
      box = input.multiline
        ? h("textarea", { rows: 4 })
        : h("input", { type: "text", autocomplete: "off", spellcheck: "false" });
      box.value = input.value ?? "";
      if (input.expect !== undefined) {
        confirm.disabled = true;
        box.addEventListener("input", () => { confirm.disabled = box.value !== input.expect; });
      }
    }
    async function submit(e) {
      e.preventDefault();
      const why = box ? await refusal(input, box.value) : null;
      if (why === null) {
        dialog.close("ok");
        return;
      }
      // the text stays in the box, to be corrected; marked only when it is what was refused
      // (not for a concurrent change or an outage)
      problem.textContent = why.message ?? why;
      problem.hidden = false;
      if (why.message === undefined || why.invalid) markInvalid(box, problem);
      else box.focus();
    }
    const form = h("form", { onsubmit: submit },
      h("h2", { id: "confirm-title" }, title),
      [message].flat().map((line) => h("p", null, line)),
      box && field(input.label, box), problem,
      h("div", { class: "dialog-actions" }, cancel, confirm));
    dialog.replaceChildren(form);
    dialog.returnValue = "";
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? (box ? box.value : "") : null);
    }, { once: true });
    dialog.showModal();
    (box ?? cancel).focus(); // never pre-focus the destructive button
  });
}

/** Mark ``control`` as the one to change (screen readers announce it and read ``problem``
 * with it; the style outlines it) and focus it; the mark goes at the next keystroke in it. */
export function markInvalid(control, problem) {
  control.setAttribute("aria-invalid", "true");
  control.setAttribute("aria-describedby", problem.id);
  control.addEventListener("input", () => control.removeAttribute("aria-invalid"), { once: true });
  control.focus();
}

/** Why a dialog's typed value cannot be taken (null: it can): longer than ``maxLength``
 * characters (counted as the server counts them), or what ``input.check`` answers (e.g. the
 * server's refusal of a save: a text, or {message, invalid} saying whether the typed text is
 * what was refused), so the dialog stays open with the text kept. */
async function refusal(input, value) {
  const max = input.maxLength ?? 256;
  const length = [...value.trim()].length;
  if (length > max) return `${input.label} is too long: ${length} characters, at most ${max}.`;
  return input.check ? await input.check(value) : null;
}

// ---- session ------------------------------------------------------------------------------

const TOKEN_KEY = "ferrohsm.token";
export const session = { token: null, claims: null };
export const events = new EventTarget(); // "unauthenticated": the server refused the token

/** The JWT payload, decoded for display and button choice only (the server verifies). */
export function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]+$/.test(p))) {
    throw new Error("not a JWT");
  }
  const b64 = parts[1].replaceAll("-", "+").replaceAll("_", "/");
  const bytes = Uint8Array.from(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "=")),
    (c) => c.charCodeAt(0));
  const claims = JSON.parse(new TextDecoder().decode(bytes));
  if (typeof claims !== "object" || claims === null) throw new Error("not a JWT");
  return claims;
}

export function expired(claims, now = Date.now()) {
  return typeof claims?.exp === "number" && claims.exp * 1000 <= now;
}

export function startSession(token, claims) {
  session.token = token;
  session.claims = claims;
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function restoreSession() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return false;
  try {
    startSession(token, decodeClaims(token));
    return true;
  } catch {
    endSession();
    return false;
  }
}

const resets = []; // views' own state, dropped at sign-out like the caches above

/** Have ``reset`` called whenever the session ends: the next person starts afresh. */
export function onSessionEnd(reset) {
  resets.push(reset);
}

export function endSession() {
  const dialog = document.getElementById("confirm");
  if (dialog?.open) dialog.close("cancel"); // the sign-in form must not sit behind a modal
  session.token = null;
  session.claims = null;
  sessionStorage.removeItem(TOKEN_KEY);
  etags.clear();
  names.clear();
  for (const reset of resets) reset();
}

const ROLES = {
  manage: ["administrator", "operator"],        // create, update, rotate, rollback, revoke
  destroy: ["administrator"],                   // destroy, cancel-destroy
  decide: ["administrator", "operator"],        // approve, deny
  approvals: ["administrator", "operator", "auditor"],
  audit: ["administrator", "auditor"],
};

/** Whether the signed-in role may do `what` (mirrors ferrohsm/authz.py PERMISSIONS). */
export function can(what) {
  return ROLES[what].includes(session.claims?.role);
}

// ---- API ----------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, code, message, requestId = null, title = null) {
    super(message);
    Object.assign(this, { status, code, requestId, title });
  }
}

const etags = new Map(); // path -> {etag, data}: in memory only, dropped at sign-out
const MAX_ETAGS = 64;

/**
 * Call the API as the signed-in user. Returns {status, data, cached}; throws ApiError for
 * anything but 2xx. 401 also ends the session (the "unauthenticated" event). With useEtag the
 * last answer for the same path is revalidated with If-None-Match, and a 304 reuses it.
 */
export async function api(path, { method = "GET", body, headers = {}, useEtag = false } = {}) {
  // Signed out on purpose while a view was still loading: nothing to tell (the sign-out's own
  // message stays on screen); an expired token is said.
  if (!session.token) throw new ApiError(401, "unauthenticated", "Not signed in.");
  if (expired(session.claims)) {
    const err = new ApiError(401, "unauthenticated", "Your session has expired.");
    events.dispatchEvent(new CustomEvent("unauthenticated", { detail: err }));
    throw err;
  }
  // A "." or ".." segment (a key id taken from a crafted link: encodeURIComponent keeps dots)
  // would be resolved by fetch into another endpoint, sent with the token: never sent.
  if (path.split("?")[0].split("/").some((seg) => seg === "." || seg === "..")) {
    throw new ApiError(404, "not_found", "No such key or endpoint.");
  }
  const hdrs = { Accept: "application/json", Authorization: `Bearer ${session.token}`, ...headers };
  const init = { method, headers: hdrs, cache: "no-store", credentials: "omit",
                 redirect: "error", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    hdrs["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const remembered = useEtag ? etags.get(path) : undefined;
  if (remembered) hdrs["If-None-Match"] = remembered.etag;
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "The server could not be reached. Check that FerroHSM is " +
      "running and reload the page.", null, "Connection failed");
  }
  if (resp.status === 304 && remembered) return { status: 200, data: remembered.data, cached: true };
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw apiError(resp, data);
  const etag = resp.headers.get("ETag");
  if (useEtag && etag) {
    if (etags.size >= MAX_ETAGS) etags.delete(etags.keys().next().value);
    etags.set(path, { etag, data });
  }
  return { status: resp.status, data, cached: false };
}

function apiError(resp, data) {
  const e = data?.error ?? {};
  const message = e.message ?? `The server answered ${resp.status} ${resp.statusText}.`;
  const err = new ApiError(resp.status, e.code ?? "http_" + resp.status, message, e.request_id);
  err.field = typeof e.field === "string" ? e.field : null; // the body member to change
  if (resp.status === 401) {
    err.title = "Signed out";
    events.dispatchEvent(new CustomEvent("unauthenticated", { detail: err }));
  } else if (resp.status === 403) {
    err.title = "Not allowed for your role";
  } else if (resp.status === 429) {
    const wait = resp.headers.get("Retry-After");
    err.title = "Too many requests";
    err.message = `The server is rate limiting you${wait ? `; try again in ${wait} s` : ""}.`;
  } else if (resp.status === 404) {
    err.title = "Not found";
  }
  return err;
}

/** Save text as a file through a short-lived object URL (no server round trip, no data: URL). */
export function download(filename, text, type = "application/x-pem-file") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
