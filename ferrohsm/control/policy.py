"""Tag policies and the policy decision: a pure function, tested as a table.

Theory of operation
-------------------
``[policy.tags.<tag>]`` tables (``TagPolicy``, as the configuration file spells them) become ``Rules``. A key carrying several
tags gets, for every setting, the strictest value any of its tags asks for (``strictest``):

==========================  =====================================================================
setting                     strictest means
==========================  =====================================================================
approvals_required          the largest quorum
approval_actions            the union (an action listed by any tag needs the quorum)
approval_ttl_seconds        the shortest window, among tags that require approvals
rotation_days               the shortest positive period (0 = no automatic rotation)
archive_after_days          the shortest positive age (0 = never archive automatically)
destroy_grace_hours         the longest tag grace (a tag without one: ``[crypto]``'s default)
purge_after_days            the shortest positive age of an archived version (0 = never purge)
max_key_age_days            the shortest positive key age (0 = keys live until destroyed by hand)
==========================  =====================================================================

A tag with a quorum always puts ``destroy`` and ``destroy-version`` under dual control, listed or
not: whether a purge needs approvals must not depend on someone remembering to list it. And
``rotate`` brings ``import`` with it: importing a version is a rotation to material someone
chose (and may keep), so a quorum on rotate that one person could go around by importing would
promise what it does not hold.

``decide(principal, action, key, policy, clock)`` answers ALLOW, DENY (with the reason) or
APPROVAL (with the quorum and the moment the approval window closes). It is THE authorization
decision of an operation on a key: the service makes it once per call and the dual-control gate
acts on its answer instead of checking again. It reads no file or socket, and the clock only for
an approval window (so the allow path of every crypto call reads none): everything it depends on
is an argument, so the tests walk it exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from ..auth.permissions import Action, refusal
from ..domain.errors import ConfigError
from ..domain.model import Key, Principal
from ..domain.shown import shown

DEFAULT_TTL = timedelta(hours=1)
DEFAULT_GRACE = timedelta(hours=24)

# docs/api.md and config use short names; audit and authz use Action values. Both spellings
# are accepted in approval_actions ("unwrap" and "crypto.unwrap").
SHORT_NAMES: dict[str, Action] = {
    "update": Action.KEY_UPDATE, "rotate": Action.KEY_ROTATE, "rollback": Action.KEY_ROLLBACK,
    "revoke": Action.KEY_REVOKE, "destroy": Action.KEY_DESTROY,
    "cancel-destroy": Action.KEY_CANCEL_DESTROY, "cancel_destroy": Action.KEY_CANCEL_DESTROY,
    "public-key": Action.KEY_PUBLIC, "public_key": Action.KEY_PUBLIC,
    "encrypt": Action.ENCRYPT, "decrypt": Action.DECRYPT, "sign": Action.SIGN,
    "verify": Action.VERIFY, "wrap": Action.WRAP, "unwrap": Action.UNWRAP,
    "import": Action.KEY_IMPORT,
    "destroy-version": Action.KEY_DESTROY_VERSION, "destroy_version": Action.KEY_DESTROY_VERSION,
}
# Only actions on one existing key can be parked for approval (create/list have no key to bind).
APPROVABLE = frozenset(SHORT_NAMES.values())
# System actions that [approvals] can put under dual control (approvals target "system").
SYSTEM_APPROVABLE = frozenset({Action.SYSTEM_REKEY})


def parse_action(name: str) -> Action:
    """An approvable Action from its short or full name; ValueError otherwise."""
    action = SHORT_NAMES.get(name)
    if action is None:
        try:
            action = Action(name)
        except ValueError:
            raise ValueError(f"unknown action {shown(name)}") from None
    if action not in APPROVABLE:
        raise ValueError(f"{shown(name)} is not an operation on a key")
    return action


@dataclass(frozen=True)
class TagPolicy:
    """One ``[policy.tags.<tag>]`` table as written in the configuration (days, hours, counts)."""

    approvals_required: int = 0
    approval_actions: tuple[str, ...] = ()
    approval_ttl_seconds: int = 3600
    rotation_days: float = 0.0
    archive_after_days: float = 0.0
    destroy_grace_hours: float | None = None  # None: [crypto].destroy_grace_hours
    purge_after_days: float = 0.0   # archived versions older than this are destroyed
    max_key_age_days: float = 0.0   # keys older than this are scheduled for destruction


@dataclass(frozen=True, slots=True)
class Rules:
    """Effective settings for one key (one tag, or the strictest merge of several)."""

    approvals_required: int = 0
    approval_actions: frozenset[Action] = frozenset()
    approval_ttl: timedelta = DEFAULT_TTL
    rotation: timedelta | None = None
    archive_after: timedelta | None = None
    destroy_grace: timedelta = DEFAULT_GRACE
    purge_after: timedelta | None = None
    max_age: timedelta | None = None

    def needs_approval(self, action: Action) -> bool:
        return self.approvals_required > 0 and action in self.approval_actions

    @classmethod
    def from_tag(cls, name: str, tag: TagPolicy, default_grace: timedelta = DEFAULT_GRACE
                 ) -> Rules:
        """ConfigError naming the setting when an action name is unknown. A tag that does not
        set ``destroy_grace_hours`` has ``default_grace`` (``[crypto].destroy_grace_hours``)."""
        try:
            actions = frozenset(parse_action(a) for a in tag.approval_actions)
        except ValueError as exc:
            raise ConfigError(f"[policy.tags.{name}].approval_actions: {exc}") from None
        if tag.approvals_required > 0:
            actions |= {Action.KEY_DESTROY, Action.KEY_DESTROY_VERSION}
        if Action.KEY_ROTATE in actions:
            actions |= {Action.KEY_IMPORT}  # a new primary version either way (module doc)
        return cls(approvals_required=tag.approvals_required, approval_actions=actions,
                   approval_ttl=timedelta(seconds=tag.approval_ttl_seconds),
                   rotation=_period(days=tag.rotation_days),
                   archive_after=_period(days=tag.archive_after_days),
                   destroy_grace=(default_grace if tag.destroy_grace_hours is None
                                  else timedelta(hours=tag.destroy_grace_hours)),
                   purge_after=_period(days=tag.purge_after_days),
                   max_age=_period(days=tag.max_key_age_days))


def _period(days: float) -> timedelta | None:
    return timedelta(days=days) if days > 0 else None


def _shortest(values: Iterable[timedelta | None]) -> timedelta | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def strictest(base: Rules, tags: Iterable[Rules]) -> Rules:
    """Merge ``base`` (the untagged defaults) with every tag's rules, strictest value each;
    the destroy grace is the longest of the tags' own (each tag's is [crypto]'s default unless
    it sets one): a tag may shorten the default grace for its keys, as configured, where taking
    the default into the maximum would ignore it silently."""
    given = list(tags)
    every = [base, *given]
    quorum_tags = [r for r in every if r.approvals_required > 0]
    return Rules(
        approvals_required=max(r.approvals_required for r in every),
        approval_actions=frozenset().union(*(r.approval_actions for r in every)),
        approval_ttl=min((r.approval_ttl for r in quorum_tags), default=base.approval_ttl),
        rotation=_shortest(r.rotation for r in every),
        archive_after=_shortest(r.archive_after for r in every),
        destroy_grace=max(r.destroy_grace for r in given or every),
        purge_after=_shortest(r.purge_after for r in every),
        max_age=_shortest(r.max_age for r in every))


@dataclass(frozen=True)
class Policy:
    """Every configured tag's rules plus the defaults an untagged key gets."""

    tags: Mapping[str, Rules] = field(default_factory=dict)
    default: Rules = Rules()

    @classmethod
    def from_config(cls, tags: Mapping[str, TagPolicy],
                    default_grace_hours: float = 24.0) -> Policy:
        default = Rules(destroy_grace=timedelta(hours=default_grace_hours))
        return cls({name: Rules.from_tag(name, tag, default.destroy_grace)
                    for name, tag in tags.items()}, default)

    def rules_for(self, key: Key) -> Rules:
        known = [self.tags[t] for t in key.tags if t in self.tags]
        return strictest(self.default, known) if known else self.default

    @property
    def scheduled_tags(self) -> tuple[str, ...]:
        """Tags whose keys the scheduler must look at: rotation, archival, purge, maximum age."""
        return tuple(sorted(n for n, r in self.tags.items()
                            if r.rotation or r.archive_after or r.purge_after or r.max_age))


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL = "approval_required"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    required: int = 0
    expires_at: datetime | None = None


ALLOWED = Decision(Verdict.ALLOW)  # one instance: an allowed call allocates no Decision


def decide(principal: Principal | None, action: Action, key: Key, policy: Policy,
           clock: Callable[[], datetime]) -> Decision:
    """Role table, then tag scoping (both ``permissions.refusal``), then the key's tag rules:
    the first that refuses wins."""
    reason = refusal(principal, action, key)
    if reason is not None:
        return Decision(Verdict.DENY, reason)
    rules = policy.rules_for(key)
    if rules.needs_approval(action):
        return Decision(Verdict.APPROVAL, f"{action.value} on this key needs "
                        f"{rules.approvals_required} approval(s)", rules.approvals_required,
                        clock() + rules.approval_ttl)
    return ALLOWED
