"""Shares for custodians: the text form encrypted to a custodian's public key (crypto/custodian.py
has the format), and opened again with the private key by ``ferrohsm unseal``."""

from __future__ import annotations

from ..crypto.custodian import decrypt_share, encrypt_share, recipient_kind

__all__ = ["decrypt_share", "encrypt_share", "recipient_kind"]
