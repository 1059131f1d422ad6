"""`ferrohsm {encrypt,decrypt,sign,verify,wrap,unwrap} KEY`: bytes in, bytes out; and
`ferrohsm data-key KEY`, a data key for envelope encryption (JSON out).

Input comes from ``--in FILE`` or stdin, output goes to ``--out FILE`` or stdout. Ciphertexts and
wrapped keys are written as their ``fhsm:v<N>:…`` text (one line), signatures as raw DER,
plaintext and key material as the raw bytes. ``--json`` prints the API's answer instead (binary
values in base64). ``verify`` exits 0 for a valid signature and 1 for an invalid one, so shell
scripts can ``if ferrohsm verify …``.
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from . import output
from .settings import Settings, UsageError, approval_flag, command
from .streams import read_input, read_text_input, write_output

IN_OUT = "--in FILE (default stdin) and --out FILE (default stdout)"

OPS: dict[str, tuple[str, str, str]] = {
    "encrypt": ("encrypt data with an aes-256-gcm encrypt key",
                ("Encrypt the input with KEY (AES-256-GCM, fresh nonce); writes the fhsm:v… "
                 "ciphertext text. --aad binds associated data that decrypt must repeat."),
                "ferrohsm encrypt payments --in card.json --out card.enc --aad order-17"),
    "decrypt": ("decrypt an fhsm:v… ciphertext",
                ("Decrypt an fhsm:v… ciphertext (read as text) with KEY; writes the plaintext "
                 "bytes (an --out file is created 0600)."),
                "ferrohsm decrypt payments --in card.enc --out card.json --aad order-17"),
    "sign": ("sign a message (or --digest) with a sign key; writes DER",
             ("Sign the input with KEY and write the DER signature (ECDSA, or RSA-PSS by "
              "default). With --digest the input is a precomputed hash of the matching length."),
             "ferrohsm sign release-signing --in app.tar.gz --out app.sig --correlation-id b42"),
    "verify": ("verify a DER signature; exit 0 valid, 1 invalid",
               ("Verify the DER signature in --signature FILE over the input with KEY. "
                "Prints valid or invalid; exits 0 when valid and 1 when not."),
               "ferrohsm verify release-signing --in app.tar.gz --signature app.sig"),
    "wrap": ("wrap key material with an aes-256-gcm wrap key",
             "Wrap the key material in the input (RFC 5649) with KEY; writes the fhsm:v… text.",
             "ferrohsm wrap kek --in data-key.bin --out data-key.wrapped"),
    "unwrap": ("unwrap an fhsm:v… wrapped key",
               ("Unwrap an fhsm:v… wrapped key (read as text) with KEY; writes the raw key "
                "material (an --out file is created 0600; never to a terminal)."),
               "ferrohsm unwrap kek --in data-key.wrapped --out data-key.bin"),
}


def add_parsers(sub: Any) -> None:
    for name, (short, long, example) in OPS.items():
        p = command(sub, name, HANDLERS[name], help=short, description=f"{long} Uses {IN_OUT}.",
                    epilog=f"example:\n  {example}")
        p.add_argument("key", metavar="KEY", help="key id or name")
        p.add_argument("--in", dest="input", metavar="FILE", help="input file ('-' or absent: stdin)")
        p.add_argument("--out", metavar="FILE", help="output file ('-' or absent: stdout)")
        if name in ("encrypt", "decrypt"):
            p.add_argument("--aad", metavar="TEXT",
                           help="associated data (UTF-8); decrypt must give the same")
        if name in ("sign", "verify"):
            p.add_argument("--digest", action="store_true",
                           help="the input is a precomputed digest, not the message")
            p.add_argument("--algorithm", metavar="SCHEME",
                           help="signature scheme: ecdsa-sha256, ecdsa-sha384, rsa-pss-sha256 "
                           "(RSA default), rsa-pkcs1v15-sha256")
        if name == "verify":
            p.add_argument("--signature", required=True, metavar="FILE",
                           help="the DER signature to check")
            p.add_argument("--key-version", type=int, metavar="N",
                           help="check against version N (default: the primary version)")
        approval_flag(p)
    add_data_key_parser(sub)


def add_data_key_parser(sub: Any) -> None:
    p = command(sub, "data-key", data_key, help="make a data key for envelope encryption",
                description=("Ask the server for a fresh data key encrypted under KEY (an "
                             "aes-256-gcm encrypt key). Writes the API's JSON answer: "
                             "plaintext (base64; use it to encrypt locally, then forget it), "
                             "ciphertext (fhsm:v…: keep it beside the data; `ferrohsm decrypt "
                             "KEY` gives the data key back), key_id and key_version. An --out "
                             "file holding the plaintext is created 0600; a plaintext key is "
                             "never written to a terminal."),
                epilog=("examples:\n  ferrohsm data-key payments --out dek.json\n"
                        "  ferrohsm data-key payments --bits 128 --no-plaintext"))
    p.add_argument("key", metavar="KEY", help="key id or name")
    p.add_argument("--bits", type=int, default=256, choices=(128, 192, 256),
                   help="data key size (default 256)")
    p.add_argument("--no-plaintext", action="store_true",
                   help="answer only the ciphertext (for a service that decrypts it later)")
    p.add_argument("--aad", metavar="TEXT",
                   help="associated data (UTF-8) bound to the ciphertext; decrypt must give it")
    p.add_argument("--out", metavar="FILE", help="output file ('-' or absent: stdout)")
    approval_flag(p)


def _aad(args: argparse.Namespace) -> bytes | None:
    return args.aad.encode("utf-8") if getattr(args, "aad", None) else None


def _opts(settings: Settings) -> dict[str, Any]:
    return {"approval_id": settings.approval_id}


def _emit_json(args: argparse.Namespace, value: dict[str, Any], secret: bool = False) -> int:
    write_output(args.out, output.json_text(value).encode(), secret=secret)
    return 0


def encrypt(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    result = client.encrypt(args.key, read_input(args.input), _aad(args), **_opts(settings))
    if settings.json:
        return _emit_json(args, result)
    write_output(args.out, (result["ciphertext"] + "\n").encode("ascii"))
    return 0


def decrypt(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    ciphertext = read_text_input(args.input, "ciphertext")
    result = client.decrypt(args.key, ciphertext, _aad(args), **_opts(settings))
    if settings.json:
        return _emit_json(args, {**result, "plaintext": _b64(result["plaintext"])}, True)
    write_output(args.out, result["plaintext"], secret=True)
    return 0


def sign(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    data = read_input(args.input)
    message, digest = (None, data) if args.digest else (data, None)
    result = client.sign(args.key, message, digest=digest, algorithm=args.algorithm,
                         **_opts(settings))
    if settings.json:
        return _emit_json(args, {**result, "signature": _b64(result["signature"])})
    write_output(args.out, result["signature"], binary=True)
    return 0


def verify(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    signature = read_input(args.signature)
    data = read_input(args.input)
    message, digest = (None, data) if args.digest else (data, None)
    valid = client.verify(args.key, signature, message, digest=digest, algorithm=args.algorithm,
                          key_version=args.key_version, **_opts(settings))
    if settings.json:
        _emit_json(args, {"valid": valid})
    else:
        text = "valid: the signature matches" if valid else \
            "invalid: the signature does not match this key and input"
        write_output(args.out, (text + "\n").encode())
    return 0 if valid else 1


def wrap(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    result = client.wrap(args.key, read_input(args.input), **_opts(settings))
    if settings.json:
        return _emit_json(args, result)
    write_output(args.out, (result["wrapped"] + "\n").encode("ascii"))
    return 0


def unwrap(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    wrapped = read_text_input(args.input, "wrapped key")
    result = client.unwrap(args.key, wrapped, **_opts(settings))
    if settings.json:
        return _emit_json(args, {**result, "key_material": _b64(result["key_material"])},
                          True)
    write_output(args.out, result["key_material"], secret=True, binary=True)
    return 0


def data_key(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    result = client.data_key(args.key, args.bits, include_plaintext=not args.no_plaintext,
                             aad=_aad(args), **_opts(settings))
    secret = "plaintext" in result
    if secret and args.out in (None, "-") and sys.stdout.isatty():
        raise UsageError("refusing to write a plaintext data key to a terminal: use --out "
                         "FILE, redirect stdout, or --no-plaintext")
    value = {**result, "plaintext": _b64(result["plaintext"])} if secret else result
    write_output(args.out, output.json_text(value).encode(), secret=secret)
    return 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


HANDLERS = {"encrypt": encrypt, "decrypt": decrypt, "sign": sign, "verify": verify,
            "wrap": wrap, "unwrap": unwrap}
