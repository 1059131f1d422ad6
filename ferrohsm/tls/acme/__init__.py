"""ACME (RFC 8555) certificate issuance and renewal for the serving port.

Small modules with one job each: ``jws`` (request signing), ``client`` (the HTTP exchange with
the CA: nonces, retries, errors), ``cache`` (account key, account URLs and certificates on disk),
``order`` (one issuance: order, authorizations, challenges, finalize, download), ``challenges``
(the http-01 listener and the tls-alpn-01 contexts), ``renewal`` (when to renew: lifetime
fraction or ARI, RFC 9773) and ``provider`` (the per-connection SSL context and the background thread that keeps it fresh).

The JWS signing is written here on ``cryptography`` rather than taken from an ACME library: it is
about sixty lines (ES256 over a flattened JSON serialization), the library choices (``acme`` from
certbot, ``josepy``) would add two dependencies and pyOpenSSL to every install, and owning the
code keeps the error handling (badNonce, Retry-After, rate limits) where our tests can see it.
"""
