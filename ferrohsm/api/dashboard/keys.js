// Key inventory (filters, pagination, totals; revalidated with the listing's ETag) and key detail
// (versions, public-key download, lifecycle actions the signed-in role may take, each confirmed).

import {
  api, can, confirmDialog, download, emptyState, errorPanel, field, fill, fmtTime, h, hashQuery,
  keepInUrl, listApprovals, loading, notify, onSessionEnd, option, plural, session, stateBadge,
  timeEl, transient,
} from "./lib.js";
import { requestArgs } from "./summary.js";

const STATES = ["active", "revoked", "destroy_scheduled", "destroyed"];
const ALGORITHMS = ["aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384"];
const USAGES = ["encrypt", "wrap", "sign"];
const PAGE_SIZES = [25, 50, 100, 250];
const DEFAULT_LIMIT = 50; // left out of the URL
const keyHref = (id) => `#/keys/${encodeURIComponent(id)}`;

// Kept across views, so "back to keys" returns to the same filters and page; the filters and
// page size always come from the URL, and all of it is dropped at sign-out.
const fresh = () => ({
  filters: { state: "", algorithm: "", usage: "", tag: "", name_prefix: "" },
  limit: DEFAULT_LIMIT,
  pageTokens: [null], // pageTokens[i] opens page i
  page: 0,
});
const inventory = fresh();
onSessionEnd(() => Object.assign(inventory, fresh()));

// ---- inventory ----------------------------------------------------------------------------

/** Filters and page size from the URL (#/keys?tag=prod&state=active&limit=100). */
function readUrl() {
  const query = hashQuery();
  const filters = Object.fromEntries(Object.keys(inventory.filters).map((name) =>
    [name, (query.get(name) ?? "").trim()]));
  const changed = Object.entries(filters).some(([name, v]) => inventory.filters[name] !== v);
  const asked = Number(query.get("limit"));
  const limit = PAGE_SIZES.includes(asked) ? asked : DEFAULT_LIMIT; // #/keys means the default
  if (limit !== inventory.limit) {
    inventory.limit = limit;
    inventory.pageTokens = [null];
    inventory.page = 0;
  }
  if (changed) {
    inventory.filters = filters;
    inventory.pageTokens = [null];
    inventory.page = 0;
  }
}

/** Back to the inventory as it was left: its filters are in its URL. */
function inventoryHref() {
  const params = new URLSearchParams(Object.entries(urlValues()).filter(([, v]) => v));
  const query = params.toString();
  return query ? `#/keys?${query}` : "#/keys";
}

function urlValues() {
  return { ...inventory.filters,
    limit: inventory.limit === DEFAULT_LIMIT ? "" : String(inventory.limit) };
}

export async function renderInventory(root) {
  readUrl();
  const summary = h("p", { class: "summary", id: "key-summary", "aria-live": "polite" });
  const results = h("div", { class: "results" }, loading());
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  let sequence = 0; // answers to superseded requests (fast typing) are dropped

  async function load() {
    const mine = ++sequence;
    keepInUrl("#/keys", urlValues());
    const params = new URLSearchParams({ limit: inventory.limit });
    for (const [name, value] of Object.entries(inventory.filters)) if (value) params.set(name, value);
    const token = inventory.pageTokens[inventory.page];
    if (token) params.set("page_token", token);
    results.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      let { data, cached } = await api(`/v1/keys?${params}`, { useEtag: true });
      if (Array.isArray(session.claims?.tags) && !data.keys?.length && data.next_page_token) {
        ({ data, cached } = await skipHidden(params, data.next_page_token));
      }
      if (mine !== sequence) return;
      inventory.pageTokens[inventory.page + 1] = data.next_page_token ?? undefined;
      drawPage(data, cached, performance.now() - started);
    } catch (err) {
      if (mine !== sequence) return;
      // A 400 is about the request (a filter from the URL: #/keys?tag=PROD): trying again cannot
      // help, so show the server's reason (safe text) and the way out.
      results.replaceChildren(err.status === 400 ? invalidFilters(err)
        : errorPanel(err, transient(err) ? load : null));
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  function drawPage(data, cached, ms) {
    const keys = data.keys ?? [];
    const first = inventory.page * inventory.limit;
    const shown = keys.length ? `Showing ${first + 1}–${first + keys.length}` : "No keys shown";
    const total = typeof data.total === "number" && data.total > 0
      ? ` of ${plural(data.total, "key")}` : ""; // "No keys shown of 0 keys" said nothing more
    const more = total || !data.next_page_token ? "" : " · more on the next page";
    summary.replaceChildren(`${shown}${total}${more}`,
      h("span", { class: "muted small" }, ` · ${Math.round(ms)} ms${cached ? ", not modified" : ""}`));
    fill(results, unreadable(data.unreadable), keys.length ? keyTable(keys, applyTag) : noKeys());
    pager.replaceChildren(
      h("button", { type: "button", disabled: inventory.page === 0,
        onclick: () => turn(-1) }, "← Previous"),
      h("span", { class: "muted" }, `Page ${inventory.page + 1}`),
      h("button", { type: "button", disabled: !data.next_page_token,
        onclick: () => turn(1) }, "Next →"));
  }

  function turn(delta) {
    inventory.page += delta;
    window.scrollTo(0, 0); // the new page is read from its first row
    load();
  }

  function noKeys() {
    const filtered = Object.values(inventory.filters).some(Boolean);
    const scope = session.claims?.tags;
    const clear = filtered && h("button", { type: "button", onclick: () => applyFilters({}, true) },
      "Clear filters");
    if (Array.isArray(scope)) return scopedEmpty(scope, clear);
    if (filtered) {
      return emptyState("No keys match these filters.", "Change or clear the filters to see more " +
        "keys.", clear);
    }
    if (!can("manage")) {
      return emptyState("There are no keys yet.", "An operator or administrator can create them.");
    }
    return emptyState("There are no keys yet.", "Create one here, or with `ferrohsm keys create " +
      "--algorithm aes-256-gcm --usage encrypt`.",
    h("a", { href: "#/new-key", class: "button primary" }, "Create a key"));
  }

  function applyFilters(changes, reset = false) {
    if (reset) for (const name of Object.keys(inventory.filters)) inventory.filters[name] = "";
    Object.assign(inventory.filters, changes);
    inventory.pageTokens = [null];
    inventory.page = 0;
    syncForm(form, inventory.filters);
    load();
  }

  function invalidFilters(err) {
    summary.replaceChildren();
    pager.replaceChildren();
    const reason = err.message.replace(/^./, (c) => c.toUpperCase()).replace(/\.?$/, ".");
    const panel = errorPanel({ title: "The server refused these filters", message: reason,
      requestId: err.requestId });
    panel.id = "filter-error";
    panel.append(h("button", { type: "button", onclick: () => applyFilters({}, true) },
      "Clear filters"));
    return panel;
  }

  function applyTag(tag) {
    applyFilters({ tag });
  }

  const form = filterForm(applyFilters, (limit) => { inventory.limit = limit; applyFilters({}); });
  root.replaceChildren(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Keys"), summary,
      h("button", { type: "button", class: "small", "data-refresh": "", onclick: () => load() },
        "Refresh"),
      can("manage") && h("a", { href: "#/new-key", class: "button primary small",
        id: "new-key" }, "New key")),
    form, results, pager);
  syncForm(form, inventory.filters);
  await load();
}

/** A tag-scoped token's pages leave out the keys it may not see, so a page can be empty with
 * more after it. Look ahead, 1000 keys a request (page tokens do not depend on the page size),
 * for the next page holding a key it sees, or the end: then "no keys visible" is true. */
async function skipHidden(params, token) {
  const probe = new URLSearchParams(params);
  probe.set("limit", "1000");
  let data = { keys: [], next_page_token: token };
  for (let i = 0; i < 50 && !data.keys?.length && data.next_page_token; i += 1) {
    probe.set("page_token", data.next_page_token);
    ({ data } = await api(`/v1/keys?${probe}`));
  }
  return { data, cached: false };
}

/** A tag-scoped token (a service's) sees only keys carrying one of its tags: say so, rather
 * than "there are no keys", which would be false and would invite creating one. With filters
 * (``clear`` is then their Clear button), both limits are named: its tags and the filters. */
function scopedEmpty(scope, clear = null) {
  const which = scope.length
    ? `keys tagged ${scope.length > 1
      ? `${scope.slice(0, -1).join(", ")} or ${scope.at(-1)}` : scope[0]}`
    : "no keys at all (its tags claim is empty)";
  const hint = clear
    ? `It is limited to ${which}, and no key it may see matches these filters. Change or ` +
      "clear the filters; keys with other tags may exist, but this token cannot see them."
    : `It is limited to ${which}, and no key it may see exists. Keys with other tags may exist; ` +
      "ask an operator to tag a key for this service or to issue a token with the right tags.";
  return h("div", { id: "scoped-empty" }, emptyState(clear
    ? "No keys visible to this token match these filters." : "No keys are visible to this token.",
  hint, clear));
}

function filterForm(apply, setLimit) {
  let timer = null;
  const later = (name, input) => {
    clearTimeout(timer);
    timer = setTimeout(() => apply({ [name]: input.value.trim() }), 300);
  };
  const select = (name, values, all) => h("select", { name,
    onchange: (e) => apply({ [name]: e.target.value }) },
    option("", all, ""), values.map((v) => option(v, v.replaceAll("_", " "))));
  const text = (name, placeholder) => h("input", { type: "search", name, placeholder,
    autocomplete: "off", spellcheck: "false", maxlength: 256,
    oninput: (e) => later(name, e.target) });
  const size = h("select", { name: "limit", onchange: (e) => setLimit(Number(e.target.value)) },
    PAGE_SIZES.map((n) => option(String(n), `${n} per page`, String(inventory.limit))));
  return h("form", { class: "filters", role: "search", "aria-label": "Filter keys",
    onsubmit: (e) => {
      e.preventDefault();
      clearTimeout(timer);
      apply(Object.fromEntries(["tag", "name_prefix"].map((n) => [n, e.target[n].value.trim()])));
    } },
    field("Name starts with", text("name_prefix", "release-")),
    field("Tag", text("tag", "prod")),
    field("State", select("state", STATES, "Any state")),
    field("Algorithm", select("algorithm", ALGORITHMS, "Any algorithm")),
    field("Usage", select("usage", USAGES, "Any usage")),
    field("Page size", size),
    h("div", { class: "filter-actions" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", onclick: () => apply({}, true) }, "Clear")));
}

function syncForm(form, filters) {
  for (const [name, value] of Object.entries(filters)) {
    if (form.elements[name] && document.activeElement !== form.elements[name]) {
      form.elements[name].value = value;
    }
  }
}

function keyTable(keys, onTag) {
  const rows = keys.map((k) => h("tr", { dataset: { keyId: k.id } },
    h("th", { scope: "row" }, h("a", { href: keyHref(k.id), class: "key-link" },
      k.name ?? h("em", null, "(unnamed)"))),
    h("td", { class: "mono small" }, k.id),
    h("td", null, k.algorithm),
    h("td", null, k.usage),
    h("td", null, tagList(k.tags, onTag)),
    h("td", null, stateBadge(k.state)),
    h("td", { class: "num" }, `v${k.primary_version}`),
    h("td", { class: "nowrap" }, timeEl(k.updated_at))));
  return h("div", { class: "table-wrap" }, h("table", { class: "data", id: "key-table" },
    h("caption", { class: "visually-hidden" }, "Keys"),
    h("thead", null, h("tr", null, ["Name", "ID", "Algorithm", "Usage", "Tags", "State",
      "Primary", "Updated"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", null, rows)));
}

function tagList(tags, onTag) {
  if (!tags?.length) return h("span", { class: "muted" }, "—");
  return h("span", { class: "tags" }, tags.map((t) => onTag
    ? h("button", { type: "button", class: "tag", title: `Show keys tagged ${t}`,
        onclick: () => onTag(t) }, t)
    : h("span", { class: "tag" }, t)));
}

// ---- detail -------------------------------------------------------------------------------

export async function renderKeyDetail(root, keyId) {
  const { data } = await api(`/v1/keys/${encodeURIComponent(keyId)}`);
  await redraw(root, data);
}

async function redraw(root, key) {
  drawKey(root, key, await openApprovals(key.id));
}

/**
 * Pending and approved requests for this key: shown beside the actions, and the requester's own
 * approved one is sent back as X-Approval-ID when the same request is repeated. Every page is
 * read (the API has no key filter: one page of 1000 could miss this key's). The server is the
 * memory: nothing about approvals is kept in the browser.
 */
async function openApprovals(keyId) {
  if (!can("approvals")) return [];
  try {
    const lists = await Promise.all(["pending", "approved"].map((state) => listApprovals(state)));
    return lists.flatMap(({ items }) => items).filter((a) => a.key_id === keyId);
  } catch (err) {
    if (err.status === 401) throw err;
    return []; // approvals unavailable: the key's own actions still work
  }
}

const approvalAction = (spec) => `key.${spec.action.replace("-", "_")}`;
const UPDATE = "key.update"; // what an approval of a description edit is for

/** The signed-in person's own open requests for ``action`` among this key's approvals, approved
 * ones first (the one to carry out), then the newest. */
const ownRequests = (approvals, action) => approvals.filter((a) => a.action === action
  && a.requested_by === session.claims?.sub)
  .sort((a, b) => (b.state === "approved") - (a.state === "approved") || (a.id < b.id ? 1 : -1));

/** The approval id to send with a request of ``action`` carrying ``args``: only that of an
 * approved request of the signer's own whose arguments (read back from its summary) are these.
 * A pending one, or one approved for other arguments (a corrected text), would be refused (403
 * "granted for a different request"); sent without it, the server parks the new request or
 * answers with the open one that matches. */
function approvalFor(approvals, action, args) {
  const same = ownRequests(approvals, action).find((a) => a.state === "approved"
    && matches(requestArgs(a.summary), args));
  return same ? { "X-Approval-ID": same.id } : {};
}

function matches(parsed, args) {
  if (parsed === null) return false;
  const names = Object.keys(args).filter((n) => args[n] !== null && args[n] !== undefined);
  if (names.length !== parsed.size) return false;
  return names.every((n) => parsed.has(n) && (parsed.get(n).cut
    ? String(args[n]).startsWith(parsed.get(n).value) : parsed.get(n).value === String(args[n])));
}

/** The text of ``name`` in the signer's own approved request of ``action``: what the dialog is
 * prefilled with, so that saving it as it stands carries the approval out. */
function approvedText(approvals, action, name) {
  const mine = ownRequests(approvals, action).find((a) => a.state === "approved");
  const arg = mine && requestArgs(mine.summary)?.get(name);
  return arg && !arg.cut ? { approval: mine, text: arg.value } : null;
}

/** A 202: the request was parked for approval. The key is unchanged: redraw it with its approvals
 * (the new one among them) and say what happens next. */
async function parked(root, key, approval, repeat) {
  const { id, required, approvals: votes = [] } = approval;
  await redraw(root, key);
  notify(`Approval required: this needs ${required} approval(s) from other people ` +
    `(${votes.length} so far, request ${id}). ${repeat}`, "warning");
}

function drawKey(root, key, approvals = []) {
  const label = key.name ?? key.id;
  fill(root,
    h("p", { class: "crumbs" }, h("a", { href: inventoryHref() }, "← All keys")),
    h("div", { class: "view-head" },
      h("h1", { tabindex: "-1" }, label, " ", stateBadge(key.state))),
    h("div", { class: "description-row" },
      h("p", { class: "description", id: "key-description" },
        key.description || h("span", { class: "muted" }, "No description.")),
      can("manage") && key.state !== "destroyed" && h("button", { type: "button",
        class: "small", id: "edit-description",
        onclick: () => editDescription(root, key, approvals) },
      "Edit description")),
    actionBar(root, key, approvals),
    h("div", { class: "columns" },
      h("section", { "aria-labelledby": "meta-h" }, h("h2", { id: "meta-h" }, "Details"),
        metadata(key)),
      h("section", { "aria-labelledby": "versions-h", class: "grow" },
        h("h2", { id: "versions-h" }, `Versions (${key.versions.length})`),
        versionTable(root, key, approvals))),
    history(key));
}

async function editDescription(root, key, approvals) {
  // Under dual control the approval is for one exact text: the box holds it, so saving it as it
  // stands carries the approval out; any other text is a new request.
  const mine = ownRequests(approvals, UPDATE)[0];
  const approved = approvedText(approvals, UPDATE, "description");
  const request = mine && (mine.state === "approved"
    ? `Your request ${mine.id} is approved (${mine.summary}): ${approved
      ? "the box holds that text; save it as it is to carry it out" : "save that same text to " +
        "carry it out"}. Any other text is a new request.`
    : `Your request ${mine.id} awaits approval (${mine.summary}). A different text is a new ` +
      "request.");
  let saved = null; // the server's answer to the save the dialog made
  const save = async (value) => {
    const description = value.trim();
    try {
      saved = await api(`/v1/keys/${encodeURIComponent(key.id)}`,
        { method: "PATCH", body: { description },
          headers: approvalFor(approvals, UPDATE, { description }) });
      return null;
    } catch (err) {
      // 401: the session ends (and closes this dialog); anything else is said in the dialog,
      // the typed text kept for correcting
      if (err.status === 401) return null;
      return { message: `Not saved: ${err.message}`, invalid: err.field === "description" };
    }
  };
  const value = await confirmDialog({ title: "Edit the description",
    message: ["Shown to everyone who can read this key; the change is audited.", request]
      .filter(Boolean),
    confirmLabel: "Save",
    input: { label: "Description", maxLength: 1024, value: approved?.text ?? key.description ?? "",
      multiline: true, check: save } });
  if (value === null || saved === null) return;
  const { status, data } = saved;
  if (status === 202 && data?.approval) {
    await parked(root, key, data.approval, "Save the same description here once it is " +
      "approved.");
    return;
  }
  await redraw(root, data);
  notify("Description saved.", "success");
}

function metadata(key) {
  const rows = [
    ["ID", h("span", { class: "mono" }, key.id)],
    ["Algorithm", key.algorithm], ["Usage", key.usage],
    ["Origin", key.origin ?? "generated"],
    ["Tags", tagList(key.tags, null)],
    ["Primary version", `v${key.primary_version}`],
    ["Created", [timeEl(key.created_at), key.created_by ? ` by ${key.created_by}` : ""]],
    ["Updated", timeEl(key.updated_at)],
  ];
  if (key.destroy_after) rows.push(["Erased after", timeEl(key.destroy_after)]);
  return h("dl", { class: "meta" }, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

const ACTIONS = [
  { action: "rotate", role: "manage", states: ["active"], label: "Rotate",
    title: "Rotate this key?",
    message: (k) => [`A new version v${maxVersion(k) + 1} is generated and becomes primary. ` +
      "Earlier versions stay enabled, so existing ciphertexts and signatures keep working."],
    done: (k) => `Rotated: v${k.primary_version} is now the primary version.` },
  { action: "revoke", role: "manage", states: ["active"], label: "Revoke", danger: true,
    title: "Revoke this key?", input: { label: "Reason (optional)", maxLength: 256 },
    body: (reason) => (reason ? { reason } : {}), approvedArg: "reason",
    args: (body) => ({ reason: body.reason ?? "" }),
    message: () => ["Encrypt, sign and wrap are refused from now on; decrypt, verify and unwrap " +
      "keep working so no data is lost. Revocation cannot be undone."],
    done: () => "Revoked: the key can no longer protect new data." },
  { action: "destroy", role: "destroy", states: ["active", "revoked"], label: "Destroy…",
    danger: true, title: "Schedule destruction?",
    input: (k) => ({ label: `Type ${k.name ?? k.id} to confirm`, expect: k.name ?? k.id }),
    message: () => ["Every operation is refused at once. After the grace period the key " +
      "material is erased for good; until then the destruction can be cancelled."],
    done: (k) => `Destruction scheduled: the key material is erased after ` +
      `${k.destroy_after ? fmtTime(k.destroy_after) : "the grace period"} unless cancelled.` },
  { action: "cancel-destroy", role: "destroy", states: ["destroy_scheduled"],
    label: "Cancel destruction", title: "Cancel the scheduled destruction?",
    message: () => ["The key returns to the state it had before."],
    done: (k) => `Destruction cancelled: the key is ${k.state} again.` },
];

function maxVersion(key) {
  return Math.max(0, ...key.versions.map((v) => v.version));
}

function actionBar(root, key, approvals) {
  const allowed = ACTIONS.filter((a) => can(a.role));
  if (!allowed.length) {
    return h("p", { class: "muted", id: "no-actions" },
      "Your role can view this key but not change it.");
  }
  const buttons = allowed.filter((a) => a.states.includes(key.state)).map((a) =>
    h("button", { type: "button", class: a.danger ? "danger" : "", dataset: { action: a.action },
      onclick: () => runAction(root, key, a, {}, approvals) }, a.label));
  return h("div", { class: "actions", role: "group", "aria-label": "Key actions" },
    buttons.length ? buttons
      : h("span", { class: "muted" }, `No lifecycle actions apply to a ${key.state.replaceAll("_", " ")} key.`),
    approvals.map(approvalBadge));
}

function approvalBadge(a) {
  const verb = a.action.replace(/^key\./, "").replace("_", " ");
  const name = a.action === UPDATE ? "Description edit"
    : verb.charAt(0).toUpperCase() + verb.slice(1);
  const text = a.state === "approved"
    ? `${name} approved · ${a.requested_by} can run it now`
    : `${name} awaits approval (${a.approvals?.length ?? 0} of ${a.required}) · requested by ` +
      a.requested_by;
  // to the list of that state, narrowed to this key, with this request marked
  const query = new URLSearchParams({ state: a.state, key: a.key_id, id: a.id });
  return h("a", { href: `#/approvals?${query}`, class: `badge state-${a.state}`,
    dataset: { approval: a.id },
    title: `Approval request ${a.id}` }, text);
}

async function runAction(root, key, spec, body, approvals) {
  const action = approvalAction(spec);
  let input = typeof spec.input === "function" ? spec.input(key) : spec.input;
  const approved = spec.approvedArg && approvedText(approvals, action, spec.approvedArg);
  if (approved) input = { ...input, value: approved.text }; // the approved reason, as it was
  const message = [spec.message(key), approved ? `Your request ${approved.approval.id} is ` +
    "approved with this reason: confirm it as it is to carry it out." : null].flat();
  const value = await confirmDialog({ title: spec.title, message: message.filter(Boolean),
    confirmLabel: spec.label.replace("…", ""), danger: spec.danger, input });
  if (value === null) return;
  const sent = spec.body ? spec.body(value) : body;
  try {
    const { status, data } = await api(
      `/v1/keys/${encodeURIComponent(key.id)}/${spec.action}`,
      { method: "POST", body: sent, headers: approvalFor(approvals, action, spec.args ? spec.args(sent) : {}) });
    if (status === 202 && data?.approval) {
      await parked(root, key, data.approval, "Repeat the action here once it is approved.");
      return;
    }
    await redraw(root, data);
    notify(spec.done(data), "success");
  } catch (err) {
    if (err.status !== 401) notify(`${spec.label.replace("…", "")} failed: ${err.message}`, "error");
  }
}

const ROLLBACK = { action: "rollback", label: "Make primary", title: "Roll back?",
  args: (body) => ({ version: body.version }),
  message: () => [], done: (k) => `Rolled back: v${k.primary_version} is now primary.` };

function versionTable(root, key, approvals) {
  const asymmetric = !key.algorithm.startsWith("aes");
  const mayRollback = can("manage") && key.state === "active";
  // AES-GCM encrypt keys: the encryptions every process has reserved of the 2^32 a version may make
  const counted = key.versions.some((v) => v.encryptions_reserved !== undefined);
  const rows = [...key.versions].sort((a, b) => b.version - a.version).map((v) => {
    const primary = v.version === key.primary_version;
    const cells = [];
    if (asymmetric && v.state !== "destroyed" && key.state !== "destroyed") {
      cells.push(h("button", { type: "button", class: "small", dataset: { download: v.version },
        onclick: () => downloadPublicKey(key, v.version) }, "Public key (PEM)"));
    }
    if (mayRollback && !primary && v.state === "enabled") {
      const spec = { ...ROLLBACK, title: `Make v${v.version} the primary version?`,
        message: () => [`New ${key.usage === "sign" ? "signatures" : "ciphertexts"} will use ` +
          `v${v.version} instead of v${key.primary_version}.`] };
      cells.push(h("button", { type: "button", class: "small", dataset: { action: "rollback" },
        onclick: () => runAction(root, key, spec, { version: v.version }, approvals) },
        "Make primary"));
    }
    return h("tr", { dataset: { version: v.version } },
      h("th", { scope: "row" }, `v${v.version}`, primary && h("span", { class: "badge primary" },
        "primary")),
      h("td", null, stateBadge(v.state)),
      h("td", { class: "nowrap" }, timeEl(v.created_at)),
      counted && h("td", { class: "nowrap", title: "of the 2^32 AES-GCM encryptions one version may make" },
        reservedText(v.encryptions_reserved)),
      h("td", null, h("div", { class: "row-actions" }, cells)));
  });
  return h("div", { class: "table-wrap" }, h("table", { class: "data", id: "version-table" },
    h("caption", { class: "visually-hidden" }, "Versions"),
    h("thead", null, h("tr", null, ["Version", "State", "Created",
      ...(counted ? ["Encryptions reserved"] : [])].map((c) =>
      h("th", { scope: "col" }, c)),
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
    h("tbody", null, rows)));
}

function reservedText(count) {
  if (typeof count !== "number") return "-";
  const share = (count * 100) / 2 ** 32;
  return `${count.toLocaleString("en-US")} (${share >= 10 ? share.toFixed(0)
    : Number(share.toPrecision(2))}% of 2^32)`;
}

async function downloadPublicKey(key, version) {
  try {
    const { data } = await api(
      `/v1/keys/${encodeURIComponent(key.id)}/public-key?version=${version}`);
    const base = (key.name ?? key.id).replace(/[^A-Za-z0-9._-]/g, "_");
    download(`${base}-v${data.version}.pem`, data.pem);
    notify(`Saved the public key of v${data.version} as ${base}-v${data.version}.pem.`, "success");
  } catch (err) {
    if (err.status !== 401) notify(`Download failed: ${err.message}`, "error");
  }
}

/** Keys whose stored record failed its integrity check (the listing's ``unreadable``): they
 * are not in the table, and that must not pass unnoticed: the record was changed outside the
 * server (tampering, or a damaged disk), and every operation on the key now fails. */
function unreadable(ids) {
  if (!Array.isArray(ids) || !ids.length) return null;
  return h("div", { class: "notice error", role: "alert" }, h("span", null, // one flowing text
    h("strong", null, `${plural(ids.length, "key")} failed ${ids.length > 1 ? "their" : "its"} ` +
      "integrity check and cannot be used: "),
    ids.map((id, i) => [i ? ", " : "", h("a", { href: `#/keys/${encodeURIComponent(id)}`,
      class: "mono" }, id)]),
    ". A stored record was changed outside the server (tampering, or a damaged disk): the " +
    "audit log names what failed (store.integrity), and a backup can restore the key."));
}

// A time inside a history entry's text ("destroy after 2026-12-06T18:07:58.62+00:00"), shown
// like every other time on the page.
const ISO_TIME = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)/g;

function history(key) {
  const entries = [...(key.history ?? [])].reverse().slice(0, 20);
  if (!entries.length) return null;
  return h("section", { "aria-labelledby": "history-h" },
    h("h2", { id: "history-h" }, "Recent history"),
    h("ul", { class: "history" }, entries.map((e) => h("li", null, timeEl(e.at), " ",
      h("strong", null, e.action), ` by ${e.actor}`,
      e.detail ? ` — ${e.detail.replace(ISO_TIME, (iso) => fmtTime(iso))}` : ""))));
}
