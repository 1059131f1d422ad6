"""The performance BASELINE: the bare stdlib server, tuned as far as it goes (see below).

``http.server.ThreadingHTTPServer`` + ``ssl`` (TLS 1.3 only), a handler speaking HTTP/1.1
keep-alive with Nagle disabled, reading the JSON body and answering a fixed JSON body with headers
and body in ONE write. bench/bench_http.py compares HardenedHTTPServer against it; nothing in
FerroHSM imports this file.

    python3 bench/echo_server.py --port 8443 --cert server.pem --key server-key.pem --pin-cpu 0
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = b'{"ok":true,"ciphertext":"fhsm:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}'


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # TCP_NODELAY on every connection
    ssl_context: ssl.SSLContext | None = None

    def setup(self) -> None:
        # Handshake here, in the connection's own thread, not in the accept loop.
        if self.ssl_context is not None:
            self.request = self.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        json.loads(self.rfile.read(length) or b"null")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        # end_headers() would flush the headers on their own: buffer the body with them instead.
        self._headers_buffer.append(b"\r\n" + REPLY)  # type: ignore[attr-defined]  # private, untyped in typeshed
        self.flush_headers()

    def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
        pass


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes (port probes) are not worth a traceback in a benchmark


def tls13_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", help="PEM certificate (omit with --key for plain HTTP)")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="N",
                        help="pin this process to CPU N (no GIL hand-offs between cores)")
    args = parser.parse_args(argv)
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    if args.cert:
        EchoHandler.ssl_context = tls13_context(args.cert, args.key)
    server = EchoServer((args.host, args.port), EchoHandler)
    print(f"listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
