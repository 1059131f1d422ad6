"""The message an approver signs to vote, and how a registered key is named. Pure.

Why a signed vote
-----------------
A bearer token says who the server believes is calling; it proves nothing to an auditor who does
not trust the server (a compromised server can write any vote into its own log). With
``[approvals].require_vote_signature`` each vote also carries a signature, made with the
approver's own private key (never on the server) over ``vote_message``; the server checks it
against the approver's registered public key before the vote counts and records the signature,
the key's fingerprint and the signed message in the audit record, so anyone holding the approver
keys file can check every vote offline (``ferrohsm audit verify-votes``).

The signed message (ASCII, four lines, each ending in a newline)::

    ferrohsm-vote-v1
    approval:<approval id>
    request:<the approval's request_hash, 64 lowercase hex>
    decision:<approve|deny>

The approval id stops a signature being replayed on another approval of the same request (each
approval has its own salt, hence its own request hash, but naming the id says so plainly); the
decision stops an "approve" being replayed as a "deny" and the reverse; the request hash binds
the vote to the exact request (action, key and arguments) the approvers were shown.

A public key is named by its fingerprint: ``sha256:`` and the hex SHA-256 of its DER
SubjectPublicKeyInfo (what ``openssl pkey -pubin -outform DER | sha256sum`` prints).
"""

from __future__ import annotations

import hashlib
import re

MESSAGE_TAG = "ferrohsm-vote-v1"
DECISIONS = ("approve", "deny")
APPROVAL_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
REQUEST_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_SIGNATURE_B64 = 200  # Ed25519: 88 characters; ECDSA P-256 (DER): at most 96


def vote_message(approval_id: str, request_hash: str, approve: bool) -> bytes:
    """The exact bytes a vote signature covers (module docstring)."""
    if not APPROVAL_ID_RE.match(approval_id) or not REQUEST_HASH_RE.match(request_hash):
        raise ValueError("an approval id and a 64-hex request hash are needed to sign a vote")
    decision = DECISIONS[0] if approve else DECISIONS[1]
    return (f"{MESSAGE_TAG}\napproval:{approval_id}\nrequest:{request_hash}\n"
            f"decision:{decision}\n").encode("ascii")


def fingerprint(spki_der: bytes) -> str:
    """``sha256:<hex>`` of a DER SubjectPublicKeyInfo."""
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()
