"""`ferrohsm {encrypt,decrypt,sign,verify,wrap,unwrap} KEY`: bytes in, bytes out; and
`ferrohsm data-key KEY`, a data key for envelope encryption (JSON out).

Input comes from ``--in FILE`` or stdin, output goes to ``--out FILE`` or stdout. Ciphertexts and
wrapped keys are written as their ``fhsm:v<N>:…`` text (one line), signatures as raw DER,
plaintext and key material as the raw bytes. ``--json`` prints the API's answer instead (binary
values in base64). ``verify`` exits 0 for a valid signature and 1 for an invalid one, so shell
scripts can ``if ferrohsm verify …``.

``sign`` and ``verify`` hash the input locally and send the digest (``aws kms sign
--message-type DIGEST``): an artefact of any size is signed in one small request and never leaves
the machine, and the signature is the one the message itself would get (the server signs the
digest with the same scheme), so ``openssl dgst -verify`` checks it against the file. The hash
follows the key's scheme: SHA-384 for ec-p384 (ecdsa-sha384), SHA-256 for everything else.
``--message`` sends the input itself (small inputs only), ``--digest`` a digest computed by the
caller.

Every output is opened before the server is asked (streams.Output): a path that cannot be
written costs nothing on the server, neither an approval nor an audited success whose answer is
lost.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

from . import output
from .errors import CANNOT_WRITE, CliExit
from .settings import Settings, UsageError, approval_flag, command
from .streams import Output, hash_input, names_stdout, read_input, read_text_input

# The hash each signature scheme signs with, and each sign algorithm's default scheme's hash
# (ferrohsm.crypto.algorithms and ops.hash_name; tests/unit/test_cli_digest.py holds them equal).
SCHEME_HASH = {"ecdsa-sha256": "sha256", "ecdsa-sha384": "sha384",
               "rsa-pss-sha256": "sha256", "rsa-pkcs1v15-sha256": "sha256"}
ALGORITHM_HASH = {"rsa-2048": "sha256", "rsa-4096": "sha256", "ec-p256": "sha256",
                  "ec-p384": "sha384"}

IN_OUT = "--in FILE (default stdin) and --out FILE (default stdout)"

DIGEST_SIZE = {"sha256": 32, "sha384": 48}  # bytes of a --digest input, by hash
# The largest signature any key signs: RSA-4096 (512 bytes, raw); ECDSA's DER is at most 104.
MAX_SIGNATURE = 512
SIGNATURE_FILE = 4096  # read of a --signature file: its base64 text, line breaks and all
# The most any server accepts in one request: [server].max_body_bytes can be raised to 64 MiB,
# so only inputs above it are refused here (a server left at its 1 MiB default answers 413).
MAX_BODY = 64 << 20

# What to do about an input too large for one call, per command: one sentence each, used for
# the local refusal and for the server's 413 (main.py).
TOO_LARGE_ADVICE = {
    "encrypt": "encrypt large data locally under a data key instead (envelope encryption: "
               "`ferrohsm data-key KEY`)",
    "decrypt": "a ciphertext this large was not made by `ferrohsm encrypt` (data encrypted "
               "under a data key is decrypted locally, after `ferrohsm decrypt` of the data key)",
    "sign": "drop --message: by default only the input's digest is sent, whatever its size",
    "wrap": "wrap takes key material (a few dozen bytes), not data: use encrypt or a data key",
    "unwrap": "a wrapped key this large was not made by `ferrohsm wrap`",
}
TOO_LARGE_ADVICE["verify"] = TOO_LARGE_ADVICE["sign"]

OPS: dict[str, tuple[str, str, str]] = {
    "encrypt": ("encrypt data with an aes-256-gcm encrypt key",
                ("Encrypt the input with KEY (AES-256-GCM, fresh nonce); writes the fhsm:v… "
                 "ciphertext text. --aad binds associated data that decrypt must repeat."),
                "ferrohsm encrypt payments --in card.json --out card.enc --aad order-17"),
    "decrypt": ("decrypt an fhsm:v… ciphertext",
                ("Decrypt an fhsm:v… ciphertext (read as text) with KEY; writes the plaintext "
                 "bytes (an --out file is created 0600)."),
                "ferrohsm decrypt payments --in card.enc --out card.json --aad order-17"),
    "sign": ("sign an input of any size (hashed locally) with a sign key; writes DER",
             ("Sign the input with KEY and write the DER signature (ECDSA, or RSA-PSS by "
              "default). The input is hashed here (SHA-256, SHA-384 for ec-p384) and only the "
              "digest is sent, so artefacts of any size sign; openssl dgst verifies the "
              "signature against the file. --message sends the input itself (small inputs "
              "only), --digest says the input already is the digest."),
             "ferrohsm sign release-signing --in app.tar.gz --out app.sig --correlation-id b42"),
    "verify": ("verify a DER signature (input hashed locally); exit 0 valid, 1 invalid",
               ("Verify the DER signature in --signature FILE over the input with KEY (hashed "
                "here like sign does). Prints valid or invalid; exits 0 when valid and 1 "
                "when not."),
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
        p = command(sub, name, _inputs_kept(HANDLERS[name]), help=short,
                    description=f"{long} Uses {IN_OUT}.", epilog=f"example:\n  {example}")
        p.add_argument("key", metavar="KEY", help="key id or name")
        p.add_argument("--in", dest="input", metavar="FILE", help="input file ('-' or absent: stdin)")
        p.add_argument("--out", metavar="FILE", help="output file ('-' or absent: stdout)")
        if name in ("encrypt", "decrypt"):
            p.add_argument("--aad", metavar="TEXT",
                           help="associated data (UTF-8); decrypt must give the same")
        if name in ("sign", "verify"):
            mode = p.add_mutually_exclusive_group()
            mode.add_argument("--digest", action="store_true",
                              help="the input is a precomputed digest (SHA-256, or SHA-384 for "
                              "ecdsa-sha384), not the message")
            mode.add_argument("--message", action="store_true",
                              help="send the input itself instead of its digest: only for "
                              "inputs up to the server's [crypto].max_input_bytes (64 KiB by "
                              "default)")
            p.add_argument("--algorithm", metavar="SCHEME", choices=sorted(SCHEME_HASH),
                           help="signature scheme: ecdsa-sha256, ecdsa-sha384, rsa-pss-sha256 "
                           "(RSA default), rsa-pkcs1v15-sha256")
        if name in ("encrypt", "sign", "wrap", "verify"):
            p.add_argument("--allow-empty", action="store_true",
                           help="accept an empty input (refused by default: an empty input is "
                           "usually a failed step before this one)")
        if name == "verify":
            p.add_argument("--signature", required=True, metavar="FILE",
                           help="the signature to check: DER (or raw RSA) as `sign` writes it, "
                           "or its base64 text (`sign --field signature`)")
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
                             "KEY` gives the data key back), key_id and key_version (--field NAME: "
                             "one of them; --output text: name<TAB>value lines). An --out "
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
    p.add_argument("--out", metavar="FILE", help="output file ('-' or absent: stdout); an "
                   "existing file is refused (it may hold the only wrapped copy of another "
                   "data key) unless --force")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    approval_flag(p)


Handler = Callable[[argparse.Namespace, Any, Settings], int]


def _inputs_kept(handler: Handler) -> Handler:
    """``handler``, refusing an --out that names one of its input files first."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace, client: Any, settings: Settings) -> int:
        _not_an_input(args)
        return handler(args, client, settings)
    return run


def _not_an_input(args: argparse.Namespace) -> None:
    """An --out that is the --in (or --signature) file would replace it with the answer: `sign
    --in app.tar.gz --out app.tar.gz` left a 70-byte signature where the artefact was (an
    outside tester). Refused before anything is sent; a device (/dev/null) is not a file."""
    out = args.out
    if out in (None, "-") or names_stdout(out):
        return
    try:
        if not stat.S_ISREG(os.stat(out).st_mode):
            return
    except (OSError, ValueError):
        return  # not there yet: it cannot be an input
    for flag, path in (("--in", args.input), ("--signature", getattr(args, "signature", None))):
        if path in (None, "-"):
            continue
        try:
            same = os.path.samefile(path, out)
        except (OSError, ValueError):
            continue
        if same:
            raise UsageError(f"--out names the same file as {flag} ({out}): the answer would "
                             "replace it; write the answer to another file (nothing was sent)")


def _aad(args: argparse.Namespace) -> bytes | None:
    return args.aad.encode("utf-8") if getattr(args, "aad", None) else None


def _opts(settings: Settings) -> dict[str, Any]:
    return {"approval_id": settings.approval_id}


def _structured(settings: Settings) -> bool:
    """--json, --output text or --field: the answer as the API's JSON (or its name<TAB>value
    lines, binary values in base64) rather than the raw value; text never means raw DER."""
    return settings.output in ("json", "text") or bool(settings.field)


def _answer(out: Output, settings: Settings, document: dict[str, Any]) -> int:
    out.commit((output.render(settings, document, lambda: "") + "\n").encode())
    return 0


def encrypt(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    with Output.open(args.out) as out:
        data = fits(read_input(args.input, allow_empty=args.allow_empty), _source(args.input),
                    "encrypt")
        result = client.encrypt(args.key, data, _aad(args), **_opts(settings))
        if _structured(settings):
            return _answer(out, settings, result)
        out.commit((result["ciphertext"] + "\n").encode("ascii"))
    return 0


def decrypt(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    with Output.open(args.out, secret=True) as out:
        ciphertext = read_text_input(args.input, "ciphertext")
        fits(ciphertext.encode(), _source(args.input), "decrypt", base64_sent=False)
        result = client.decrypt(args.key, ciphertext, _aad(args), **_opts(settings))
        if _structured(settings):
            return _answer(out, settings, {**result, "plaintext": _b64(result["plaintext"])})
        out.commit(result["plaintext"])
    return 0


def fits(data: bytes, what: str, command: str, *, base64_sent: bool = True) -> bytes:
    """``data`` when some server could take it in one request (as base64, unless it is sent
    as the text it is), else a usage error before anything is sent: no server would read it
    but to answer 413."""
    if (4 * -(-len(data) // 3) if base64_sent else len(data)) > MAX_BODY:
        raise UsageError(f"{what} is {len(data)} bytes: too large for one request to any "
                         f"server ([server].max_body_bytes is at most {MAX_BODY >> 20} MiB); "
                         f"nothing was sent: "
                         f"{TOO_LARGE_ADVICE[command]}")
    return data


def _checked_digest(args: argparse.Namespace, client: Any, digest: bytes) -> bytes:
    """A --digest input has the length of the hash the signature scheme needs: checked here,
    and in a way that says which hash, rather than by the server (or its 413 for a file)."""
    sizes = ", ".join(f"{n} bytes for {h.upper().replace('SHA', 'SHA-')}"
                      for h, n in DIGEST_SIZE.items())
    if len(digest) not in DIGEST_SIZE.values():
        longest = max(DIGEST_SIZE.values())
        size = (_bytes(len(digest)) if len(digest) <= longest
                else f"more than {longest} bytes")  # read no further than that
        raise UsageError(f"--digest: the input is {size}, not a digest ({sizes}); "
                         "without --digest the input is hashed here")
    name = SCHEME_HASH.get(args.algorithm or "") or _key_hash(client, args.key)
    if len(digest) != DIGEST_SIZE[name]:
        scheme = f"--algorithm {args.algorithm}" if args.algorithm else f"key {args.key}"
        raise UsageError(f"--digest: {scheme} signs {name.upper().replace('SHA', 'SHA-')} "
                         f"digests of {DIGEST_SIZE[name]} bytes; the input is "
                         f"{_bytes(len(digest))}")
    return digest


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _shaped(signature: bytes) -> bool:
    """RSA's signature is raw (256 or 512 bytes), ECDSA's a DER SEQUENCE of at most 104."""
    der = len(signature) >= 8 and signature[0] == 0x30 and (
        signature[1] == len(signature) - 2
        or (signature[1] == 0x81 and signature[2] == len(signature) - 3))
    return 0 < len(signature) <= MAX_SIGNATURE and (der or len(signature) in (256, 512))


def checked_signature(signature: bytes, path: str) -> bytes:
    """A --signature file shaped like a signature, as `ferrohsm sign` writes it, or its base64
    text (what `sign --field signature` and --json print): decoded when the bytes are not a
    signature themselves and the text is base64 of one. Anything else (an input given by
    mistake) is refused here."""
    if _shaped(signature):
        return signature
    try:
        decoded = base64.b64decode(b"".join(signature.split()), validate=True)
    except ValueError:
        decoded = b""
    if _shaped(decoded):
        return decoded
    size = (f"more than {SIGNATURE_FILE}" if len(signature) > SIGNATURE_FILE
            else str(len(signature)))  # read no further than that (verify)
    raise UsageError(f"--signature {path} is not a signature ({size} bytes; "
                     f"expected the DER ECDSA signature (at most 104 bytes) or the raw RSA one "
                     f"(256 or 512 bytes) that `ferrohsm sign` writes, or its base64 text)")


def _signed_input(args: argparse.Namespace, client: Any,
                  allow_empty: bool) -> tuple[bytes | None, bytes | None]:
    """(message, digest) for sign/verify: the input itself with --message or --digest, else its
    digest under the hash of the scheme the key will use. Standard input can be read only once,
    so it is hashed both ways before the key is asked which hash it needs; a file is checked
    readable first and hashed once."""
    if args.message:
        return fits(read_input(args.input, allow_empty=allow_empty), _source(args.input),
                    args.command), None
    if args.digest:  # a digest is a few dozen bytes: a large input is not one, whatever size
        return None, _checked_digest(args, client, read_input(
            args.input, allow_empty=allow_empty, at_most=max(DIGEST_SIZE.values())))
    if args.input in (None, "-") or not regular_file(args.input):
        # read once (a pipe, a FIFO, <(…) cannot be read again): hashed both ways first
        both = hash_input(args.input, ("sha256", "sha384"), allow_empty=allow_empty)
        return None, both[SCHEME_HASH.get(args.algorithm or "") or _key_hash(client, args.key)]
    readable(args.input)
    name = SCHEME_HASH.get(args.algorithm or "") or _key_hash(client, args.key)
    return None, hash_input(args.input, (name,), allow_empty=allow_empty)[name]


def _key_hash(client: Any, key: str) -> str:
    """The hash of the key's default scheme (an AES key: SHA-256, and the server refuses)."""
    return ALGORITHM_HASH.get(str(client.get_key(key).get("algorithm")), "sha256")


def _source(path: str | None) -> str:
    return "standard input" if path in (None, "-") else f"--in {path}"


def regular_file(path: str) -> bool:
    """Whether ``path`` is a regular file, which can be opened twice and reads the same; a
    FIFO opened only to check it would lose its writer, and the real read then wait forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def readable(path: str) -> None:
    """Fail on an unreadable --in before anything is asked of the server."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def sign(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    with Output.open(args.out, binary=not _structured(settings)) as out:
        message, digest = _signed_input(args, client, args.allow_empty)
        result = client.sign(args.key, message, digest=digest, algorithm=args.algorithm,
                             **_opts(settings))
        if _structured(settings):
            return _answer(out, settings, {**result, "signature": _b64(result["signature"])})
        out.commit(result["signature"])
    return 0


def verify(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    with Output.open(args.out) as out:
        # at most what a signature's base64 text takes: a larger file is no signature, and
        # its refusal must say so, not suggest dropping --message (an outside tester)
        signature = checked_signature(read_input(args.signature, at_most=SIGNATURE_FILE),
                                      args.signature)
        message, digest = _signed_input(args, client, args.allow_empty)
        result = client.verify_result(args.key, signature, message, digest=digest,
                                      algorithm=args.algorithm, key_version=args.key_version,
                                      **_opts(settings))
        valid = bool(result.get("valid"))
        if _structured(settings):
            _answer(out, settings, result)
        else:
            text = "valid: the signature matches" if valid else \
                "invalid: the signature does not match this key and input" + _older(args, result)
            out.commit((text + "\n").encode())
    return 0 if valid else 1


def _older(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """On a signature the primary version refused: the key has older versions, and a
    signature made before a rotation (an older release's) verifies only with its own."""
    checked = result.get("key_version")
    if args.key_version is not None or not isinstance(checked, int) or checked < 2:
        return ""
    return (f" (checked version {checked}, the primary; a signature made before a rotation "
            f"verifies with --key-version N, N from 1 to {checked - 1})")


def wrap(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    with Output.open(args.out) as out:
        material = fits(read_input(args.input, allow_empty=args.allow_empty),
                        _source(args.input), "wrap")
        result = client.wrap(args.key, material, **_opts(settings))
        if _structured(settings):
            return _answer(out, settings, result)
        out.commit((result["wrapped"] + "\n").encode("ascii"))
    return 0


def _refuse_terminal(args: argparse.Namespace, what: str, ways: str) -> None:
    """Key material goes to no terminal in any output mode (JSON, text, --field too): a
    screen is read over shoulders, recorded by terminal logs, kept in scrollback."""
    if (args.out in (None, "-") or names_stdout(args.out)) and sys.stdout.isatty():
        raise UsageError(f"refusing to write {what} to a terminal: use --out FILE, redirect "
                         f"stdout{ways}")


def unwrap(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    _refuse_terminal(args, "unwrapped key material", "")
    with Output.open(args.out, secret=True, binary=not _structured(settings)) as out:
        wrapped = read_text_input(args.input, "wrapped key")
        fits(wrapped.encode(), _source(args.input), "unwrap", base64_sent=False)
        result = client.unwrap(args.key, wrapped, **_opts(settings))
        if _structured(settings):
            return _answer(out, settings,
                           {**result, "key_material": _b64(result["key_material"])})
        out.commit(result["key_material"])
    return 0


def data_key(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    secret = not args.no_plaintext
    if secret:
        _refuse_terminal(args, "a plaintext data key", ", or --no-plaintext")
    _refuse_existing(args.out, getattr(args, "force", False))
    with Output.open(args.out, secret=secret) as out:  # opened before the server acts
        result = client.data_key(args.key, args.bits, include_plaintext=secret,
                                 aad=_aad(args), **_opts(settings))
        value = {**result, "plaintext": _b64(result["plaintext"])} if "plaintext" in result \
            else result
        # The JSON answer is what this command shows by default; --field and --output text
        # pick from it as everywhere else, and an explicit --output table is a table.
        human = (lambda: _data_key_table(value)) if getattr(args, "output", None) == "table" \
            else (lambda: output.json_text(value).rstrip())
        out.commit((output.render(settings, value, human) + "\n").encode())
    return 0


def _data_key_table(value: dict[str, Any]) -> str:
    return output.fields([("Key", str(value.get("key_id"))),
                          ("Key version", str(value.get("key_version"))),
                          ("Ciphertext", str(value.get("ciphertext"))),
                          ("Plaintext", str(value.get("plaintext") or "- (--no-plaintext)"))])


def _refuse_existing(path: str | None, force: bool) -> None:
    """A data key's --out file may hold the only wrapped copy of an earlier data key:
    replacing it would lose every byte encrypted under that key, so it takes --force (as
    ``backup --out`` never replaces an archive). Devices and pipes are written through."""
    if force or path in (None, "-") or names_stdout(path):
        return
    if os.path.isfile(str(path)):
        raise CliExit(f"{path} exists: choose a new name or give --force to replace it; "
                      "nothing was sent to the server", CANNOT_WRITE)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


HANDLERS = {"encrypt": encrypt, "decrypt": decrypt, "sign": sign, "verify": verify,
            "wrap": wrap, "unwrap": unwrap}
