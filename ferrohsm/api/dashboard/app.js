// Boot, sign-in/sign-out and the hash router (#/keys, #/keys/<id>, #/new-key, #/approvals,
// #/audit).
// Routes live in the URL fragment: it never reaches the server, and the token is never in it.

import {
  api, can, clearNotice, decodeClaims, endSession, errorPanel, events, expired, fmtTime, h,
  loading, restoreSession, session, startSession, transient,
} from "./lib.js";
import { renderInventory, renderKeyDetail } from "./keys.js";
import { renderCreateKey } from "./create.js";
import { renderApprovals } from "./approvals.js";
import { renderAudit } from "./audit.js";

// A view's filters ride in the fragment's query (#/keys?tag=prod): the views read them with
// hashQuery() and keep them there with keepInUrl().
const QUERY = "(?:\\?[^#]*)?(?:#.*)?$"; // a second "#..." (a pasted anchor) is ignored
const ROUTES = [
  { pattern: new RegExp(`^#/keys${QUERY}`), nav: "keys", render: renderInventory },
  { pattern: new RegExp(`^#/new-key${QUERY}`), nav: "keys", render: renderCreateKey },
  { pattern: new RegExp(`^#/keys/([^/?]+)${QUERY}`), nav: "keys", render: renderKeyDetail },
  { pattern: new RegExp(`^#/approvals${QUERY}`), nav: "approvals", render: renderApprovals },
  { pattern: new RegExp(`^#/audit${QUERY}`), nav: "audit", render: renderAudit },
];

const $ = (id) => document.getElementById(id);
let expiryTimer = null;
let signingIn = false;

function showSignin(message = "", kind = "info") {
  clearTimeout(expiryTimer);
  endSession();
  $("topbar").hidden = true;
  $("view").replaceChildren();
  clearNotice();
  $("signin").hidden = false;
  const box = $("signin-message");
  box.hidden = !message;
  box.className = `notice ${kind}`;
  box.textContent = message;
  $("token").focus();
}

function showApp() {
  const { sub = "?", role = "?", exp } = session.claims;
  $("signin").hidden = true;
  $("topbar").hidden = false;
  $("who-name").textContent = sub;
  $("who-role").textContent = role;
  $("who-expiry").textContent = exp ? `session until ${fmtTime(exp * 1000)}` : "";
  $("nav-approvals").hidden = !can("approvals");
  $("nav-audit").hidden = !can("audit");
  scheduleExpiry();
  if (!location.hash.startsWith("#/")) location.replace("#/keys");
  else route();
}

/** Leave at the token's exp, with a message, rather than on the next failing click. */
function scheduleExpiry() {
  clearTimeout(expiryTimer);
  const exp = session.claims?.exp;
  if (typeof exp !== "number") return;
  const wait = Math.min(exp * 1000 - Date.now(), 2 ** 31 - 1);
  expiryTimer = setTimeout(checkExpiry, Math.max(wait, 0));
}

function checkExpiry() {
  if (session.token && expired(session.claims)) {
    showSignin(`Your session expired at ${fmtTime(session.claims.exp * 1000)}. ` +
      "Paste a new token to continue.", "warning");
  }
}

async function route() {
  const hash = location.hash;
  if (!session.token || !hash.startsWith("#/")) return; // "#main" is the skip link's target
  const match = ROUTES.map((r) => [r, hash.match(r.pattern)]).find(([, m]) => m);
  for (const link of document.querySelectorAll("#nav a")) {
    if (match?.[0].nav === link.dataset.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearNotice();
  // Each render owns a fresh container: a slow, superseded render writes into a detached node.
  const container = h("div", { class: "view" }, loading());
  $("view").replaceChildren(container);
  if (!match) {
    container.replaceChildren(errorPanel({ title: "Page not found",
      message: "There is no such page in the dashboard." }), h("a", { href: "#/keys" }, "Go to keys"));
    return;
  }
  const [routeDef, m] = match;
  let params;
  try {
    params = m.slice(1).map(decodeURIComponent);
  } catch { // a broken %-escape in a typed or pasted address
    container.replaceChildren(errorPanel({ title: "Page not found",
      message: "This address is not valid: part of it is not properly encoded." }),
      h("a", { href: "#/keys" }, "Go to keys"));
    return;
  }
  try {
    await routeDef.render(container, ...params);
  } catch (err) {
    if (err.status === 401) return; // already back on the sign-in screen
    // "Try again" only where it can help: the network, the server's own failures, a wait.
    // A 403 is about the role, a 404 about the address (a key destroyed or never made): for
    // those the way out is the key list.
    container.replaceChildren(errorPanel(err, transient(err) ? () => route() : null),
      ...(err.status === 404 ? [h("a", { href: "#/keys" }, "Go to keys")] : []));
  }
  if ($("view").contains(container)) container.querySelector("h1")?.focus({ preventScroll: true });
}

async function signIn(event) {
  event.preventDefault();
  // A JWT holds no whitespace: a token pasted wrapped over several lines is still the token.
  const raw = $("token").value.trim().replace(/^Bearer\s+/i, "").replace(/\s+/g, "");
  let claims;
  try {
    claims = decodeClaims(raw);
  } catch {
    showSignin("That is not a token: paste the whole JWT (three base64url parts joined by dots).",
      "error");
    return;
  }
  if (expired(claims)) {
    showSignin(`This token expired at ${fmtTime(claims.exp * 1000)}. Issue a new one with ` +
      "`ferrohsm token issue`.", "error");
    return;
  }
  startSession(raw, claims);
  signingIn = true;
  try {
    await api("/v1/keys?limit=1"); // proves the server accepts the token before showing anything
  } catch (err) {
    if (err.status !== 401) showSignin(err.message, "error");
    return;
  } finally {
    signingIn = false;
  }
  $("token").value = "";
  showApp();
}

events.addEventListener("unauthenticated", (e) => {
  const reason = e.detail.message;
  if (signingIn) showSignin(`The server did not accept this token: ${reason}`, "error");
  else if (expired(session.claims)) checkExpiry();
  else showSignin(`You were signed out: ${reason.replace(/\.?$/, ".")} Paste a new token to continue.`,
    "warning");
});

// ---- focus that a redraw would drop --------------------------------------------------------
// A control that is disabled while its request runs, or redrawn after its action (a dialog
// returns focus to its trigger, which the redraw then replaces), would leave focus on the page
// body: a keyboard or screen-reader user starts again from the top. So once the view changes
// and focus has fallen to the body, it goes back to that control (or the same one, redrawn:
// same id, or same kind and text), else to the view's heading.

let lastFocused = null;

function sameControl(view, was) {
  if (was.isConnected && !was.disabled) return was;
  const byId = was.id && document.getElementById(was.id);
  if (byId && view.contains(byId) && !byId.disabled) return byId;
  const text = was.textContent.trim();
  return [...view.querySelectorAll(was.tagName)].find(
    (e) => !e.disabled && e.textContent.trim() === text && text !== "") ?? null;
}

function keepFocus() {
  const view = $("view");
  if (document.activeElement && document.activeElement !== document.body) return;
  if (document.querySelector("dialog[open]") || !lastFocused) return;
  if (lastFocused.isConnected && lastFocused.disabled) return; // back to it once enabled
  const target = sameControl(view, lastFocused) ?? view.querySelector("h1");
  target?.focus({ preventScroll: true });
}

function watchFocus() {
  document.addEventListener("focusin", (e) => {
    if ($("view").contains(e.target)) lastFocused = e.target;
  });
  new MutationObserver(() => queueMicrotask(keepFocus)).observe($("view"),
    { childList: true, subtree: true, attributes: true, attributeFilter: ["disabled"] });
}

function boot() {
  watchFocus();
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => {
    // Signing out forgets the token here; the server knows nothing of it (bearer tokens have
    // no session to end), so the page says how long it stays valid and how to revoke it.
    const exp = session.claims?.exp, jti = session.claims?.jti;
    const until = exp ? ` until ${new Date(exp * 1000).toISOString().slice(11, 16)} UTC` : "";
    const revoke = jti ? ` (ferrohsm token revoke ${jti})` : "";
    history.replaceState(null, "", location.pathname); // the next person starts on Keys
    showSignin(`You signed out: this tab forgot the token. The token itself stays valid${until}; ` +
      `revoke it${revoke} if it may have leaked.`);
  });
  $("skip").addEventListener("click", (e) => { e.preventDefault(); $("main").focus(); });
  window.addEventListener("hashchange", route);
  // Timers sleep in background tabs; re-check the expiry when the tab comes back.
  document.addEventListener("visibilitychange", checkExpiry);
  if (restoreSession() && !expired(session.claims)) showApp();
  else if (session.claims) checkExpiry();
  else showSignin();
}

boot();
