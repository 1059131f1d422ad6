"""The audit record format (chain.py): canonical bytes, escaping, sealing and checking."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.audit.chain import (
    GENESIS_HASH,
    MAX_MESSAGE,
    AuditEvent,
    canonical,
    canonical_json,
    check_line,
    check_record,
    record_line,
    rfc3339,
    seal_record,
    seal_record_line,
    split_line,
    stored_seq,
)
from ferrohsm.domain.model import Principal, RequestContext, Role

KEY = bytes(range(32))
TS = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
RID = "5b0c3c3e-2a7e-4a0e-9a53-0d9d5c1f7e11"


def ev(**kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {"actor": "alice", "role": "operator", "action": "key.create",
                              "outcome": "success", "message": "created key"}
    fields.update(kw)
    return AuditEvent(**fields)


def seal(event: AuditEvent, seq: int = 1, prev: str = GENESIS_HASH) -> dict[str, Any]:
    return seal_record(event, seq=seq, prev_hash=prev, ts=TS, record_id=RID, hmac_key=KEY)


def test_known_vector() -> None:
    """Pins the byte format: a change here breaks every stored log, so it must be deliberate."""
    record, line = seal_record_line(ev(key_id="k1", key_version=2, details={"b": 1, "a": "x"}),
                                    seq=1, prev_hash=GENESIS_HASH, ts=TS, record_id=RID,
                                    hmac_key=KEY)
    body = (b'{"action":"key.create","actor":"alice","client_fingerprint":null,'
            b'"correlation_id":null,"details":{"a":"x","b":1},"id":"' + RID.encode() +
            b'","key_id":"k1","key_version":2,"message":"created key","outcome":"success",'
            b'"prev_hash":"' + GENESIS_HASH.encode() + b'","request_id":null,"role":"operator",'
            b'"seq":1,"session":null,"source_ip":null,"trace_id":null,'
            b'"ts":"2026-11-28T12:00:00.123456Z","v":1}')
    assert canonical(record) == body
    digest = hashlib.sha256(GENESIS_HASH.encode() + body).hexdigest()
    assert record["hash"] == digest
    assert record["hmac"] == hmac.new(KEY, digest.encode(), "sha256").hexdigest()
    assert line == body[:-1] + f',"hash":"{digest}","hmac":"{record["hmac"]}"}}'.encode()
    assert json.loads(line) == record
    assert split_line(line) == (body, digest.encode(), record["hmac"].encode())


def test_canonical_json_is_sorted_compact_ascii() -> None:
    encoded = canonical_json({"b": 1, "a": [1, "é"], "c": None})
    assert encoded == b'{"a":[1,"\\u00e9"],"b":1,"c":null}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_control_characters_stay_on_one_line() -> None:
    nasty = "line1\nline2\r\x00\x1b[31m\u2028\u2029 é 😀 \\ \""
    record, line = seal_record_line(ev(message=nasty, actor="a\nb", details={"note": nasty}),
                                    seq=1, prev_hash=GENESIS_HASH, ts=TS, record_id=RID,
                                    hmac_key=KEY)
    assert len(line.splitlines()) == 1
    assert all(32 <= byte < 127 for byte in line)
    assert json.loads(line)["message"] == nasty == record["message"]
    assert check_line(line, KEY) == (1, record["hash"])


text = st.text(st.characters(codec="utf-8") | st.sampled_from("\x00\n\u2028\"\\\ud800"),
               max_size=40)
values = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | text


@settings(max_examples=300, deadline=None)
@given(actor=text, message=text, key_id=st.none() | text, version=st.none() | st.integers(0, 9),
       details=st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), values,
                               max_size=5), seq=st.integers(1, 2**62))
def test_fast_encoding_equals_canonical_json(actor: str, message: str, key_id: str | None,
                                             version: int | None, details: dict[str, Any],
                                             seq: int) -> None:
    """Sinks assemble the body from pre-encoded pieces; it must be byte-for-byte canonical."""
    event = ev(actor=actor, message=message, key_id=key_id, key_version=version, details=details)
    record, line = seal_record_line(event, seq=seq, prev_hash=GENESIS_HASH, ts=TS,
                                    record_id=RID, hmac_key=KEY)
    assert record_line(record) == line
    assert check_record(record, GENESIS_HASH, KEY) is None
    assert stored_seq(line + b"\n") == seq


def test_check_record_kinds() -> None:
    record = seal(ev())
    assert check_record(record, GENESIS_HASH, KEY) is None
    assert check_record(dict(record, message="edited"), GENESIS_HASH, KEY) == "modified"
    edited = dict(record, message="edited")
    edited["hash"] = hashlib.sha256(GENESIS_HASH.encode() + canonical(edited)).hexdigest()
    assert check_record(edited, GENESIS_HASH, KEY) == "bad_hmac"
    assert check_record(record, "1" * 64, KEY) == "chain_break"
    assert check_record(record, None, KEY) is None
    assert check_record({k: v for k, v in record.items() if k != "role"}, None, KEY) == "malformed"
    assert check_record(dict(record, v=2), None, KEY) == "malformed"
    assert check_record(record, None, b"x" * 32) == "bad_hmac"


def test_check_line_kinds() -> None:
    record, line = seal_record_line(ev(), seq=3, prev_hash="a" * 64, ts=TS, record_id=RID,
                                    hmac_key=KEY)
    assert check_line(line, KEY) == (3, record["hash"])
    assert check_line(line.replace(b"created", b"deleted"), KEY) == "modified"
    assert check_line(line, b"y" * 32) == "bad_hmac"
    assert check_line(b'{"action":"x"}', KEY) == "malformed"


def test_chained_records_link() -> None:
    first = seal(ev())
    second = seal(ev(message="next"), seq=2, prev=first["hash"])
    assert second["prev_hash"] == first["hash"]
    assert check_record(second, first["hash"], KEY) is None


def test_event_validation() -> None:
    with pytest.raises(ValueError):
        ev(outcome="ok")
    with pytest.raises(ValueError):
        ev(action="Key Create")
    with pytest.raises(TypeError):
        ev(details={"nested": {"a": 1}})
    with pytest.raises(TypeError):
        ev(details={"f": 1.5})
    with pytest.raises(ValueError):
        ev(details={"bad key": 1})
    with pytest.raises(ValueError):
        ev(details={f"k{i}": i for i in range(40)})
    with pytest.raises(TypeError):
        ev(key_version=True)
    with pytest.raises(TypeError):
        ev(message=None)


def test_long_text_is_capped_visibly() -> None:
    event = ev(message="m" * 10_000, actor="a" * 1000, details={"d": "x" * 1000})
    assert len(event.message) == MAX_MESSAGE and event.message.endswith("[truncated]")
    assert len(event.actor) == 256
    assert len(str(event.details["d"])) == 256


def test_from_context() -> None:
    ctx = RequestContext(Principal("bob", Role.SERVICE, session="s-1"), request_id="r-1",
                         correlation_id="c-1", trace_id="t-1", source_ip="192.0.2.1",
                         client_fingerprint="fp", approval_id="ap-1")
    event = AuditEvent.from_context(ctx, "key.sign", "denied", "not allowed", key_id="k")
    assert (event.actor, event.role, event.session, event.request_id) == ("bob", "service",
                                                                          "s-1", "r-1")
    assert (event.correlation_id, event.trace_id, event.source_ip) == ("c-1", "t-1", "192.0.2.1")
    assert event.client_fingerprint == "fp" and event.key_id == "k"
    assert event.details == {"approval_id": "ap-1"}
    anonymous = AuditEvent.from_context(RequestContext(None, request_id="r"), "auth.failed",
                                        "denied", "bad token")
    assert (anonymous.actor, anonymous.role) == ("anonymous", "anonymous")


def test_seal_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        seal(ev(), seq=0)
    with pytest.raises(ValueError):
        seal(ev(), prev="xyz")
    with pytest.raises(ValueError):
        seal_record(ev(), seq=1, prev_hash=GENESIS_HASH, ts=TS, record_id='a"b', hmac_key=KEY)
    with pytest.raises(ValueError):
        seal_record(ev(), seq=1, prev_hash=GENESIS_HASH, ts=datetime(2026, 1, 1),
                    record_id=RID, hmac_key=KEY)


def test_timestamps_are_utc_with_microseconds() -> None:
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=plus_two)) == \
        "2026-01-02T01:04:05.000007Z"


def test_from_context_equals_the_constructor() -> None:
    """The per-request path (from_context with key fields) builds exactly what the dataclass
    constructor builds, validation and copying of details included."""
    principal = Principal("bob", Role.SERVICE, session="s-1")
    for approval in (None, "ap-1"):
        ctx = RequestContext(principal, request_id="r-1", correlation_id="c-1", trace_id="t-1",
                             source_ip="192.0.2.1", client_fingerprint="fp", approval_id=approval)
        details: dict[str, Any] = {"n": 1}
        event = AuditEvent.from_context(ctx, "crypto.encrypt", "success", "m" * 2000,
                                        key_id="k" * 300, key_version=3, details=details)
        expected = AuditEvent(actor="bob", role="service", action="crypto.encrypt",
                              outcome="success", message="m" * 2000, key_id="k" * 300,
                              key_version=3, request_id="r-1", correlation_id="c-1",
                              trace_id="t-1", session="s-1", client_fingerprint="fp",
                              source_ip="192.0.2.1",
                              details={"n": 1, **({"approval_id": approval} if approval else {})})
        assert event == expected and event.details is not details
    ctx = RequestContext(None, request_id="r")
    with pytest.raises(ValueError):
        AuditEvent.from_context(ctx, "Not An Action", "success", "m")
    with pytest.raises(TypeError):
        AuditEvent.from_context(ctx, "a.b", "success", "m", key_version=True)
    with pytest.raises(TypeError):
        AuditEvent.from_context(ctx, "a.b", "success", "m", details=None)


def test_consecutive_records_and_timestamps() -> None:
    """Sinks seal record n+1 after record n, many per second and across second boundaries."""
    prev, start = GENESIS_HASH, datetime(2026, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC)
    for n in range(1, 6):
        ts = start + timedelta(microseconds=n)
        record, line = seal_record_line(ev(), seq=n, prev_hash=prev, ts=ts, record_id=RID,
                                        hmac_key=KEY)
        assert record["ts"] == ts.isoformat(timespec="microseconds")[:-6] + "Z"
        assert check_record(record, prev, KEY) is None
        assert check_line(line, KEY) == (n, record["hash"])
        prev = record["hash"]
    with pytest.raises(ValueError):
        seal(ev(), prev=prev.upper())


def test_the_servers_own_acts_are_recorded_as_role_system() -> None:
    """The scheduler's and start-up's records (SYSTEM_CONTEXT runs with an administrator's
    permissions) read as the server's, not as an administrator's activity."""
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.domain.model import SYSTEM_CONTEXT, Principal, RequestContext, Role
    event = AuditEvent.from_context(SYSTEM_CONTEXT, "key.rotate", "success", "scheduled")
    assert (event.actor, event.role) == ("system", "system")
    admin = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="r")
    assert AuditEvent.from_context(admin, "key.rotate", "success", "m").role == "administrator"
