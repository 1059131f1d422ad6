"""TLS with OCSP stapling through pyOpenSSL, used only when ``[tls] ocsp_staple = true``.

Python's ``ssl`` module cannot staple on the server side (it has no status-request callback);
pyOpenSSL's ``Context.set_ocsp_server_callback`` wraps OpenSSL's ``SSL_CTX_set_tlsext_status_cb``
and does exactly that. This module is imported only when stapling is configured (pyOpenSSL is
the optional ``ocsp`` extra), so the default path stays on ``ssl`` untouched.

The event loop (api/server.py, api/connection.py) drives an ``ssl.SSLSocket``: ``wrap_socket``,
``do_handshake``, ``recv_into``, ``send``, ``pending``, ``version``, ``getpeercert``, and the
``ssl.SSLWantReadError`` family. ``StaplingSocket`` presents that same surface over an
``OpenSSL.SSL.Connection`` on the same file descriptor, mapping pyOpenSSL's errors onto
``ssl``'s: TLS 1.3 only, no compression, the same client-certificate options as
``context.server_context``.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from OpenSSL import SSL, crypto

from ..crypto.certs import der, load_private_key
from .pair import Pair
from .stapler import Staple

Buffer = Any  # _typeshed's ReadableBuffer/WriteableBuffer; collections.abc.Buffer needs 3.12


class StaplingContext:
    """What the server asks for per connection: ``wrap_socket`` as on an ``ssl.SSLContext``."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True,
                    do_handshake_on_connect: bool = False) -> StaplingSocket:
        if not server_side or do_handshake_on_connect:
            raise ValueError("the stapling context only serves non-blocking server sockets")
        return StaplingSocket(sock, self.context)


def stapling_context(pair: Pair, staple: Staple, client_ca: str | None,
                     require_client_cert: bool, client_crl: str | None = None
                     ) -> StaplingContext:
    """A TLS 1.3 server context for ``pair`` that staples ``staple.current()``.

    ValueError with a message naming no file content when OpenSSL refuses the pair or the CA.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_IGNORE_UNEXPECTED_EOF)
    context.set_session_id(b"ferrohsm")  # resumption with client certificates needs one
    try:
        context.use_certificate(pair.leaf)
        for extra in pair.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(load_private_key(pair.key_pem))  # type: ignore[arg-type]  # ed/ec/rsa keys only reach here: read_pair loaded it
        context.check_privatekey()
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            if client_crl is not None:  # as context.server_context: the leaf's issuer's CRL
                context.load_verify_locations(client_crl)
                store = context.get_cert_store()
                if store is None:
                    raise ValueError("OpenSSL has no certificate store to check CRLs in")
                store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
            mode = SSL.VERIFY_PEER
            if require_client_cert:
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode)
    except SSL.Error:
        raise ValueError("OpenSSL refused the certificate, key, client CA or CRL") from None
    context.set_ocsp_server_callback(lambda _conn, _data: staple.current())
    return StaplingContext(context)


class StaplingSocket(socket.socket):
    """A TCP socket whose reads and writes go through an ``OpenSSL.SSL.Connection``, with the
    ``ssl.SSLSocket`` calls and exceptions the event loop uses."""

    __slots__ = ("_tls",)

    def __init__(self, sock: socket.socket, context: SSL.Context) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.setblocking(False)
        # The descriptor, not ``self``: the Connection keeps no reference back to this object.
        try:
            self._tls = SSL.Connection(context, self.fileno())  # type: ignore[arg-type]  # pyOpenSSL takes an fd (SSL_set_fd) as well
        except SSL.Error as exc:
            self.close()
            raise ssl.SSLError(f"cannot set up TLS: {exc}") from None
        self._tls.set_accept_state()

    def do_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("handshake wants to read") from None
        except SSL.WantWriteError:
            raise ssl.SSLWantWriteError("handshake wants to write") from None
        except SSL.ZeroReturnError:
            raise ssl.SSLEOFError("peer closed during the handshake") from None
        except SSL.Error as exc:
            failure = ssl.SSLError(f"handshake failed: {exc}")
            if any(isinstance(e, tuple) and e[-1:] == ("http request",)
                   for e in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else [])):
                failure.reason = "HTTP_REQUEST"  # as the ssl module names it: plain HTTP here
            raise failure from None

    def version(self) -> str | None:
        return self._tls.get_protocol_version_name()

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        """The client's certificate as DER (the server only ever asks for binary form)."""
        cert = self._tls.get_peer_certificate(as_cryptography=True)
        return None if cert is None else der(cert)

    def pending(self) -> int:
        return self._tls.pending()

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        try:
            return self._tls.recv_into(buffer, nbytes or None)
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("read would block") from None
        except SSL.WantWriteError:
            raise ssl.SSLWantWriteError("read wants to write") from None
        except SSL.ZeroReturnError:
            return 0  # close_notify
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] == -1:
                return 0  # EOF without close_notify: treated as EOF, as the ssl path does
            raise ConnectionResetError(str(exc)) from None
        except SSL.Error as exc:
            raise ssl.SSLError(f"TLS read failed: {exc}") from None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        count = self.recv_into(buffer)
        return bytes(buffer[:count])

    def send(self, data: Buffer, flags: int = 0, /) -> int:
        try:
            return self._tls.send(memoryview(data))
        except SSL.WantWriteError:
            raise ssl.SSLWantWriteError("write would block") from None
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("write wants to read") from None
        except SSL.SysCallError as exc:
            raise ConnectionResetError(str(exc)) from None
        except SSL.Error as exc:
            raise ssl.SSLError(f"TLS write failed: {exc}") from None
