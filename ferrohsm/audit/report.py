"""``ferrohsm audit report PATH...``: what an auditor looks at after the log verified.

The auditor's journey: extract the log, verify it (verify.py), then cross-check for suspicious
activity. This module only reads and summarises; it does not check integrity, so run ``audit
verify`` first. Standard library only, like the verifier.

Sections: denials and authentication failures by actor and by source IP; destroy / revoke /
rollback / purge events, and losses accepted at start-up (``key.lost``,
``integrity.*_loss_accepted``); approval activity; activity outside working hours (default
07:00-19:00 UTC, ``--work-hours``). Text fields come from clients, so every cell is escaped before printing:
a crafted actor name cannot move the cursor or forge a table row on the auditor's terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from ..domain.binding import forks
from ..domain.strictjson import loads
from . import toolout
from .offline import VerifyInputError, chained_lines, expand_paths
from .toolout import add_output_flags, output_format

# scheduler.max_age schedules a destruction (the person's key.destroy was listed, the policy's
# was not); key.import makes a new primary version of material somebody outside knows
SENSITIVE = ("destroy", "revoke", "rollback", "purge", "lost", "loss_accepted",
             "audit.recovery", "scheduler.max_age", "key.import")
# The sink's own records (no one's action): left out of every count but the total. Everything
# else under audit.* is someone's (audit.read, allowed or denied; audit.recovery).
# The log's own records, and the AES-GCM count's reservations (service/keys.py
# RESERVE_ACTION): the system keeping its books at any hour, not anybody's activity.
BOOKKEEPING = frozenset({"audit.genesis", "audit.checkpoint", "audit.segment_start",
                         "audit.writable", "key.reserve_encryptions"})
AUTH_PREFIXES = ("auth", "login", "token")
MAX_CELL = 60


def _records(paths: list[str]) -> Iterator[dict[str, Any] | None]:
    """Parsed records of the inputs in order; None for a line that is not a JSON object."""
    for raw in chained_lines(expand_paths(paths)):
        yield _loads(raw)


def _loads(text: bytes) -> dict[str, Any] | None:
    try:
        value = loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_hours(text: str) -> tuple[int, int]:
    """'07:00-19:00' or '7-19' -> minutes since midnight (start, end). end < start wraps."""
    try:
        start, end = (_minutes(part) for part in text.split("-"))
    except ValueError:
        raise ValueError("work hours look like 07:00-19:00") from None
    return start, end


def _minutes(part: str) -> int:
    hours, _, minutes = part.strip().partition(":")
    value = int(hours) * 60 + int(minutes or 0)
    if not 0 <= value <= 24 * 60:
        raise ValueError(part)
    return value


def off_hours(ts: str, hours: tuple[int, int]) -> bool:
    """True when ``ts`` (RFC 3339 UTC) falls outside the working window."""
    try:
        minute = int(ts[11:13]) * 60 + int(ts[14:16])
    except (ValueError, TypeError):
        return False
    start, end = hours
    inside = start <= minute < end if start <= end else (minute >= start or minute < end)
    return not inside


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in EVENT_COLUMNS}


def build_report(records: Iterable[dict[str, Any] | None],
                 hours: tuple[int, int] = (7 * 60, 19 * 60), limit: int = 20) -> dict[str, Any]:
    """The report as plain data (the --json output); lists are capped at ``limit`` rows."""
    total, unreadable = 0, 0
    outcomes: Counter[str] = Counter()
    by_actor: dict[str, Counter[str]] = defaultdict(Counter)
    by_ip: dict[str, Counter[str]] = defaultdict(Counter)
    sensitive: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    late_by_actor: Counter[str] = Counter()
    intents: dict[Any, dict[str, Any]] = {}  # seq -> row, until a record settles it
    forks = _Forks()
    executed: Counter[str] = Counter()  # approval id -> its approval.executed successes
    first_ts = last_ts = None
    for rec in records:
        if rec is None:
            unreadable += 1
            continue
        total += 1
        action, outcome = str(rec.get("action", "")), str(rec.get("outcome", ""))
        outcomes[outcome] += 1
        first_ts = first_ts or rec.get("ts")
        last_ts = rec.get("ts")
        _settle(intents, rec, outcome)
        forks.see(rec, outcome)
        if action == "approval.executed" and outcome == "success":
            details = rec.get("details")
            executed[str(details.get("approval_id") if isinstance(details, dict) else None)] += 1
        if action in BOOKKEEPING:
            continue
        # a token refused, not the server failing to check one (its 503 is recorded "error")
        auth_failure = action.startswith(AUTH_PREFIXES) and outcome == "denied"
        if outcome == "denied" or auth_failure:
            column = "auth_failures" if auth_failure else "denied"
            by_actor[str(rec.get("actor"))][column] += 1
            by_ip[str(rec.get("source_ip"))][column] += 1
        if any(word in action for word in SENSITIVE):
            sensitive.append(_row(rec))
        if "approv" in action:
            approvals.append(_row(rec))
        if off_hours(str(rec.get("ts", "")), hours):
            late_by_actor[str(rec.get("actor"))] += 1
            late.append(_row(rec))
    forked = forks.rows()
    return {
        "records": total, "unreadable_lines": unreadable, "first_ts": first_ts,
        "last_ts": last_ts, "outcomes": dict(outcomes),
        "denials_by_actor": _ranked(by_actor, limit), "denials_by_source_ip": _ranked(by_ip, limit),
        "sensitive_events": {"count": len(sensitive), "rows": sensitive[:limit]},
        "approval_events": {"count": len(approvals), "rows": approvals[:limit]},
        "unsettled_intents": {"count": len(intents), "rows": list(intents.values())[:limit]},
        "forked_changes": {"count": len(forked), "rows": forked[:limit]},
        # an approval runs once: twice means its record was put back (an older copy)
        "approvals_executed_twice": sorted(a for a, n in executed.items() if n > 1)[:limit],
        "off_hours": {"work_hours_utc": f"{_hhmm(hours[0])}-{_hhmm(hours[1])}",
                      "count": len(late), "by_actor": dict(late_by_actor.most_common(limit)),
                      "rows": late[:limit]},
    }


def _settle(intents: dict[Any, dict[str, Any]], rec: dict[str, Any], outcome: str) -> None:
    """Changes are recorded before they are made (an ``intent``) and settled after (a record
    whose ``details.intent_seq`` names it): what is left names a change whose node died before
    settling it, in a cluster that has not been entirely down since (the store then says
    whether it was made)."""
    details = rec.get("details")
    settles = details.get("intent_seq") if isinstance(details, dict) else None
    if outcome == "intent":
        intents[rec.get("seq")] = _row(rec)
    elif isinstance(settles, int):
        intents.pop(settles, None)


class _Forks:
    """Key changes made to an older copy of the key's record (domain/binding.py ``forks``, the
    rule start-up refuses by), listed also when an operator accepted them since."""

    def __init__(self) -> None:
        self.intents: dict[int, tuple[str, int, str]] = {}  # seq -> key, from_seq, action
        # key -> intent seq -> (from_seq, action) of each confirmed change; the rows by seq
        self.confirmed: dict[str, dict[int, tuple[int, str]]] = {}
        self.successes: dict[int, dict[str, Any]] = {}

    def see(self, rec: dict[str, Any], outcome: str) -> None:
        details = rec.get("details")
        if not isinstance(details, dict):
            return
        seq, key_id, from_seq = rec.get("seq"), rec.get("key_id"), details.get("from_seq")
        if outcome == "intent" and isinstance(seq, int) and isinstance(key_id, str) \
                and isinstance(from_seq, int):
            self.intents[seq] = (key_id, from_seq, str(rec.get("action")))
            return
        settles = details.get("intent_seq")
        if not isinstance(settles, int) or settles not in self.intents:
            return
        key, built_on, action = self.intents.pop(settles)
        if outcome == "success":
            self.confirmed.setdefault(key, {})[settles] = (built_on, action)
            self.successes[settles] = _row(rec)

    def rows(self) -> list[dict[str, Any]]:
        found = [{**self.successes[seq], "from_seq": built_on, "after_seq": previous}
                 for line in self.confirmed.values()
                 for seq, built_on, previous, _ in forks(line)]
        return sorted(found, key=lambda row: row.get("seq") or 0)


def _ranked(table: dict[str, Counter[str]], limit: int) -> list[dict[str, Any]]:
    ranked = sorted(table.items(), key=lambda item: (-item[1].total(), item[0]))
    return [{"name": name, "denied": c["denied"], "auth_failures": c["auth_failures"],
             "total": c.total()} for name, c in ranked[:limit]]


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _cell(value: object) -> str:
    text = "-" if value is None else str(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 3] + "..."


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines) if rows else lines[0] + "\n(none)"


# The role beside the actor: the server's own records are role "system", and a subject that
# merely looks like "system" (another script's letters) reads as what it is.
EVENT_COLUMNS = ["seq", "ts", "actor", "role", "source_ip", "action", "key_id", "outcome"]
UNVERIFIED = ("Records NOT verified: this report reads them as they are; run `ferrohsm audit "
              "verify` on the same input to check them")


def _headline(report: dict[str, Any]) -> str:
    """``Audit report: 7 records, FIRST .. LAST``; no time span when there is no record (a file
    of unreadable lines, or an empty one), rather than ``None .. None``."""
    count = report["records"]
    head = f"Audit report: {count} record{'' if count == 1 else 's'}"
    if not count:
        return head
    return f"{head}, {report['first_ts'] or '-'} .. {report['last_ts'] or '-'}"


def render(report: dict[str, Any]) -> str:
    """The report as readable text tables."""
    out = [_headline(report), UNVERIFIED,
           "Outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(report["outcomes"].items()))
                           or "none")]
    if report["unreadable_lines"]:
        out.append(f"Unreadable lines: {report['unreadable_lines']} (run `ferrohsm audit verify`)")
    for title, key in (("Denials and authentication failures by actor", "denials_by_actor"),
                       ("Denials and authentication failures by source IP",
                        "denials_by_source_ip")):
        rows = [[r["name"], r["denied"], r["auth_failures"], r["total"]] for r in report[key]]
        out += ["", title, table(["name", "denied", "auth_failures", "total"], rows)]
    for title, key in (("Destroy / revoke / rollback / purge / import / loss events",
                        "sensitive_events"),
                       ("Approval events", "approval_events"),
                       ("Changes recorded as about to be made and never settled (the store says "
                        "whether they were; a cold start settles them)", "unsettled_intents"),
                       ("Key changes made to an older copy of the key's record, put back after "
                        "a later change (a cold start refuses the key)", "forked_changes")):
        section = report[key]
        rows = [[r[c] for c in EVENT_COLUMNS] for r in section["rows"]]
        out += ["", f"{title}: {section['count']}", table(EVENT_COLUMNS, rows)]
    if report["approvals_executed_twice"]:
        out += ["", "Approvals executed more than once (an older copy of the approval put back): "
                + ", ".join(_cell(a) for a in report["approvals_executed_twice"])]
    late = report["off_hours"]
    out += ["", f"Outside working hours ({late['work_hours_utc']} UTC): {late['count']}",
            table(["actor", "records"], [[k, v] for k, v in late["by_actor"].items()]),
            table(EVENT_COLUMNS, [[r[c] for c in EVENT_COLUMNS] for r in late["rows"]])]
    return "\n".join(out)


class _UsageError(Exception):
    pass


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of rows, 1 or more: {text!r:.20}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def report_parser() -> argparse.ArgumentParser:
    """The command line of ``ferrohsm audit report`` (also walked for --help, completion and
    the manual page)."""
    parser = _Parser(prog="ferrohsm audit report",
                     description="Summarise suspicious activity in an audit log.",
                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n"
                     "  ferrohsm audit report ferrohsm-data/audit --work-hours 08:00-18:00\n"
                     "  ferrohsm audit report audit.jsonl --json | jq .denials_by_actor")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="audit directory, segment files, exported JSONL, or SQLite database")
    parser.add_argument("--work-hours", default="07:00-19:00", metavar="HH:MM-HH:MM",
                        help="working hours in UTC (default 07:00-19:00)")
    parser.add_argument("--limit", type=_positive, default=20, metavar="N",
                        help="rows per list, 1 or more (default 20)")
    add_output_flags(parser)
    return parser


def report_main(argv: list[str] | None = None) -> int:
    """``ferrohsm audit report``: 0 printed, 2 usage error or unreadable input (a file with
    no readable record, empty or not, is not an audit log: a report of it would say "0
    records" and exit 0, as if the log were clean)."""
    parser = report_parser()
    try:
        args = parser.parse_args(argv)
        output_format(args)
        hours = parse_hours(args.work_hours)
        report = build_report(_records(args.paths), hours, args.limit)
        if not report["records"] and not report["unreadable_lines"]:
            raise _UsageError(f"the input holds no audit records at all ({', '.join(args.paths)}):"
                              " `ferrohsm audit verify` fails such a log (deleted)")
        if not report["records"] and report["unreadable_lines"]:
            raise _UsageError(f"no readable audit record in {', '.join(args.paths)} "
                              f"({report['unreadable_lines']} unreadable lines): not an audit "
                              "log, or a damaged one (run `ferrohsm audit verify`)")
        text = toolout.render(args, report, lambda: render(report))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, VerifyInputError, ValueError) as exc:
        print(f"ferrohsm audit report: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
