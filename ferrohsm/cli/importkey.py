"""`ferrohsm keys import [KEY] --material FILE`: bring a key made elsewhere (BYOK).

The material is read and wrapped HERE, with the public key of a fresh import job, so it leaves
this machine only wrapped (crypto/importwrap.py, imported when the command runs: building the
command tree stays standard-library only). Without KEY a new key is made; with KEY the material
becomes a new primary version of that key.

Files: exactly 32 bytes is a raw AES-256 key (``openssl rand 32 > aes.key``); anything else must
be an unencrypted RSA or EC private key, PEM or DER, PKCS#8 or the traditional PKCS#1 / SEC1
forms (``openssl genpkey`` output as it is).

Dual control: when the server parks the import for approval, the wrapped request (the job id and
the wrapped bytes, nothing secret) is saved beside the material as ``FILE.import-request.json``,
so the same command with ``--approval-id`` sends exactly the request the approvers approved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .settings import Settings, UsageError, approval_flag, command
from .streams import read_input

WRAPPINGS = ("RSA_OAEP_SHA256", "RSA_AES_KEY_WRAP_SHA256")
SAVED_SUFFIX = ".import-request.json"
MAX_KEY_FILE = 64 * 1024
NEW_KEY_ONLY = ("algorithm", "usage", "name", "description")


def add_parser(ksub: Any, algorithms: tuple[str, ...], usages: tuple[str, ...]) -> None:
    p = command(ksub, "import", run, help="import a key made elsewhere (BYOK), wrapped locally",
                description="Import key material from FILE: a new key, or with KEY a new "
                "primary version of that key. The material is wrapped on this machine with "
                "the RSA-3072 public key of a fresh import job (RSA-OAEP-SHA256 for AES keys, "
                "RSA-AES key wrap for private keys) and leaves it only wrapped. FILE: 32 raw "
                "bytes (an AES-256 key) or an unencrypted RSA/EC private key, PEM or DER. The "
                "algorithm is read from the file unless --algorithm says it.",
                epilog="examples:\n"
                "  openssl rand 32 > payments.key\n"
                "  ferrohsm keys import --material payments.key --name payments --tag pci\n"
                "  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sign.pem\n"
                "  ferrohsm keys import --material sign.pem --name release-signing\n"
                "  ferrohsm keys import payments --material payments-2027.key   # a new version")
    p.add_argument("key", metavar="KEY", nargs="?",
                   help="an existing key (id or name) to give a new version; omit for a new key")
    p.add_argument("--material", required=True, metavar="FILE", help="the key file")
    p.add_argument("--algorithm", choices=algorithms,
                   help="a new key's algorithm (default: read from FILE)")
    p.add_argument("--usage", choices=usages,
                   help="a new key's usage (default: encrypt for AES, sign otherwise)")
    p.add_argument("--name", help="a new key's unique name")
    p.add_argument("--description", help="a new key's description")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", dest="tags",
                   help="a new key's policy tag (repeatable)")
    p.add_argument("--wrapping-algorithm", choices=WRAPPINGS,
                   help="how to wrap (default: RSA_OAEP_SHA256 for AES, RSA_AES_KEY_WRAP_SHA256 "
                   "otherwise)")
    approval_flag(p)


def run(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    from ..client import ApprovalRequired
    from . import keys as key_cmd  # the key printer: imported here, keys.py imports this module
    if args.key is not None and (args.tags or any(getattr(args, f) for f in NEW_KEY_ONLY)):
        raise UsageError("--algorithm, --usage, --name, --description and --tag describe a new "
                         "key; with KEY the new version takes KEY's algorithm")
    saved = args.material + SAVED_SUFFIX
    if settings.approval_id:
        request = _load_saved(saved, args.key)
        _same_as_saved(args, request["body"], saved)
    else:
        request = _wrap_new(args, client)
    try:
        key = _send(client, request, settings.approval_id)
    except ApprovalRequired:
        if not settings.approval_id:
            _save(saved, request)
        raise
    if settings.approval_id and os.path.exists(saved):
        os.remove(saved)
    what = f"version {key['primary_version']} of" if request["key"] else "key"
    return key_cmd._show_key(key, settings, f"Imported {what} {key_cmd._label(key)} "
                            f"({key['id']}), origin {key.get('origin')}.")


def _read_key_file(path: str) -> tuple[str, bytes]:
    from ..crypto.importwrap import read_material
    data = read_input(path)
    if len(data) > MAX_KEY_FILE:
        raise UsageError(f"{path} is too large to be a key file")
    try:
        return read_material(data)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _wrap_new(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """A fresh import job, and the material wrapped for it: the request to send."""
    from ..crypto.importwrap import wrap_for_import
    found, material = _read_key_file(args.material)
    wrapping = args.wrapping_algorithm or (
        "RSA_OAEP_SHA256" if found == "aes-256-gcm" else "RSA_AES_KEY_WRAP_SHA256")
    job = client.create_import_job()
    try:
        wrapped = wrap_for_import(job["public_key"], wrapping, material)
    except ValueError as exc:  # e.g. a private key too long for one RSA-OAEP block
        raise UsageError(f"cannot wrap {args.material} with {wrapping}: {exc}") from None
    body: dict[str, Any] = {"import_job_id": job["import_job_id"], "wrapping_algorithm": wrapping,
                            "wrapped_material": wrapped.hex()}
    if args.key is None:
        algorithm = args.algorithm or found
        body.update(algorithm=algorithm,
                    usage=args.usage or ("encrypt" if algorithm.startswith("aes") else "sign"),
                    name=args.name, description=args.description, tags=list(args.tags))
    return {"key": args.key, "body": body}


def _send(client: Any, request: dict[str, Any], approval_id: str | None) -> dict[str, Any]:
    body = dict(request["body"])
    job, wrapping = body.pop("import_job_id"), body.pop("wrapping_algorithm")
    wrapped = bytes.fromhex(body.pop("wrapped_material"))
    if request["key"] is not None:
        return client.import_key_version(request["key"], job, wrapping, wrapped,  # type: ignore[no-any-return]
                                         approval_id=approval_id)
    return client.import_key(job, wrapping, wrapped, approval_id=approval_id,  # type: ignore[no-any-return]
                             **body)


def _save(path: str, request: dict[str, Any]) -> None:
    """The wrapped request (no secret in it), for the repeat with --approval-id."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(request, fh)
    except OSError as exc:
        raise UsageError(f"the import is parked for approval, but the wrapped request could not "
                         f"be saved to {path}: {exc.strerror}") from None
    print(f"ferrohsm: the wrapped request is saved in {path}: the repeat with --approval-id "
          "sends it", file=sys.stderr)


def _same_as_saved(args: argparse.Namespace, body: dict[str, Any], path: str) -> None:
    """The repeat sends what was parked (the approval binds it): a flag that says otherwise
    is refused, not dropped without a word (an outside tester's --name was)."""
    given = {"algorithm": args.algorithm, "usage": args.usage, "name": args.name,
             "description": args.description, "tags": list(args.tags) or None}
    for field, value in given.items():
        if value and value != body.get(field):
            flag = "--tag" if field == "tags" else f"--{field}"
            raise UsageError(f"{flag} differs from the import parked for approval (saved in "
                             f"{path}): repeat the command as it was parked, or leave it out")


def _load_saved(path: str, key: str | None) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            request = json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"--approval-id repeats a parked import, but {path} (saved when it was "
                         "parked) is not there") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the saved request {path}: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
        raise UsageError(f"{path} is not a saved import request")
    if request.get("key") != key:
        saved_for = f"key {request.get('key')}" if request.get("key") else "a new key"
        raise UsageError(f"{path} was saved for {saved_for}; repeat the same command")
    return request
