"""ferrohsm/policy.py: tag rules, the strictest merge, and decide() walked exhaustively."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ferrohsm.auth.permissions import PERMISSIONS, Action, refusal
from ferrohsm.config import load_config
from ferrohsm.control.policy import (
    ALLOWED,
    APPROVABLE,
    DEFAULT_TTL,
    Policy,
    Rules,
    TagPolicy,
    Verdict,
    decide,
    parse_action,
    strictest,
)
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import ConfigError
from ferrohsm.domain.model import Key, Principal, Role

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
KEY_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
H, D = timedelta(hours=1), timedelta(days=1)


def key(*tags: str) -> Key:
    return lc.new_key(key_id=KEY_ID, name=None, description="", algorithm="aes-256-gcm",
                      usage="encrypt", tags=tags, sealed=b"x", now=NOW, actor="alice")


POLICY = Policy.from_config({
    "pci": TagPolicy(approvals_required=2, approval_actions=("rollback", "crypto.unwrap"),
                     approval_ttl_seconds=600, rotation_days=90, archive_after_days=365,
                     destroy_grace_hours=48),
    "prod": TagPolicy(approvals_required=1, approval_actions=("revoke",),
                      approval_ttl_seconds=7200, rotation_days=30),
    "short": TagPolicy(archive_after_days=10, destroy_grace_hours=0.5),
}, default_grace_hours=24)


# ---- action names ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,action", [
    ("destroy", Action.KEY_DESTROY), ("key.destroy", Action.KEY_DESTROY),
    ("rollback", Action.KEY_ROLLBACK), ("unwrap", Action.UNWRAP),
    ("crypto.unwrap", Action.UNWRAP), ("cancel-destroy", Action.KEY_CANCEL_DESTROY),
    ("cancel_destroy", Action.KEY_CANCEL_DESTROY), ("public-key", Action.KEY_PUBLIC),
    ("encrypt", Action.ENCRYPT), ("sign", Action.SIGN), ("rotate", Action.KEY_ROTATE),
])
def test_parse_action_accepts_short_and_full_names(name: str, action: Action) -> None:
    assert parse_action(name) is action


@pytest.mark.parametrize("name", ["explode", "", "DESTROY", "key.create", "key.list",
                                  "approval.decide", "audit.read", "token.revoke"])
def test_parse_action_refuses_unknown_and_keyless_actions(name: str) -> None:
    with pytest.raises(ValueError):
        parse_action(name)


def test_a_bad_action_name_stops_start_up_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"\[policy.tags.pci\].approval_actions"):
        Policy.from_config({"pci": TagPolicy(approvals_required=1, approval_actions=("nuke",))})


def test_from_a_real_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[policy.tags.pci]\napprovals_required = 2\n'
                    'approval_actions = ["destroy", "rollback", "unwrap"]\n'
                    'approval_ttl_seconds = 3600\nrotation_days = 90\narchive_after_days = 365\n'
                    'destroy_grace_hours = 24\n')
    config = load_config(str(path), env={})
    rules = Policy.from_config(config.policy_tags).rules_for(key("pci"))
    assert rules == Rules(2, frozenset({Action.KEY_DESTROY, Action.KEY_DESTROY_VERSION,
                                        Action.KEY_ROLLBACK, Action.UNWRAP}),
                          H, 90 * D, 365 * D, 24 * H)


# ---- one tag --------------------------------------------------------------------------------

def test_a_quorum_always_covers_destroy() -> None:
    rules = Rules.from_tag("t", TagPolicy(approvals_required=1, approval_actions=("sign",)))
    assert rules.approval_actions == {Action.SIGN, Action.KEY_DESTROY, Action.KEY_DESTROY_VERSION}
    assert Rules.from_tag("t", TagPolicy(approval_actions=("sign",))).approval_actions == \
        {Action.SIGN}


def test_rotate_under_a_quorum_brings_import() -> None:
    """Importing a version rotates the key to chosen material: not a way around rotate's
    quorum."""
    rules = Rules.from_tag("t", TagPolicy(approvals_required=2, approval_actions=("rotate",)))
    assert rules.needs_approval(Action.KEY_IMPORT) and rules.needs_approval(Action.KEY_ROTATE)
    alone = Rules.from_tag("t", TagPolicy(approvals_required=2, approval_actions=("sign",)))
    assert not alone.needs_approval(Action.KEY_IMPORT)


@pytest.mark.parametrize("required,actions,action,needed", [
    (0, {Action.SIGN}, Action.SIGN, False),
    (1, {Action.SIGN}, Action.SIGN, True),
    (1, {Action.SIGN}, Action.VERIFY, False),
    (3, frozenset(), Action.SIGN, False),
])
def test_needs_approval(required: int, actions: frozenset[Action], action: Action,
                        needed: bool) -> None:
    assert Rules(required, frozenset(actions)).needs_approval(action) is needed


# ---- several tags: the strictest value of each setting ---------------------------------------

BASE = Rules(destroy_grace=24 * H)
A = Rules(2, frozenset({Action.KEY_ROLLBACK}), 10 * H, 90 * D, None, 48 * H)
B = Rules(1, frozenset({Action.UNWRAP}), 2 * H, 30 * D, 365 * D, 1 * H)
C = Rules(0, frozenset({Action.SIGN}), 1 * H, None, 10 * D, 0 * H)


@pytest.mark.parametrize("tags,expected", [
    ([], BASE),
    ([A], Rules(2, frozenset({Action.KEY_ROLLBACK}), 10 * H, 90 * D, None, 48 * H)),
    ([A, B], Rules(2, frozenset({Action.KEY_ROLLBACK, Action.UNWRAP}), 2 * H, 30 * D, 365 * D,
                   48 * H)),
    ([B, A], Rules(2, frozenset({Action.KEY_ROLLBACK, Action.UNWRAP}), 2 * H, 30 * D, 365 * D,
                   48 * H)),
    # C has no quorum: its ttl does not shorten A's window, its actions still join the union
    ([A, C], Rules(2, frozenset({Action.KEY_ROLLBACK, Action.SIGN}), 10 * H, 90 * D, 10 * D,
                   48 * H)),
    # a tag's own grace replaces the default, shorter too ([crypto] fills a tag's unset one)
    ([C], Rules(0, frozenset({Action.SIGN}), DEFAULT_TTL, None, 10 * D, 0 * H)),
    ([A, B, C], Rules(2, frozenset({Action.KEY_ROLLBACK, Action.UNWRAP, Action.SIGN}), 2 * H,
                      30 * D, 10 * D, 48 * H)),
])
def test_strictest_merge(tags: list[Rules], expected: Rules) -> None:
    assert strictest(BASE, tags) == expected


def test_rules_for_a_key() -> None:
    assert POLICY.rules_for(key()) == POLICY.default
    assert POLICY.rules_for(key("unknown")) == POLICY.default
    both = POLICY.rules_for(key("pci", "prod", "short"))
    assert both.approvals_required == 2
    assert both.approval_actions == {Action.KEY_ROLLBACK, Action.UNWRAP, Action.KEY_REVOKE,
                                     Action.KEY_DESTROY, Action.KEY_DESTROY_VERSION}
    assert both.approval_ttl == timedelta(seconds=600)
    assert both.rotation == 30 * D and both.archive_after == 10 * D
    assert both.destroy_grace == 48 * H
    # a tag's own grace replaces [crypto]'s default for its keys, shorter as well as longer
    assert POLICY.rules_for(key("short")).destroy_grace == timedelta(hours=0.5)
    assert POLICY.scheduled_tags == ("pci", "prod", "short")


def test_a_tag_that_sets_no_grace_has_the_configured_default_not_24_hours() -> None:
    fast = Policy.from_config({"fast": TagPolicy(rotation_days=1)}, default_grace_hours=0.001)
    assert fast.rules_for(key("fast")).destroy_grace == timedelta(hours=0.001)
    assert fast.rules_for(key()).destroy_grace == timedelta(hours=0.001)
    slow = Policy.from_config({"slow": TagPolicy(destroy_grace_hours=2)}, default_grace_hours=1)
    assert slow.rules_for(key("slow")).destroy_grace == 2 * H


# ---- decide(): every role x every action x tagged/untagged key -----------------------------

SUBJECTS = [Principal(f"{r.value}-1", r) for r in Role]


@pytest.mark.parametrize("principal", SUBJECTS, ids=lambda p: p.role.value)
@pytest.mark.parametrize("action", list(Action), ids=str)
@pytest.mark.parametrize("tags", [(), ("pci",), ("prod",), ("pci", "prod")], ids=str)
def test_decide_exhaustively(principal: Principal, action: Action, tags: tuple[str, ...]) -> None:
    k = key(*tags)
    decision = decide(principal, action, k, POLICY, lambda: NOW)
    rules = POLICY.rules_for(k)
    if principal.role not in PERMISSIONS[action]:
        assert decision.verdict is Verdict.DENY and principal.role.value in decision.reason
    elif action in rules.approval_actions and rules.approvals_required:
        assert action in APPROVABLE
        assert decision.verdict is Verdict.APPROVAL
        assert decision.required == rules.approvals_required
        assert decision.expires_at == NOW + rules.approval_ttl
    else:
        assert decision.verdict is Verdict.ALLOW and decision.required == 0


@pytest.mark.parametrize("principal,action,tags,verdict,required", [
    (Principal("a", Role.ADMINISTRATOR), Action.KEY_DESTROY, ("pci",), Verdict.APPROVAL, 2),
    (Principal("a", Role.ADMINISTRATOR), Action.KEY_DESTROY, ("prod",), Verdict.APPROVAL, 1),
    (Principal("a", Role.ADMINISTRATOR), Action.KEY_DESTROY, ("short",), Verdict.ALLOW, 0),
    (Principal("a", Role.ADMINISTRATOR), Action.KEY_DESTROY, (), Verdict.ALLOW, 0),
    (Principal("o", Role.OPERATOR), Action.KEY_ROLLBACK, ("pci",), Verdict.APPROVAL, 2),
    (Principal("o", Role.OPERATOR), Action.KEY_ROLLBACK, ("prod",), Verdict.ALLOW, 0),
    (Principal("o", Role.OPERATOR), Action.KEY_REVOKE, ("pci", "prod"), Verdict.APPROVAL, 2),
    (Principal("o", Role.OPERATOR), Action.KEY_DESTROY, ("pci",), Verdict.DENY, 0),
    (Principal("s", Role.SERVICE), Action.UNWRAP, ("pci",), Verdict.APPROVAL, 2),
    (Principal("s", Role.SERVICE), Action.WRAP, ("pci",), Verdict.ALLOW, 0),
    (Principal("s", Role.SERVICE), Action.KEY_ROTATE, ("pci",), Verdict.DENY, 0),
    (Principal("u", Role.AUDITOR), Action.KEY_READ, ("pci",), Verdict.ALLOW, 0),
    (Principal("s", Role.SERVICE, tags=frozenset({"dev"})), Action.UNWRAP, ("pci",),
     Verdict.DENY, 0),
    (Principal("s", Role.SERVICE, tags=frozenset({"pci"})), Action.UNWRAP, ("pci",),
     Verdict.APPROVAL, 2),
    (None, Action.KEY_READ, (), Verdict.DENY, 0),
])
def test_decide_cases(principal: Principal | None, action: Action, tags: tuple[str, ...],
                      verdict: Verdict, required: int) -> None:
    decision = decide(principal, action, key(*tags), POLICY, lambda: NOW)
    assert (decision.verdict, decision.required) == (verdict, required)
    assert bool(decision.reason) == (verdict is not Verdict.ALLOW)


@pytest.mark.parametrize("principal", [*SUBJECTS, None], ids=str)
@pytest.mark.parametrize("action", list(Action), ids=str)
def test_a_denial_reads_exactly_as_the_role_table_says(principal: Principal | None,
                                                        action: Action) -> None:
    """One decision: decide() refuses with permissions.refusal's words, never its own."""
    k = key("pci")
    decision = decide(principal, action, k, POLICY, lambda: NOW)
    reason = refusal(principal, action, k)
    assert (decision.verdict is Verdict.DENY) == (reason is not None)
    assert decision.reason == reason or decision.verdict is not Verdict.DENY


def test_an_allowed_call_reads_no_clock() -> None:
    def clock() -> datetime:
        raise AssertionError("the allow path must not read the clock")
    decision = decide(Principal("s", Role.SERVICE), Action.ENCRYPT, key(), POLICY, clock)
    assert decision is ALLOWED


# ---- end of life: purge_after_days and max_key_age_days ---------------------------------------

def test_end_of_life_settings_become_rules() -> None:
    rules = Rules.from_tag("t", TagPolicy(purge_after_days=30, max_key_age_days=730))
    assert rules.purge_after == 30 * D and rules.max_age == 730 * D
    unset = Rules.from_tag("t", TagPolicy())
    assert unset.purge_after is None and unset.max_age is None


def test_end_of_life_merge_takes_the_shortest_positive() -> None:
    long = Rules.from_tag("a", TagPolicy(purge_after_days=90, max_key_age_days=0))
    short = Rules.from_tag("b", TagPolicy(purge_after_days=7, max_key_age_days=365))
    merged = strictest(BASE, [long, short])
    assert merged.purge_after == 7 * D and merged.max_age == 365 * D
    assert strictest(BASE, [long]).max_age is None


def test_end_of_life_tags_are_scheduled() -> None:
    policy = Policy.from_config({"purge": TagPolicy(purge_after_days=1),
                                 "age": TagPolicy(max_key_age_days=1), "none": TagPolicy()})
    assert policy.scheduled_tags == ("age", "purge")


@pytest.mark.parametrize("name", ["destroy-version", "destroy_version", "key.destroy_version"])
def test_destroy_version_is_approvable_by_name(name: str) -> None:
    assert parse_action(name) is Action.KEY_DESTROY_VERSION


def test_a_quorum_puts_version_destruction_under_dual_control() -> None:
    policy = Policy.from_config({"pci": TagPolicy(approvals_required=2)})
    admin = Principal("a", Role.ADMINISTRATOR)
    verdict = decide(admin, Action.KEY_DESTROY_VERSION, key("pci"), policy, lambda: NOW)
    assert (verdict.verdict, verdict.required) == (Verdict.APPROVAL, 2)
    assert decide(admin, Action.KEY_DESTROY_VERSION, key(), policy, lambda: NOW) is ALLOWED
    operator = Principal("o", Role.OPERATOR)
    assert decide(operator, Action.KEY_DESTROY_VERSION, key(), policy,
                  lambda: NOW).verdict is Verdict.DENY


def test_negative_end_of_life_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[policy.tags.x]\npurge_after_days = -1\n")
    with pytest.raises(ConfigError, match=r"policy.tags.x"):
        load_config(str(path), env={})
