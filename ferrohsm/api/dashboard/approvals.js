// Dual-control approvals: what each request would do, who asked, who approved, and approve/deny
// for the roles that may decide (never on one's own request: the server refuses that too).

import {
  api, APPROVAL_PAGES, can, confirmDialog, emptyState, errorPanel, field, fill, h, hashQuery,
  keepInUrl, keyLink, keyNames, listApprovals, loading, notify, option, plural, session,
  stateBadge, timeEl, transient,
} from "./lib.js";

// An approval of a system action (a master-key rekey) targets "system", never a key.
const SYSTEM = "system";

function target(a) {
  return a.key_id === SYSTEM ? [what(a)] : [`${what(a)} key `, keyLink(a.key_id)];
}

const STATES = ["pending", "approved", "denied", "expired", "executed"];
// Every action a policy can park (ferrohsm/control/policy.py SHORT_NAMES), in words.
const WHAT = {
  "key.update": "Change the description of",
  "key.destroy": "Schedule destruction of", "key.cancel_destroy": "Cancel destruction of",
  "key.rollback": "Roll back", "key.rotate": "Rotate", "key.revoke": "Revoke",
  "key.destroy_version": "Erase a version of", "key.import": "Import key material into",
  "key.public_key": "Read the public key of",
  "crypto.encrypt": "Encrypt data with", "crypto.decrypt": "Decrypt data with",
  "crypto.sign": "Sign with", "crypto.verify": "Verify a signature with",
  "crypto.wrap": "Wrap data with", "crypto.unwrap": "Unwrap data with",
  "system.rekey": "Rotate the master key (re-seal every key)",
};

const SHOW = 100; // rows drawn at first; "Show more" adds as many again

export async function renderApprovals(root) {
  // The URL is the only memory: #/approvals without a state means pending (keepInUrl leaves
  // pending out), so a filter chosen earlier never sticks to the view or outlives a sign-out.
  // ?key=<id> narrows to one key's requests and ?id=<approval> marks one (the key page's
  // badges link here), drawn however far down the list it is.
  const query = hashQuery();
  const wanted = query.get("state");
  let shownState = STATES.includes(wanted) ? wanted : "pending";
  if (wanted && !STATES.includes(wanted)) { // a hand-edited or old link: said, not ignored
    notify(`The address asked for approvals in state "${wanted.slice(0, 40)}", which does ` +
      "not exist: showing pending ones.", "warning");
  }
  const onlyKey = query.get("key") ?? "";
  const marked = query.get("id") ?? "";
  const summary = h("p", { class: "summary", id: "approval-summary", "aria-live": "polite" });
  const results = h("div", { class: "results" }, loading());
  const state = h("select", { name: "state", onchange: (e) => { shownState = e.target.value; load(); } },
    STATES.map((s) => option(s, s, shownState)));
  root.replaceChildren(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Approvals"), summary),
    h("p", { class: "muted" }, "Operations on keys whose tags require a quorum wait here until " +
      "enough other people approve them; the requester then repeats the operation."),
    h("div", { class: "filters compact" }, field("Show", state)),
    results);

  async function load() {
    results.replaceChildren(loading());
    summary.replaceChildren();
    keepInUrl("#/approvals", { state: shownState === "pending" ? "" : shownState,
      key: onlyKey, id: marked });
    try {
      const { items: all, complete } = await listApprovals(shownState);
      // newest first: an approver acts on what was just asked, not on the oldest 100
      const items = all.filter((a) => !onlyKey || a.key_id === onlyKey).reverse();
      await keyNames(items.map((a) => a.key_id).filter((id) => id !== SYSTEM));
      const at = marked ? items.findIndex((a) => a.id === marked) : -1;
      draw(items, complete, Math.max(SHOW, at + 1));
      if (at >= 0) {
        results.querySelector(`tr[data-approval-id="${CSS.escape(marked)}"]`)
          ?.scrollIntoView({ block: "center" });
      }
    } catch (err) {
      if (err.status === 404) {
        results.replaceChildren(errorPanel({ title: "Approvals are not available",
          message: "This server does not offer the approvals API (GET /v1/approvals answered " +
            "404). Upgrade the server to use dual control from the dashboard." }));
      } else {
        results.replaceChildren(errorPanel(err, transient(err) ? load : null));
      }
    }
  }

  function draw(items, complete, count) {
    const shown = items.slice(0, count);
    const scope = onlyKey ? [" for key ", keyLink(onlyKey), " · ",
      h("a", { href: shownState === "pending" ? "#/approvals"
        : `#/approvals?state=${shownState}` }, "all keys")] : [];
    summary.replaceChildren(`${plural(items.length, `${shownState} request`)}`, ...scope,
      items.length > 1 ? `, newest first · showing ${shown.length}` : "");
    const more = shown.length < items.length && h("button", { type: "button", id: "more-approvals",
      onclick: () => draw(items, complete, count + SHOW) },
    `Show ${Math.min(SHOW, items.length - shown.length)} more (${items.length - shown.length} not shown)`);
    const cut = !complete && h("div", { class: "notice warning", role: "status" },
      `Only the first ${plural(APPROVAL_PAGES * 1000, "request")} in this state were read (the ` +
      "API lists the oldest first); newer ones are not shown. Page through GET /v1/approvals " +
      "to see them all.");
    fill(results, cut, items.length ? [table(shown, load, marked), h("div", { class: "pager" }, more)]
      : emptyState(`No ${shownState} approval requests${onlyKey ? " for this key" : ""}.`,
        shownState === "pending" ? "Nothing is waiting for a decision." : null));
  }
  await load();
}

const what = (a) => WHAT[a.action] ?? a.action;
const voter = (v) => (typeof v === "string" ? v : v?.actor ?? "?");

function table(items, reload, marked = "") {
  const me = session.claims?.sub;
  const rows = items.map((a) => {
    const approvers = (a.approvals ?? []).map(voter);
    const mine = a.requested_by === me;
    const eligible = can("decide") && a.state === "pending" && !mine && !approvers.includes(me);
    return h("tr", { dataset: { approvalId: a.id }, class: a.id === marked ? "marked" : null,
      "aria-current": a.id === marked ? "true" : null },
      h("td", null, h("span", { class: "what" }, ...target(a)),
        a.summary && h("div", { class: "small request-summary" }, a.summary),
        h("div", { class: "mono small muted" }, `request ${a.id}`)),
      h("td", null, a.requested_by ?? h("span", { class: "muted" }, "—"),
        a.created_at && h("div", { class: "small muted" }, timeEl(a.created_at))),
      h("td", null, `${approvers.length} of ${a.required}`,
        approvers.length > 0 && h("div", { class: "small muted" }, approvers.join(", ")),
        a.denied_by && h("div", { class: "small" }, `denied by ${voter(a.denied_by)}`)),
      h("td", { class: "nowrap" }, timeEl(a.expires_at)),
      h("td", null, stateBadge(a.state)),
      h("td", null, h("div", { class: "row-actions" }, // a flex td is no table cell: its border strays
        eligible ? [decide(a, "approve", reload), decide(a, "deny", reload)]
          : mine && a.state === "pending" ? h("span", { class: "muted small" }, "your request") : null)));
  });
  return h("div", { class: "table-wrap" }, h("table", { class: "data", id: "approval-table" },
    h("caption", { class: "visually-hidden" }, "Approval requests"),
    h("thead", null, h("tr", null, ["Request", "Requested by", "Approvals", "Expires", "State"]
      .map((c) => h("th", { scope: "col" }, c)),
      h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Decision")))),
    h("tbody", null, rows)));
}

function decide(a, verdict, reload) {
  const approve = verdict === "approve";
  return h("button", { type: "button", class: approve ? "primary small" : "danger small",
    dataset: { decide: verdict },
    onclick: async () => {
      const comment = await confirmDialog({
        title: approve ? "Approve this request?" : "Deny this request?",
        message: [`${target(a).map((n) => n.textContent ?? n).join("")}${a.summary ? ` (${a.summary})` : ""}, requested ` +
          `by ${a.requested_by}.`, approve
          ? "Your approval is recorded in the audit log under your name."
          : "The request is refused and can no longer be executed."],
        confirmLabel: approve ? "Approve" : "Deny", danger: !approve,
        input: { label: "Comment (optional)", maxLength: 256 } });
      if (comment === null) return;
      try {
        await api(`/v1/approvals/${encodeURIComponent(a.id)}/${verdict}`,
          { method: "POST", body: comment ? { comment } : {} });
        notify(approve ? `Approved request ${a.id}.` : `Denied request ${a.id}.`, "success");
      } catch (err) {
        if (err.status !== 401) notify(`Could not ${verdict}: ${err.message}`, "error");
      }
      await reload();
    } }, approve ? "Approve" : "Deny");
}
