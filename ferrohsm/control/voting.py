"""Who may vote, and with what proof: ``[approvals].require_asymmetric_tokens`` and
``require_vote_signature`` (README, "Approvers who cannot be forged").

* An HS256 token proves only that its maker holds the shared secret, and whoever holds it can
  mint any number of "distinct" approvers. ``require_asymmetric_tokens`` lets only tokens
  verified by an RS/PS/ES key (an identity provider's keyset) vote, approve or deny.
* A server that is itself compromised could write votes into its own log. With
  ``require_vote_signature`` every vote carries the approver's signature over
  ``domain.votes.vote_message`` made with a private key the server never sees, checked here
  against the key registered for the voter's subject before the vote counts; the signature, the
  key's fingerprint and the signed message go into the vote's audit records for offline checking.

A signature sent when none is required is checked all the same (and recorded): a vote never
carries an unverified signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..domain import approval as apv
from ..domain.errors import BadRequest, Forbidden
from ..domain.model import Principal
from ..domain.votes import vote_message

ASYMMETRIC_ALGS = frozenset({"RS256", "PS256", "ES256", "ES384"})


class VerifyingKey(Protocol):
    fingerprint: str

    def verify(self, signature_b64: str, message: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class SignedVote:
    signature: str
    key_fingerprint: str
    message: bytes

    def details(self) -> dict[str, str]:
        """What the vote's audit records carry so an auditor can check it offline."""
        return {"vote_signature": self.signature, "vote_key_fingerprint": self.key_fingerprint,
                "vote_message": self.message.decode("ascii")}


@dataclass(frozen=True)
class VoteRules:
    require_asymmetric_tokens: bool = False
    require_signature: bool = False
    keys: Callable[[], Mapping[str, VerifyingKey]] | None = None  # the approver keys in force

    def check_token(self, voter: Principal) -> None:
        """Forbidden when only identity-provider tokens may vote and this one is not."""
        if self.require_asymmetric_tokens and voter.signed_with not in ASYMMETRIC_ALGS:
            raise Forbidden("approval votes need a token signed by an identity provider "
                            "(RS256/PS256/ES256/ES384): [approvals].require_asymmetric_tokens is "
                            f"on and this token is {voter.signed_with or 'not'} signed")

    def check_signature(self, voter: Principal, approval: apv.Approval, approve: bool,
                        signature: str | None) -> SignedVote | None:
        """The verified signed vote, None for an unsigned vote where none is required; raises
        Forbidden (missing, unregistered or wrong signature) or BadRequest (malformed)."""
        if not signature:
            if self.require_signature:
                raise Forbidden("this vote must be signed ([approvals].require_vote_signature): "
                                "sign it with your registered key, e.g. `ferrohsm approvals "
                                f"{'approve' if approve else 'deny'} {approval.id} "
                                "--signing-key FILE`")
            return None
        if self.keys is None:
            raise BadRequest("vote signatures are not set up on this server "
                             "([approvals].approver_keys_file)")
        key = self.keys().get(voter.subject)
        if key is None:
            raise Forbidden(f"no public key is registered for {voter.subject} in "
                            "[approvals].approver_keys_file")
        message = vote_message(approval.id, approval.request_hash, approve)
        try:
            valid = key.verify(signature, message)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not valid:
            raise Forbidden(f"the vote signature does not verify under the key registered for "
                            f"{voter.subject} ({key.fingerprint}) over this approval's request "
                            "hash and decision")
        return SignedVote(signature, key.fingerprint, message)
