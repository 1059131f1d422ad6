// Dual-control approvals: what each request would do, who asked, who approved, and approve/deny
// for the roles that may decide (never on one's own request: the server refuses that too).

import {
  api, can, confirmDialog, emptyState, errorPanel, field, h, hashQuery, keepInUrl, keyLink,
  keyNames, loading, notify, option, session, stateBadge, timeEl,
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

export async function renderApprovals(root) {
  // The URL is the only memory: #/approvals without a state means pending (keepInUrl leaves
  // pending out), so a filter chosen earlier never sticks to the view or outlives a sign-out.
  const wanted = hashQuery().get("state");
  let shownState = STATES.includes(wanted) ? wanted : "pending";
  const results = h("div", { class: "results" }, loading());
  const state = h("select", { name: "state", onchange: (e) => { shownState = e.target.value; load(); } },
    STATES.map((s) => option(s, s, shownState)));
  root.replaceChildren(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Approvals")),
    h("p", { class: "muted" }, "Operations on keys whose tags require a quorum wait here until " +
      "enough other people approve them; the requester then repeats the operation."),
    h("div", { class: "filters compact" }, field("Show", state)),
    results);

  async function load() {
    results.replaceChildren(loading());
    keepInUrl("#/approvals", { state: shownState === "pending" ? "" : shownState });
    try {
      const { data } = await api(`/v1/approvals?state=${encodeURIComponent(shownState)}`);
      const items = Array.isArray(data) ? data : data?.approvals ?? [];
      await keyNames(items.map((a) => a.key_id).filter((id) => id !== SYSTEM));
      results.replaceChildren(items.length ? table(items, load)
        : emptyState(`No ${shownState} approval requests.`,
            shownState === "pending" ? "Nothing is waiting for a decision." : null));
    } catch (err) {
      if (err.status === 404) {
        results.replaceChildren(errorPanel({ title: "Approvals are not available",
          message: "This server does not offer the approvals API (GET /v1/approvals answered " +
            "404). Upgrade the server to use dual control from the dashboard." }));
      } else {
        results.replaceChildren(errorPanel(err, load));
      }
    }
  }
  await load();
}

const what = (a) => WHAT[a.action] ?? a.action;
const voter = (v) => (typeof v === "string" ? v : v?.actor ?? "?");

function table(items, reload) {
  const me = session.claims?.sub;
  const rows = items.map((a) => {
    const approvers = (a.approvals ?? []).map(voter);
    const mine = a.requested_by === me;
    const eligible = can("decide") && a.state === "pending" && !mine && !approvers.includes(me);
    return h("tr", { dataset: { approvalId: a.id } },
      h("td", null, h("span", { class: "what" }, ...target(a)),
        a.summary && h("div", { class: "small" }, a.summary),
        h("div", { class: "mono small muted" }, `request ${a.id}`)),
      h("td", null, a.requested_by ?? h("span", { class: "muted" }, "—"),
        a.created_at && h("div", { class: "small muted" }, timeEl(a.created_at))),
      h("td", null, `${approvers.length} of ${a.required}`,
        approvers.length > 0 && h("div", { class: "small muted" }, approvers.join(", ")),
        a.denied_by && h("div", { class: "small" }, `denied by ${voter(a.denied_by)}`)),
      h("td", { class: "nowrap" }, timeEl(a.expires_at)),
      h("td", null, stateBadge(a.state)),
      h("td", { class: "row-actions" }, eligible ? [decide(a, "approve", reload), decide(a, "deny", reload)]
        : mine && a.state === "pending" ? h("span", { class: "muted small" }, "your request") : null));
  });
  return h("div", { class: "table-wrap" }, h("table", { class: "data", id: "approval-table" },
    h("thead", null, h("tr", null, ["Request", "Requested by", "Approvals", "Expires", "State", ""]
      .map((c) => h("th", { scope: "col" }, c)))),
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
