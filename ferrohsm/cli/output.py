"""Human output for the CLI: aligned tables, readable UTC times, states that stand out.

Tables are for people; ``--json`` and ``--output text`` are for scripts, so the tables need not be
parseable, but the text rows (``*_values``) hold the API's raw values (ISO times, version numbers),
never the table's wording. Colour is used only on a terminal and never when NO_COLOR is set
(https://no-color.org); widths are computed on the uncoloured text so columns stay aligned.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from ..audit.toolout import MissingMember, lookup
from ..audit.toolout import cell as _cell
from ..audit.toolout import flat as _flat

GREEN, YELLOW, RED, DIM, BOLD, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[2m", "\033[1m", \
    "\033[0m"
STATE_COLOURS = {"active": GREEN, "enabled": GREEN, "approved": GREEN, "executed": DIM,
                 "revoked": YELLOW, "archived": YELLOW, "pending": YELLOW,
                 "destroy_scheduled": RED, "destroyed": RED + DIM, "denied": RED,
                 "expired": DIM}
STATE_MEANING = {
    "active": "usable for every operation its usage allows",
    "revoked": "encrypt/sign/wrap refused; decrypt/verify/unwrap still work",
    "destroy_scheduled": "every operation refused; `keys cancel-destroy` until destroy_after",
    "destroyed": "key material erased; metadata and history kept",
}


def use_colour(stream: TextIO) -> bool:
    return (not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
            and hasattr(stream, "isatty") and stream.isatty())


def paint(text: str, state: str, colour: bool) -> str:
    code = STATE_COLOURS.get(state)
    return f"{code}{text}{RESET}" if colour and code else text


# What a terminal could take for a command or that reorders what is shown: C1 controls (U+009B
# is a one-character escape sequence), bidi controls, line and paragraph separators. Escaped in
# JSON output (JSON allows \\uXXXX anywhere in a string, and they occur only inside strings).
_UNSAFE = re.compile("[\u0080-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def json_text(value: Any) -> str:
    """The API's JSON as the server sent it: its members in its order, its text unescaped
    (``café``, not ``caf\\u00e9``) but for characters a terminal acts on; indented."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def print_json(value: Any, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json_text(value))


def parse_time(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts)  # 3.11 reads a trailing Z
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # API times are UTC


def when(ts: str | None) -> str:
    """``2026-11-28 12:00:03 UTC``: to the second, no microseconds, no 'T'."""
    parsed = parse_time(ts)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if parsed else (ts or "-")


def relative(ts: str | None, now: datetime | None = None) -> str:
    """``in 23h 59m`` or ``5m ago``: for deadlines (destroy_after, expires_at)."""
    parsed = parse_time(ts)
    if parsed is None:
        return ""
    seconds = int((parsed - (now or datetime.now(UTC))).total_seconds())
    span = abs(seconds)
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if not days:
        parts.append(f"{minutes}m" if span >= 60 else f"{span}s")
    text = " ".join(parts)
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], colour: bool = False,
          state_column: str | None = "STATE") -> str:
    """Left-aligned columns separated by two spaces; the state column coloured by its value."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    state_at = headers.index(state_column) if state_column in headers else -1
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            cells.append(paint(padded, cell.split(" ")[0], colour) if i == state_at else padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    """``Label   value`` lines with the values aligned. A value of several lines (a description)
    continues indented under itself: only a label starts a line, so a description cannot
    pass for the fields, versions or history after it (an outside tester's fake ones did)."""
    pairs = list(pairs)
    width = max(len(label) for label, _ in pairs)
    indent = "\n" + " " * (width + 2)
    return "\n".join(f"{label.ljust(width)}  {indent.join(str(value).splitlines() or [''])}"
                     for label, value in pairs)


# ---- keys -----------------------------------------------------------------------------------


def key_state(key: dict[str, Any]) -> str:
    state = str(key.get("state", "?"))
    if state == "destroy_scheduled" and key.get("destroy_after"):
        return f"{state} ({relative(key['destroy_after'])})"
    return state


KEY_HEADERS = ("NAME", "ID", "ALGORITHM", "USAGE", "STATE", "VERSION", "TAGS", "UPDATED")


def key_row(key: dict[str, Any]) -> list[str]:
    versions = key.get("versions") or []
    return [key.get("name") or "-", str(key.get("id", "")), str(key.get("algorithm", "")),
            str(key.get("usage", "")), key_state(key),
            f"v{key.get('primary_version')} of {len(versions)}",
            ",".join(key.get("tags") or []) or "-", when(key.get("updated_at"))]


def key_values(key: dict[str, Any]) -> list[Any]:
    """A key as one ``--output text`` line: the table's columns, each the API's raw value."""
    return [key.get("name"), key.get("id"), key.get("algorithm"), key.get("usage"),
            key.get("state"), key.get("primary_version"), ",".join(key.get("tags") or []),
            key.get("updated_at")]


def key_table(keys: list[dict[str, Any]], colour: bool, empty: str = "no keys match") -> str:
    if not keys:
        return empty
    return table(KEY_HEADERS, [key_row(k) for k in keys], colour)


def key_detail(key: dict[str, Any], colour: bool, history: int = 5) -> str:
    state = str(key.get("state", "?"))
    state_text = paint(key_state(key), state, colour)
    if state in STATE_MEANING:
        state_text += f": {STATE_MEANING[state]}"
    head = fields([
        ("Name", key.get("name") or "-"), ("ID", str(key.get("id"))),
        ("Algorithm", str(key.get("algorithm"))), ("Usage", str(key.get("usage"))),
        ("Origin", str(key.get("origin") or "generated")),
        ("State", state_text), ("Primary", f"v{key.get('primary_version')}"),
        ("Tags", ", ".join(key.get("tags") or []) or "-"),
        ("Description", key.get("description") or "-"),
        ("Created", f"{when(key.get('created_at'))} by {key.get('created_by') or '?'}"),
        ("Updated", when(key.get("updated_at"))),
        ("Destroy after", f"{when(key['destroy_after'])} ({relative(key['destroy_after'])})"
         if key.get("destroy_after") else "-"),
    ])
    primary, rows = key.get("primary_version"), key.get("versions") or []
    counted = any("encryptions_reserved" in v for v in rows)  # AES-GCM encrypt keys
    versions = table(("VERSION", "STATE", "CREATED", "ORIGIN")
                     + (("ENCRYPTIONS RESERVED",) if counted else ()), [
        [f"v{v['version']}" + (" (primary)" if v["version"] == primary else ""),
         str(v.get("state")), when(v.get("created_at")), str(v.get("origin") or "generated")]
        + ([reserved_text(v.get("encryptions_reserved"))] if counted else [])
        for v in rows], colour)
    text = f"{head}\n\n{versions}"
    events = (key.get("history") or [])[-history:]
    if events:
        text += "\n\n" + table(("WHEN", "ACTOR", "ACTION", "DETAIL"), [
            [when(h.get("at")), str(h.get("actor") or "-"), str(h.get("action") or "-"),
             str(h.get("detail") or "")] for h in events], state_column=None)
    return text


def reserved_text(count: Any) -> str:
    """A version's reserved AES-GCM encryptions, with the share of the 2^32 it may make."""
    if not isinstance(count, int) or isinstance(count, bool):
        return "-"
    share = count * 100 / 2**32
    return f"{count:,} ({share:.0f}% of 2^32)" if share >= 10 else \
        f"{count:,} ({share:.2g}% of 2^32)"


def pending_note(approvals: list[dict[str, Any]]) -> str:
    """What `keys show` says of the key's open approvals, and what to do about them."""
    lines = [f"Pending approvals: {len(approvals)} (`ferrohsm approvals show ID`)"]
    for a in approvals:
        expires = a.get("expires_at")
        lines.append(f"  {a.get('id')}  {a.get('action')}  {a.get('state')}  "
                     f"{len(_approvers(a))}/{a.get('required', '?')} approvals  requested by "
                     f"{a.get('requested_by') or '-'}  expires {when(expires)} "
                     f"({relative(expires)})")
    return "\n".join(lines)


# ---- approvals ------------------------------------------------------------------------------


def _approvers(approval: dict[str, Any]) -> list[str]:
    names = []
    for entry in approval.get("approvals") or []:
        names.append(str(entry.get("actor") or entry.get("approver") or entry.get("subject")
                         or "?") if isinstance(entry, dict) else str(entry))
    return names


APPROVAL_HEADERS = ("ID", "ACTION", "KEY", "STATE", "APPROVALS", "REQUESTED BY", "EXPIRES")


def key_label(a: dict[str, Any], names: dict[str, str] | None) -> str | None:
    """The approval's key by its name when ``names`` knows it, else by its id."""
    key_id = a.get("key_id")
    return (names or {}).get(str(key_id), key_id) if key_id else None


def approval_row(a: dict[str, Any], names: dict[str, str] | None = None) -> list[str]:
    expires = a.get("expires_at")
    return [str(a.get("id", "")), str(a.get("action", "")), str(key_label(a, names) or "-"),
            str(a.get("state", "")), f"{len(_approvers(a))}/{a.get('required', '?')}",
            str(a.get("requested_by") or a.get("requester") or "-"),
            f"{when(expires)} ({relative(expires)})" if expires else "-"]


def approval_values(a: dict[str, Any], names: dict[str, str] | None = None) -> list[Any]:
    """An approval as one ``--output text`` line: the table's columns, raw (ISO expiry)."""
    return [a.get("id"), a.get("action"), key_label(a, names), a.get("state"),
            f"{len(_approvers(a))}/{a.get('required', '?')}",
            a.get("requested_by") or a.get("requester"), a.get("expires_at")]


def approval_table(approvals: list[dict[str, Any]], colour: bool,
                   names: dict[str, str] | None = None) -> str:
    if not approvals:
        return "no approvals match"
    return table(APPROVAL_HEADERS, [approval_row(a, names) for a in approvals], colour)


def approval_detail(a: dict[str, Any], colour: bool, name: str | None = None) -> str:
    """One approval; ``name``: its key's name, shown before the id (as the listing does)."""
    expires = a.get("expires_at")
    summary = [("Request", str(a["summary"]))] if a.get("summary") else []
    key_id = a.get("key_id")
    return fields([
        ("Approval", str(a.get("id"))), ("Action", str(a.get("action"))), *summary,
        ("Key", f"{name} ({key_id})" if name and key_id else str(key_id or "-")),
        ("State", paint(str(a.get("state")), str(a.get("state")), colour)),
        ("Approvals", f"{len(_approvers(a))} of {a.get('required', '?')} required"
         + (f" ({', '.join(_approvers(a))})" if _approvers(a) else "")),
        ("Requested by", str(a.get("requested_by") or a.get("requester") or "-")),
        ("Expires", f"{when(expires)} ({relative(expires)})" if expires else "-"),
        *_votes(a),
    ])


def _votes(a: dict[str, Any]) -> list[tuple[str, str]]:
    """Who approved (with their comments), who denied and why, when it was carried out: what
    a reviewer reads before voting, and what the JSON holds under approvals and denied_by."""
    rows = [("Approved by" if at == 0 else "", _vote_text(v))
            for at, v in enumerate(v for v in a.get("approvals") or () if isinstance(v, dict))]
    denial = a.get("denied_by")
    if isinstance(denial, dict):
        rows.append(("Denied by", _vote_text(denial)))
    if a.get("executed_at"):
        rows.append(("Consumed", when(a["executed_at"])))  # by the repeat (which may then
        # have been refused, a full disk: the log's intent says whether it was applied)
    return rows


def _vote_text(vote: dict[str, Any]) -> str:
    text = f"{vote.get('actor')} ({vote.get('role')}) {when(vote.get('at'))}"
    return f"{text}: {vote['comment']}" if vote.get("comment") else text


# ---- --output and --field -------------------------------------------------------------------


class FieldMissing(LookupError):
    """--field names no member of the answer (the message lists the ones it has: on a list
    answer, its own members and those of its items)."""

    def __init__(self, path: str, document: Any, items_in: str | None = None) -> None:
        if items_in is None:
            has = _names(document)
        else:
            items = document[items_in]
            rest = {k: v for k, v in document.items() if k != items_in}
            has = (f"{_names(rest)}; and in each of {items_in}: "
                   f"{_names(items[0] if items else None)}")
        super().__init__(f"--field {path}: the answer has no such member; it has: {has}")


def _names(document: Any) -> str:
    names = [name for name, _ in _flat(document) if name][:30]
    return ", ".join(names) or "none"


def render(settings: Any, document: Any, human: Callable[[], str],
           rows: Callable[[], list[list[Any]]] | None = None) -> str:
    """What a command prints for ``document`` (the API's JSON answer): one --field, the JSON
    itself (--output json), tab-separated raw values (--output text: ``rows`` for a list, one
    item a line, else one ``name<TAB>value`` line per member) or the table (``human``)."""
    if settings.field:
        return field_text(document, settings.field)
    if settings.output == "json":
        return json_text(document).rstrip("\n")
    if settings.output == "text":
        if rows is not None:
            return "\n".join("\t".join(_cell(c) for c in row) for row in rows())
        return "\n".join(f"{name}\t{_cell(value)}" for name, value in _flat(document))
    return human()


def emit(settings: Any, document: Any, human: Callable[[], str],
         rows: Callable[[], list[list[Any]]] | None = None) -> None:
    text = render(settings, document, human, rows)
    if settings.field and not text and _empty_listing(document, settings.field):
        return  # --field over an empty listing: no line at all (a `while read` runs no turn)
    if text or settings.field:  # a --field that is empty or null: an empty line
        print(text)


def _empty_listing(document: Any, path: str) -> bool:
    """``path`` names no member of the answer, whose one list is empty (a listing that found
    nothing), as opposed to a member that is empty or null."""
    try:
        lookup(document, path)
    except MissingMember:
        listed = _only_list(document)
        return listed is not None and not listed[1]
    return False


def _lookup(document: Any, path: str) -> Any:
    try:
        return lookup(document, path)
    except MissingMember:
        raise FieldMissing(path, document) from None


def field_text(document: Any, path: str) -> str:
    """The value of ``path`` (``vault -field``): a string raw, null as an empty line (as for an
    unnamed key), anything else as JSON. On a list answer ({"keys": [...]} and the like) a name
    its items carry is looked up in each item, one line each."""
    try:
        return _field_value(_lookup(document, path))
    except FieldMissing:
        listed = _only_list(document)
        if not listed:
            raise
    name, items = listed
    if not items:
        return ""  # nothing matched: nothing to print, whatever the name (exit 0)
    try:
        return "\n".join(_line(_lookup(item, path)) for item in items)
    except FieldMissing:
        raise FieldMissing(path, document, name) from None


def _line(value: Any) -> str:
    """One item's value in a list's --field: on one line whatever its text holds (tabs and
    newlines escaped, as --output text does), so a `while read` loop sees one item a line."""
    return _cell(value) if isinstance(value, str) else _field_value(value)


def _field_value(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _only_list(document: Any) -> tuple[str, list[Any]] | None:
    """The one list member of an answer and its name (``keys``), when it has exactly one."""
    if not isinstance(document, dict):
        return None
    lists = [(k, v) for k, v in document.items() if isinstance(v, list)]
    return lists[0] if len(lists) == 1 else None
