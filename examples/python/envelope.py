#!/usr/bin/env python3
"""Envelope encryption with a FerroHSM data key: big files encrypted locally, one small call.

    envelope.py encrypt --key KEY FILE        # writes FILE.enc and FILE.key beside FILE
    envelope.py decrypt --key KEY FILE.enc    # writes FILE back (or --out), 0600

encrypt asks FerroHSM for a fresh 256-bit data key (POST /v1/keys/KEY/data-key): the answer holds
the data key in plaintext and the same key encrypted under KEY (an ordinary fhsm:v… ciphertext).
The file is encrypted HERE with AES-256-GCM under the data key, streamed in 1 MiB segments (each
its own nonce: a random prefix and the segment's number; the wrapped key, the number and a "last
segment" flag bound as associated data, so segments cannot be reordered, dropped or cut off at the
end), so the file never leaves this machine and is never held in memory whole, whatever its size.
The wrapped data key is stored beside it (FILE.key); the plaintext data key is dropped.

decrypt sends only FILE.key to FerroHSM's decrypt (POST /v1/keys/KEY/decrypt): whoever may decrypt
with KEY gets the data key back, and opens FILE.enc locally. Rotating KEY leaves old files
readable (the wrapped key names its version); revoking it stops new files, not old ones.

--context TEXT binds associated data to the wrapped key on the server (decrypt must repeat it),
e.g. a tenant id. Settings come from the environment: FERROHSM_URL, FERROHSM_TOKEN (a
service-role token), FERROHSM_CA_CERT, optionally FERROHSM_CLIENT_CERT / FERROHSM_CLIENT_KEY.
Exit status: 0 done, 1 failed (one line naming the error), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

try:
    from ferrohsm.client import ApiError, Client, ClientError
except ImportError:  # run from a checkout without installing: use the repository's SDK
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ferrohsm.client import ApiError, Client, ClientError

# File format: MAGIC, an 8-byte random nonce prefix, then segments: each SEGMENT bytes of the
# file (the last one shorter, possibly empty) encrypted with AES-256-GCM, its 16-byte tag after it.
MAGIC = b"FHSMENV2"
PREFIX, SEGMENT, TAG = 8, 1 << 20, 16


def segment_aad(wrapped: str, number: int, last: bool) -> bytes:
    return wrapped.encode() + number.to_bytes(8, "big") + (b"\1" if last else b"\0")


def segments(stream: BinaryIO, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """(number, bytes, last) of each segment of ``size`` bytes; at least one, maybe empty."""
    number, current = 0, stream.read(size)
    while True:
        following = stream.read(size) if len(current) == size else b""
        yield number, current, not following
        if not following:
            return
        number, current = number + 1, following


def open_private(path: Path) -> BinaryIO:
    """Create ``path`` 0600 (decrypted data must not become readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def encrypt(args: argparse.Namespace) -> int:
    source = Path(args.file)
    sealed, key_file = Path(f"{source}.enc"), Path(f"{source}.key")
    context = args.context.encode() if args.context else None
    with Client.from_env() as hsm:
        made = hsm.data_key(args.key, 256, aad=context)
    wrapped, aead, prefix = made["ciphertext"], AESGCM(made["plaintext"]), os.urandom(PREFIX)
    del made  # the plaintext data key: only the AESGCM object holds it from here on
    with source.open("rb") as src, sealed.open("wb") as out:
        out.write(MAGIC + prefix)
        for number, chunk, last in segments(src, SEGMENT):
            nonce = prefix + number.to_bytes(4, "big")
            out.write(aead.encrypt(nonce, chunk, segment_aad(wrapped, number, last)))
    key_file.write_text(wrapped + "\n")
    print(f"encrypted {source} -> {sealed}; wrapped data key -> {key_file} "
          f"({args.key} v{wrapped.split(':')[1][1:]})")
    return 0


def decrypt(args: argparse.Namespace) -> int:
    sealed = Path(args.file)
    stem = sealed.with_suffix("") if sealed.suffix == ".enc" else sealed
    key_file = Path(args.key_file or f"{stem}.key")
    out = Path(args.out or stem)
    with sealed.open("rb") as src:
        head = src.read(len(MAGIC) + PREFIX)
        if len(head) < len(MAGIC) + PREFIX or not head.startswith(MAGIC):
            raise ValueError(f"{sealed} is not an envelope written by this script")
        wrapped = key_file.read_text().strip()
        context = args.context.encode() if args.context else None
        with Client.from_env() as hsm:
            aead = AESGCM(hsm.decrypt(args.key, wrapped, context)["plaintext"])
        prefix = head[len(MAGIC):]
        try:
            with open_private(out) as dst:
                for number, chunk, last in segments(src, SEGMENT + TAG):
                    nonce = prefix + number.to_bytes(4, "big")
                    dst.write(aead.decrypt(nonce, chunk, segment_aad(wrapped, number, last)))
        except InvalidTag:
            out.unlink(missing_ok=True)  # no partial plaintext of an altered file stays behind
            raise ValueError(f"{sealed} was altered or cut short, or {key_file} is not its "
                             "key") from None
    print(f"decrypted {sealed} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("encrypt", "decrypt"))
    parser.add_argument("file", metavar="FILE", help="the file to encrypt, or FILE.enc")
    parser.add_argument("--key", required=True, help="the FerroHSM encrypt key (id or name)")
    parser.add_argument("--context", help="associated data bound to the wrapped data key")
    parser.add_argument("--key-file", help="decrypt: the wrapped data key (default FILE.key)")
    parser.add_argument("--out", help="decrypt: where the plaintext goes (default FILE)")
    args = parser.parse_args(argv)
    if not Path(args.file).is_file():
        parser.error(f"no such file: {args.file}")
    try:
        return encrypt(args) if args.command == "encrypt" else decrypt(args)
    except ApiError as exc:  # str(exc): message (code, request id …)
        print(f"envelope: {exc}", file=sys.stderr)
    except (ClientError, ValueError, OSError) as exc:
        print(f"envelope: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
