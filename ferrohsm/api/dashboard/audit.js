// Audit log: the most recent records, filters by actor, action, key and outcome, and a check of
// the hash chain over the records loaded. Verifying the HMACs needs the audit key, which never
// leaves the server: `ferrohsm audit verify` does the full check offline.

import {
  api, can, emptyState, errorPanel, field, h, hashQuery, keepInUrl, keyLink, keyNames, loading,
  notify, option, plural, stateBadge, timeEl,
} from "./lib.js";

const PAGE = 200;
const filters = { actor: "", action: "", key: "", outcome: "" };
const OUTCOMES = ["success", "denied", "error", "intent", "rolled_back"];

/** Filters from the URL (#/audit?actor=alice&action=key.rotate), then kept there. */
function readUrl() {
  const query = hashQuery();
  for (const name of Object.keys(filters)) filters[name] = (query.get(name) ?? "").trim();
  // an outcome the menu cannot show is dropped, as unknown parameters are: what is filtered
  // and what the menu says must agree
  if (filters.outcome && !OUTCOMES.includes(filters.outcome)) {
    notify(`The address asked for outcome "${filters.outcome.slice(0, 40)}", which no record ` +
      "has: showing every outcome.", "warning");
    filters.outcome = "";
  }
}

let names = new Map();

export async function renderAudit(root) {
  if (!can("audit")) { // an operator's 403: reading the log is not a role of theirs; retrying won't help
    root.replaceChildren(errorPanel({ title: "Not allowed for your role",
      message: "Reading the audit log is for administrators and auditors." }),
    h("a", { href: "#/keys" }, "Go to keys"));
    return;
  }
  readUrl();
  const records = []; // ascending by seq, contiguous, each seq once
  let logStart = null; // the first record the log still holds, once retention is seen to start it
  const summary = h("p", { class: "summary", "aria-live": "polite" });
  const chain = h("div", { class: "chain", id: "chain-status", role: "status" });
  const results = h("div", { class: "results" }, loading());
  const older = h("button", { type: "button", hidden: true, onclick: () => loadOlder() },
    `Load ${PAGE} older records`);
  const start = h("p", { class: "muted", id: "audit-start", hidden: true });
  const actions = h("datalist", { id: "audit-actions" });
  root.replaceChildren(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Audit log"), summary),
    chain, filterForm(draw, actions), results, h("div", { class: "pager" }, start, older));

  /** The records before ``beforeSeq`` (a page of them). The API answers the records after
   * ``after``: when retention pruned those, it answers later ones, some already on screen. Those
   * are dropped, and when the log itself begins past ``after`` its start is noted. */
  async function fetchBefore(beforeSeq) {
    const after = Math.max(0, beforeSeq - 1 - PAGE);
    const limit = Math.max(1, beforeSeq - 1 - after);
    const { data } = await api(`/v1/audit?after_seq=${after}&limit=${limit}`);
    const got = data.records ?? [];
    if ((got[0]?.seq ?? beforeSeq) > after + 1) logStart = await startAfter(after) ?? logStart;
    return got.filter((r) => r.seq < beforeSeq);
  }

  async function loadOlder() {
    older.disabled = true;
    try {
      const page = await fetchBefore(records[0].seq);
      names = await keyNames(page.map((r) => r.key_id));
      records.unshift(...page);
      draw();
    } catch (err) {
      results.replaceChildren(errorPanel(err));
    } finally {
      older.disabled = false;
    }
  }

  function draw() {
    keepInUrl("#/audit", filters);
    const shown = records.filter(matches).reverse();
    const first = records[0]?.seq;
    const last = records.at(-1)?.seq;
    summary.textContent = records.length
      ? `${plural(shown.length, "record")} shown of ${records.length} loaded (#${first}–#${last})`
      : "";
    const more = first > 1 && !(logStart !== null && first <= logStart);
    older.hidden = !more;
    start.hidden = !(logStart > 1 && first <= logStart);
    start.textContent = `The log starts at #${logStart} (earlier records were removed by ` +
      "retention).";
    const seen = [...new Set(records.map((r) => r.action))].sort();
    actions.replaceChildren(...seen.map((a) => h("option", { value: a })));
    results.replaceChildren(shown.length ? auditTable(shown)
      : emptyState(records.length ? "No loaded record matches these filters."
        : "The audit log is empty.", records.length && more
        ? "Load older records to search further back." : null));
    verifyChain(records, logStart).then((status) => chain.replaceChildren(...status));
  }

  const first = await fetchBefore(await headSeq());
  names = await keyNames(first.map((r) => r.key_id));
  records.push(...first);
  draw();
}

/** The first seq the log holds, when it is above ``after`` (retention pruned everything up to
 * it), else null: then records after ``after`` are missing from the middle of the log, which the
 * chain check reports. */
async function startAfter(after) {
  const { data } = await api("/v1/audit?after_seq=0&limit=1");
  const first = data.records?.[0]?.seq;
  return typeof first === "number" && first > after ? first : null;
}

/** The last seq: from the API when it says (head_seq), else from /healthz (public). */
async function headSeq() {
  const { data } = await api("/v1/audit?limit=1");
  if (typeof data.head_seq === "number") return data.head_seq + 1;
  try {
    const resp = await fetch("/healthz", { cache: "no-store", credentials: "omit" });
    const health = await resp.json();
    if (typeof health?.audit?.head_seq === "number") return health.audit.head_seq + 1;
  } catch {
    // fall through: show the oldest page rather than nothing
  }
  return PAGE + 1;
}

function matches(r) {
  const has = (value, needle) => !needle || String(value ?? "").toLowerCase()
    .includes(needle.toLowerCase());
  return has(r.actor, filters.actor) && has(r.action, filters.action)
    && (has(r.key_id, filters.key) || (filters.key && has(names.get(r.key_id), filters.key))) && (!filters.outcome || r.outcome === filters.outcome);
}

function filterForm(onChange, actions) {
  const text = (name, placeholder, extra = {}) => h("input", { type: "search", name, placeholder,
    value: filters[name], autocomplete: "off", spellcheck: "false", ...extra,
    oninput: (e) => { filters[name] = e.target.value.trim(); onChange(); } });
  return h("form", { class: "filters", role: "search", "aria-label": "Filter audit records",
    onsubmit: (e) => e.preventDefault() },
    field("Actor", text("actor", "alice")),
    field("Action", text("action", "key.rotate", { list: "audit-actions" })),
    field("Key (name or ID)", text("key", "payments-data")),
    field("Outcome", h("select", { name: "outcome",
      onchange: (e) => { filters.outcome = e.target.value; onChange(); } },
      option("", "Any outcome", filters.outcome),
      OUTCOMES.map((o) => option(o, o, filters.outcome)))),
    actions);
}

function auditTable(records) {
  const rows = records.map((r) => h("tr", { dataset: { seq: r.seq } },
    h("td", { class: "num" }, r.seq),
    h("td", { class: "nowrap" }, timeEl(r.ts)),
    h("td", null, r.actor, h("div", { class: "small muted" }, r.role)),
    h("td", { class: "mono small" }, r.action),
    h("td", { class: "small" }, r.key_id
      ? keyLink(r.key_id, r.key_version ? ` v${r.key_version}` : "")
      : h("span", { class: "muted" }, "—")),
    h("td", null, stateBadge(r.outcome)),
    h("td", { class: "message" }, r.message,
      r.request_id && h("div", { class: "small muted mono" }, `request ${r.request_id}`))));
  return h("div", { class: "table-wrap" }, h("table", { class: "data", id: "audit-table" },
    h("caption", { class: "visually-hidden" }, "Audit records"),
    h("thead", null, h("tr", null, ["Seq", "Time", "Actor", "Action", "Key", "Outcome",
      "Message"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", null, rows)));
}

// ---- hash chain ---------------------------------------------------------------------------

/**
 * Recompute each record's hash (SHA-256 of prev_hash + canonical body, audit/chain.py) and check
 * that seqs are consecutive and each prev_hash names the previous record's hash.
 */
async function verifyChain(records, logStart = null) {
  if (!records.length) return [];
  if (!globalThis.crypto?.subtle) {
    return [stateBadge("unknown"), " This browser cannot compute SHA-256 here (not HTTPS?)."];
  }
  const range = `#${records[0].seq}–#${records.at(-1).seq}`;
  for (let i = 0; i < records.length; i += 1) {
    const r = records[i];
    const prev = records[i - 1];
    let problem = null;
    if (prev && r.seq !== prev.seq + 1) problem = `records #${prev.seq + 1}–#${r.seq - 1} are missing`;
    else if (prev && r.prev_hash !== prev.hash) problem = `record #${r.seq} does not link to #${prev.seq}`;
    else if (await recordHash(r) !== r.hash) problem = `record #${r.seq} was altered`;
    if (problem) {
      return [h("span", { class: "badge state-destroyed" }, "chain broken"),
        ` Hash chain check failed: ${problem}. Run \`ferrohsm audit verify\` on the log.`];
    }
  }
  return [h("span", { class: "badge state-active" }, "chain intact"),
    ` Hash chain verified for ${plural(records.length, "record")} (${range}). HMAC signatures ` +
    "need the audit key: `ferrohsm audit verify` checks them offline.",
    records[0].seq === logStart && logStart > 1 ? ` ${prunedLink(records)}` : ""];
}

/** The first retained record names the hash of one retention removed: that link cannot be
 * recomputed here. A loaded retention checkpoint (audit.checkpoint) that names the same hash
 * attests it; `ferrohsm audit verify` checks that checkpoint's HMAC. */
function prunedLink(records) {
  const first = records[0];
  const attest = records.find((r) => r.action === "audit.checkpoint"
    && r.details?.last_pruned_seq === first.seq - 1 && r.details?.last_pruned_hash === first.prev_hash);
  return `The chain starts at #${first.seq}, the first record retention kept: its link to the ` +
    `removed #${first.seq - 1} cannot be checked here${attest
      ? `; the retention checkpoint #${attest.seq} names that same hash` : ""}.`;
}

async function recordHash(record) {
  const body = { ...record };
  delete body.hash;
  delete body.hmac;
  const bytes = new TextEncoder().encode(record.prev_hash + canonical(body));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True), exactly.
const SHORT = { '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
  "\f": "\\f" };

function canonical(value) {
  if (value === null) return "null";
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  if (typeof value === "string") return quote(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  return `{${Object.keys(value).sort().map((k) => `${quote(k)}:${canonical(value[k])}`).join(",")}}`;
}

function quote(text) {
  let out = '"';
  for (const unit of text.split("")) { // UTF-16 code units, as Python escapes astral characters
    const code = unit.charCodeAt(0);
    if (SHORT[unit]) out += SHORT[unit];
    else if (code < 0x20 || code > 0x7e) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += unit;
  }
  return `${out}"`;
}
