#!/usr/bin/env python3
"""Sign a build artefact with a designated FerroHSM key, then prove it with openssl.

The CI journey: a pipeline signs what it built, with a correlation id that ties the
signature to the build in FerroHSM's audit log. The script

1. hashes the artefact locally (SHA-256, or SHA-384 for a P-384 key) and sends only the digest,
   so a 2 GB image costs one small request and the artefact never leaves the build machine;
2. asks FerroHSM to sign that digest with KEY, sending X-Correlation-ID;
3. writes the DER signature to ARTEFACT.sig (or --out) and the signing version's public key
   to ARTEFACT.pub.pem;
4. verifies the signature with stock OpenSSL: `openssl dgst -sha256 -verify pub.pem
   -signature ARTEFACT.sig ARTEFACT` (plus the PSS options for an RSA key).

Settings come from the environment: FERROHSM_URL, FERROHSM_TOKEN (a service-role token),
FERROHSM_CA_CERT, and optionally FERROHSM_CLIENT_CERT / FERROHSM_CLIENT_KEY for mutual TLS.
Exit status: 0 signed and verified, 1 signing or verification failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

try:
    from ferrohsm.client import ApiError, Client, ClientError
except ImportError:  # run from a checkout without installing: use the repository's SDK
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ferrohsm.client import ApiError, Client, ClientError

# Signature scheme -> (hash for the digest, extra `openssl dgst` options).
SCHEMES = {
    "ecdsa-sha256": ("sha256", []),
    "ecdsa-sha384": ("sha384", []),
    "rsa-pss-sha256": ("sha256", ["-sigopt", "rsa_padding_mode:pss",
                                  "-sigopt", "rsa_pss_saltlen:32"]),
    "rsa-pkcs1v15-sha256": ("sha256", []),
}
DEFAULT_SCHEME = {"ec-p256": "ecdsa-sha256", "ec-p384": "ecdsa-sha384",
                  "rsa-2048": "rsa-pss-sha256", "rsa-4096": "rsa-pss-sha256"}


def digest_file(path: Path, algorithm: str) -> bytes:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def correlation_id(given: str | None) -> str:
    """The caller's id, else the CI system's build id, else a fresh one: always something the
    audit log can be searched for."""
    for value in (given, os.environ.get("FERROHSM_CORRELATION_ID"),
                  os.environ.get("GITHUB_RUN_ID"), os.environ.get("CI_PIPELINE_ID")):
        if value:
            return value
    return f"sign-{uuid.uuid4()}"


def openssl_verify(artefact: Path, signature: Path, public_pem: Path, scheme: str) -> str:
    hash_name, options = SCHEMES[scheme]
    cmd = ["openssl", "dgst", f"-{hash_name}", "-verify", str(public_pem), *options,
           "-signature", str(signature), str(artefact)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603  fixed argv, no shell
    except FileNotFoundError:
        raise SystemExit("sign_artifact: openssl is not installed, so the signature was not "
                         "checked (it was written)") from None
    if result.returncode != 0:
        raise SystemExit(f"openssl could not verify the signature: "
                         f"{(result.stdout + result.stderr).strip()}")
    return result.stdout.strip()


def sign(args: argparse.Namespace) -> int:
    artefact = Path(args.artefact)
    sig_path = Path(args.out or f"{artefact}.sig")
    pem_path = Path(f"{artefact}.pub.pem")
    cid = correlation_id(args.correlation_id)
    with Client.from_env(correlation_id=cid) as hsm:
        key = hsm.get_key(args.key)
        if key["algorithm"] not in DEFAULT_SCHEME:
            raise SystemExit(f"sign_artifact: key {args.key} is {key['algorithm']}, not a "
                             "signing key")
        scheme = args.algorithm or DEFAULT_SCHEME[key["algorithm"]]
        digest = digest_file(artefact, SCHEMES[scheme][0])
        result = hsm.sign(args.key, digest=digest, algorithm=scheme)
        sig_path.write_bytes(result["signature"])
        pem_path.write_text(hsm.public_key(args.key, result["key_version"])["pem"])
    verdict = openssl_verify(artefact, sig_path, pem_path, scheme)
    print(f"signed {artefact} with {args.key} v{result['key_version']} ({result['algorithm']}), "
          f"correlation id {cid}")
    print(f"signature {sig_path}, public key {pem_path}; openssl: {verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artefact", metavar="ARTEFACT", help="the file to sign")
    parser.add_argument("--key", required=True, help="the designated signing key (id or name)")
    parser.add_argument("--correlation-id", help="recorded in the audit log (default: "
                        "FERROHSM_CORRELATION_ID, GITHUB_RUN_ID, CI_PIPELINE_ID or a new UUID)")
    parser.add_argument("--out", help="signature file (default: ARTEFACT.sig)")
    parser.add_argument("--algorithm", choices=sorted(SCHEMES),
                        help="signature scheme (default: the key's natural one)")
    args = parser.parse_args(argv)
    if not Path(args.artefact).is_file():
        parser.error(f"no such file: {args.artefact}")
    try:
        return sign(args)
    except ApiError as exc:  # str(exc): message (code, request id …)
        print(f"sign_artifact: {exc}", file=sys.stderr)
    except (ClientError, ValueError) as exc:
        print(f"sign_artifact: {exc}", file=sys.stderr)
    except OSError as exc:  # the artefact unreadable, the output directory missing
        print(f"sign_artifact: {exc.filename}: {exc.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
