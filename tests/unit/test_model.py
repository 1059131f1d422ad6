"""Key model validation and the record round trip every store relies on."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import BadRequest
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import (
    Key,
    KeyFilter,
    KeyState,
    key_from_record,
    key_to_record,
    key_view,
    plain_text,
    validate_name,
    validate_new_name,
    validate_tags,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def key(**kw: Any) -> Key:
    base = lc.new_key(key_id=uuid7(), name="release-signing", description="d",
                      algorithm="ec-p256", usage="sign", tags=("prod", "pci"), sealed=b"\x01s",
                      now=NOW, actor="alice")
    return replace(base, **kw) if kw else base


def test_record_round_trip_after_lifecycle() -> None:
    k = lc.schedule_destroy(lc.rotate(key(), b"\x01t", NOW, "bob"), NOW, "bob",
                            timedelta(hours=1))
    assert key_from_record(key_to_record(k)) == k


def test_view_never_contains_sealed_material() -> None:
    view = key_view(key())
    assert "sealed" not in str(view) and "AXM=" not in str(view)
    assert set(view) >= {"id", "name", "description", "algorithm", "usage", "tags", "state",
                         "primary_version", "versions", "created_at", "updated_at",
                         "created_by", "destroy_after"}


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a" * 129, "x y", "..",
                                  "6f1c0e1a-0000-4000-8000-000000000000", 7])
def test_bad_names(name: object) -> None:
    with pytest.raises(BadRequest):
        validate_name(name)  # type: ignore[arg-type]  # wrong types are the point


@pytest.mark.parametrize("tags", [("PCI",), ("a", "a"), ("x" * 64,), tuple(f"t{i}" for i in range(33)),
                                  ("bad tag",)])
def test_bad_tags(tags: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest):
        validate_tags(tags)


@pytest.mark.parametrize(("tags", "named"), [
    (("ok", "PCI"), "tag 2 ('PCI') is not valid"),
    (("a", "b", "a"), "tag 3 ('a') is given twice"),
    (("x" * 80,), "tag 1 ('xxxx"),
    (("evil\u202e",), "tag 1 ('evil\\u202e') is not valid"),
])
def test_a_refused_tag_is_named_with_its_field(tags: tuple[str, ...], named: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_tags(tags)
    assert caught.value.message.startswith(named) and caught.value.details["field"] == "tags"
    assert len(caught.value.message) < 160  # cut short, however long the tag


def test_invariants_enforced() -> None:
    with pytest.raises(ValueError):
        key(id="not-a-uuid")
    with pytest.raises(ValueError):
        key(primary_version=3)
    with pytest.raises(ValueError):
        key(destroy_after=NOW)  # only with destroy_scheduled


def test_filter_matching() -> None:
    k = key()
    assert KeyFilter(tag="pci", algorithm="ec-p256", name_prefix="release").matches(k)
    assert not KeyFilter(state=KeyState.REVOKED).matches(k)
    assert not KeyFilter(name_prefix="x").matches(k)


def test_uuid4_str_is_a_canonical_version_4_uuid() -> None:
    import uuid

    from ferrohsm.domain.ids import uuid4_str
    seen = set()
    for _ in range(2000):
        text = uuid4_str()
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 2000


def test_audit_binding_fields_round_trip_and_default_for_old_records() -> None:
    bound = key(audit_seq=42, audit_hash="ab" * 32)
    assert key_from_record(key_to_record(bound)) == bound
    old = key_to_record(key())
    del old["audit_seq"], old["audit_hash"]  # as a record written before the fields existed
    restored = key_from_record(old)
    assert (restored.audit_seq, restored.audit_hash) == (0, "")


@pytest.mark.parametrize("change", [{"audit_seq": -1}, {"audit_seq": True}, {"audit_seq": "3"},
                                    {"audit_hash": "AB" * 32}, {"audit_hash": "ab"},
                                    {"audit_hash": None}])
def test_bad_audit_binding_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        key(**change)


def test_view_leaves_the_audit_binding_out() -> None:
    view = key_view(key(audit_seq=7, audit_hash="cd" * 32))
    assert "audit_seq" not in view and "audit_hash" not in view


def test_a_new_name_must_be_usable_in_a_path() -> None:
    """The router refuses ".." in a path parameter, so a new name may not hold it; a stored
    key's name is still read under the older rule."""
    for name in ("a.b", "a.", "a-b_c.d", "x" * 128):
        validate_new_name(name)
    for name in ("a..b", "a...", "x..", "..x"):
        with pytest.raises(BadRequest):
            validate_new_name(name)
    validate_name("a..b")


@pytest.mark.parametrize("text", ["a\nb", "\x85", "\u202e", "\u200b", "\u2028", "\ufeff", "\x7f",
                                  "\u061c", "x" * 257, "al\u2062ice", "\xad",
                                  "tag\U000e0041hidden"])
def test_plain_text_refuses_controls_separators_and_bidi(text: str) -> None:
    with pytest.raises(BadRequest):
        plain_text(text, "reason", 256)


def test_plain_text_takes_any_other_text() -> None:
    for text in ("", "héllo wörld", "\u00a0nbsp", "emoji 🔑", "x" * 256, "tab-free; quotes \"'"):
        assert plain_text(text, "reason", 256) == text


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    """Request, audit record and span ids come from buffers (urandom 4 KiB at a time, a
    seeded PRNG for span ids): processes = N forks, and a child must not hand out the ids its
    parent or its siblings will."""
    from ferrohsm.domain.ids import uuid4_str
    from ferrohsm.telemetry.tracecontext import new_span_id
    uuid4_str()  # the buffer is filled before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  the child reports through the pipe
        os.write(write_end, (uuid4_str() + new_span_id()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    os.close(write_end)
    assert child[:36] != uuid4_str() and child[36:] != new_span_id()


def test_uuid7_at_sorts_as_its_timestamps_do_and_strictly_increases() -> None:
    """Listings are in id order and say created_at: the two must agree, across processes
    (the sub-millisecond fraction is in the id) and within one (a counter when the clock
    stands still)."""
    import itertools
    import random
    import uuid
    from datetime import datetime, timedelta

    import ferrohsm.domain.ids as ids
    from ferrohsm.domain.ids import uuid7_at

    base = datetime(2026, 12, 6, 7, 31, 46, tzinfo=UTC)
    made = []
    for _process in range(2):  # two nodes: each its own counter, one clock
        ids._last_ordered = (0, 0)
        stamps = sorted(base + timedelta(microseconds=random.randrange(5000))  # noqa: S311  times, not secrets
                        for _ in range(300))
        made += [(when, uuid7_at(when)) for when in stamps]
    by_id = sorted(made, key=lambda pair: pair[1])
    for (earlier, _), (later, _) in itertools.pairwise(by_id):
        assert earlier <= later + timedelta(microseconds=1)  # ties: within a counter's bump
    frozen = [uuid7_at(base) for _ in range(5000)]  # > 4096: the counter rolls into ms
    assert frozen == sorted(frozen) and len(set(frozen)) == 5000
    assert all(uuid.UUID(i).version == 7 for i in frozen)
