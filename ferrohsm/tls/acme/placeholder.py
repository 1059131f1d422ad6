"""What an ACME server serves before its first certificate: a throwaway self-signed one.

With no certificate at all every handshake failed with "protocol version", which sends an
operator chasing TLS versions, and /healthz (where ``acme.last_error`` says why issuance fails)
could not be read even by a client that skips verification. The placeholder is refused by
every verifying client, as nothing was before, but with a reason that says what is going on:
a self-signed certificate whose subject reads "ACME certificate not issued yet". Its key lives
in memory for the process's life and in a temporary 0600 file only while a context loads it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..devpki import sans
from .cache import CachedCert

SUBJECT = "FerroHSM: ACME certificate not issued yet"


def placeholder(domains: Sequence[str], now: dt.datetime) -> CachedCert:
    """A self-signed P-256 certificate for ``domains``, valid for a day either side of now."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT)])
    names = sans(domains)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=1)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    leaf = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return CachedCert(leaf.public_bytes(serialization.Encoding.PEM), key_pem, leaf)
