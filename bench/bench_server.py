#!/usr/bin/env python3
"""FerroHSM over HTTPS, measured with wrk against the stdlib echo baseline in the same run.

Servers, each its own process pinned to core 0 (wrk runs on core 1), 16 keep-alive TLS 1.3
connections, rounds alternating between them so they share the machine's background noise:

* baseline      bench/echo_server.py: stdlib ThreadingHTTPServer + ssl, read JSON, reply fixed JSON
* durable       `ferrohsm serve` on the shipped defaults ([logging] level = "INFO": one access
                line per request, written to a file as a service manager would keep stderr):
                JWT auth, rate limiting, AES-256-GCM encrypt of 32 bytes, and an audit record
                fsynced (group commit) before every reply; filesystem key store
* no-fsync      the same server with [audit] durable = false (the issue 5 comparison)
* access-off    the same as durable with [logging] level = "WARNING" (no access line for a 200:
                labelled, the issue 18 comparison: the access log's cost)
* otlp          the same as durable with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP/HTTP
                receiver (this process, core 1), every span sampled and exported (issue 18);
                the span exporter child process's CPU per span is reported too (it runs off
                core 0, beside wrk and the receiver)
* otlp-5pct     otlp with OTEL_TRACES_SAMPLER=parentbased_traceidratio, _ARG=0.05 (labelled)
* otlp-2pct     the same with _ARG=0.02 (labelled; the README's suggestion)
* flush-thread  durable with [audit] flush = "thread": the audit fsync on a committer thread,
                as before io_uring (labelled)
* no-spin       durable with [audit] flush_spin_microseconds = 0: io_uring, but the loop sleeps
                in select during a flush instead of polling for it (labelled)
* fsync-here    durable with [audit] fsync_elsewhere = false: the kernel runs the audit fsyncs
                on the server's core 0, not on core 1 (labelled)
* stapling      (only with --stapling) durable with [tls] ocsp_staple = true: TLS through
                pyOpenSSL, stapling a response fetched from a local `openssl ocsp` (wrk asks for
                no status, so this measures the pyOpenSSL read/write path every request takes)

Each round starts every server afresh (``--same-processes`` keeps one process throughout):
two processes of one configuration differ by a persistent 5-10 % in CPU a request (measured:
bench/RESULTS.md, 2026-12-06), so one process per configuration made every ratio partly luck.

Targets: durable >= 0.60 x baseline req/s with p50 < 5 ms and p99 < 25 ms (issue 3);
durable >= 0.80 x no-fsync (issue 5); durable >= 0.95 x access-off and otlp >= 0.90 x durable
(issue 18). Then key listings over 5,000 and 100,000 keys (issue 3).

    python3 bench/bench_server.py [--duration 8] [--rounds 3] [--skip-listing] [--fs-100k]
                                  [--servers durable,access-off,otlp] [--stapling]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_http import (
    cpu_seconds,
    free_port,
    lua_script,
    median_round,
    run_wrk,
    wait_listening,
)

from ferrohsm.auth.authn import issue_token
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.ids import uuid7
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import DevPki, make_dev_pki

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
pin_cpu = 0
[storage]
key_store = "{store}"
data_dir = "{data}"
[tls]
cert = "{cert}"
key = "{key}"
{tls_extra}
[audit]
durable = {durable}
sink = "{sink}"
[rate_limit]
requests_per_second = 1000000.0
burst = 1000000
[logging]
level = "{level}"
"""


class Server:
    """A `ferrohsm serve` child process with its own data dir, and an HTTPS client for it."""

    def __init__(self, tmp: Path, name: str, pki: DevPki, env: dict[str, str], *,
                 store: str = "filesystem", durable: bool = True, level: str = "INFO",
                 cert: Path | None = None, tls_extra: str = "", sink: str = "file") -> None:
        self.port = free_port()
        self.data = tmp / name
        self.log = tmp / f"{name}.log"  # stderr: the JSON log lines, as journald would keep them
        cfg = tmp / f"{name}.toml"
        cfg.write_text(CONFIG.format(port=self.port, store=store, data=self.data,
                                     cert=cert or pki.server_cert, key=pki.server_key,
                                     durable=str(durable).lower(), level=level,
                                     tls_extra=tls_extra, sink=sink))
        self.env, self.cfg, self.store = env, cfg, store
        self.ctx: ssl.SSLContext = client_context(str(pki.ca_cert))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "serve", "--config",
                                          str(self.cfg)], env=self.env, cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_listening(self.port, timeout=60)
        except RuntimeError:  # say why: the server's own last lines
            sys.stderr.write(self.log.read_text(errors="replace")[-3000:])
            raise

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self) -> int:
        """A new process on the same data: its pid."""
        self.stop()
        self.start()
        assert self.proc is not None
        return self.proc.pid

    def conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)


def call(conn: http.client.HTTPSConnection, method: str, path: str, token: str,
         body: object = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    return resp.status, json.loads(payload) if payload else None


def throughput(args: argparse.Namespace, tmp: Path, pki: DevPki, env: dict[str, str],
               secret: bytes) -> None:
    admin = issue_token(secret, subject="bench-admin", role="administrator")
    service = issue_token(secret, subject="bench-service", role="service")
    receiver = OtlpReceiver()
    otlp_env = dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="bench")
    every = {"durable": lambda: Server(tmp, "durable", pki, env),
             "no-fsync": lambda: Server(tmp, "nofsync", pki, env, durable=False),
             "access-off": lambda: Server(tmp, "accessoff", pki, env, level="WARNING"),
             "flush-thread": lambda: Server(tmp, "flushthread", pki,
                                            dict(env, FERROHSM_AUDIT_FLUSH="thread")),
             "no-spin": lambda: Server(tmp, "nospin", pki,
                                       dict(env, FERROHSM_AUDIT_FLUSH_SPIN_MICROSECONDS="0")),
             "fsync-here": lambda: Server(tmp, "fsynchere", pki,
                                          dict(env, FERROHSM_AUDIT_FSYNC_ELSEWHERE="false")),
             "otlp": lambda: Server(tmp, "otlp", pki, otlp_env),
             "otlp-5pct": lambda: Server(tmp, "otlp5", pki, dict(
                 otlp_env, OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                 OTEL_TRACES_SAMPLER_ARG="0.05")),
             "otlp-2pct": lambda: Server(tmp, "otlp2", pki, dict(
                 otlp_env, OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                 OTEL_TRACES_SAMPLER_ARG="0.02"))}
    wanted = ["durable", *(n for n in args.servers.split(",") if n and n != "durable")]
    servers = {name: every[name]() for name in wanted}
    urls: dict[str, str] = {}
    scripts: dict[str, Path] = {}
    procs: dict[str, int] = {}
    baseline: Baseline | None = None
    responder: subprocess.Popen[bytes] | None = None
    if args.stapling:
        responder, ocsp_port = start_ocsp_responder(tmp, pki)
        chain = tmp / "server-chain.pem"  # stapling needs the issuer after the leaf
        chain.write_bytes(pki.server_cert.read_bytes() + pki.ca_cert.read_bytes())
        servers["stapling"] = Server(
            tmp, "stapling", pki, env, cert=chain, tls_extra=(
                f'ocsp_staple = true\nocsp_responder = "http://127.0.0.1:{ocsp_port}"'))
    try:
        port = free_port()
        urls["baseline"] = f"https://127.0.0.1:{port}/v1/keys/k/encrypt"
        baseline = Baseline(lambda: start_baseline(port, pki))
        procs["baseline"] = baseline.proc.pid
        plaintext = base64.b64encode(b"x" * 32).decode()
        for name, srv in servers.items():
            srv.start()
            status, key = call(srv.conn(), "POST", "/v1/keys", admin,
                               {"algorithm": "aes-256-gcm", "usage": "encrypt"})
            assert status == 201, key
            urls[name] = f"https://127.0.0.1:{srv.port}/v1/keys/{key['id']}/encrypt"
            assert srv.proc is not None
            procs[name] = srv.proc.pid
        for name in urls:
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(lua_script(json.dumps({"plaintext": plaintext}),
                                                {"Authorization": f"Bearer {service}"}))
            run_wrk(urls[name], scripts[name], args.connections, 2, procs[name])  # warm-up
        results = rounds_of(args, urls, scripts, procs, {**servers, "baseline": baseline},
                            receiver)
    finally:
        for srv in servers.values():
            srv.stop()
        if baseline is not None:
            baseline.stop()
        if responder is not None:
            responder.terminate()
            responder.wait(10)
        receiver.close()
    report(results, args)
    if any(name.startswith("otlp") for name in results):
        print(f"\nOTLP receiver: {receiver.requests} export requests, {receiver.spans:,} spans")


class Baseline:
    """The echo server, started and restarted like a Server."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]]) -> None:
        self._start, self.proc = start, start()

    def restart(self) -> int:
        self.stop()
        self.proc = self._start()
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rounds_of(args: argparse.Namespace, urls: dict[str, str], scripts: dict[str, Path],
              procs: dict[str, int], servers: dict[str, Any], receiver: OtlpReceiver
              ) -> dict[str, list[dict[str, float]]]:
    """Every server measured once a round, in turn; from the second round on each one is a
    new process (unless --same-processes), warmed up for a second first."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for round_no in range(args.rounds):
        for name in urls:
            if round_no and not args.same_processes:
                procs[name] = servers[name].restart()
                run_wrk(urls[name], scripts[name], args.connections, 1, procs[name])
            results[name].append(measure(name, urls[name], scripts[name], args, procs[name],
                                         receiver))
    return results


def start_baseline(port: int, pki: DevPki) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), "--port", str(port),
                             "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                             "--pin-cpu", "0"], stdout=subprocess.DEVNULL)
    wait_listening(port)
    return proc


def measure(name: str, url: str, script: Path, args: argparse.Namespace, pid: int,
            receiver: OtlpReceiver) -> dict[str, float]:
    """One wrk round; for an otlp server also its span exporter child's CPU and the spans the
    receiver got meanwhile."""
    children, spans = children_cpu(pid), receiver.spans
    result = run_wrk(url, script, args.connections, args.duration, pid)
    if name.startswith("otlp"):  # the span exporter child's share, off core 0
        time.sleep(0.5)  # the last batch: handed over every 0.15 s
        result["child_cpu_s"] = children_cpu(pid) - children
        result["spans"] = receiver.spans - spans
    return result


def children_cpu(pid: int) -> float:
    """User + system CPU time of a process's children (the span exporter of an otlp server)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                total += cpu_seconds(int(child))
            except OSError:  # exited meanwhile
                pass
    return total


class OtlpReceiver:
    """A local OTLP/HTTP endpoint: reads each POST /v1/traces, counts its spans, answers 200
    on a kept-alive connection (a collector does; a new connection per export would put a
    connect and a thread start per 512 spans on the load generator's core)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        owner = self
        self.requests = self.spans = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector offers

            def do_POST(self) -> None:
                message = ExportTraceServiceRequest()
                message.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests += 1
                owner.spans += sum(len(s.spans) for r in message.resource_spans
                                   for s in r.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_ocsp_responder(tmp: Path, pki: DevPki) -> tuple[subprocess.Popen[bytes], int]:
    """`openssl ocsp` answering "good" for the dev server certificate, signed by the dev CA."""
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    serial = format(cert.serial_number, "X")
    serial = serial if len(serial) % 2 == 0 else "0" + serial
    index = tmp / "ocsp-index.txt"
    index.write_text("\t".join(["V", cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ"), "",
                                serial, "unknown", "/CN=bench"]) + "\n")
    (tmp / "ocsp-index.txt.attr").write_text("unique_subject = no\n")
    port = free_port()
    proc = subprocess.Popen(["openssl", "ocsp", "-index", str(index), "-port", str(port),
                             "-rsigner", str(pki.ca_cert), "-rkey", str(pki.ca_key),
                             "-CA", str(pki.ca_cert), "-nmin", "60", "-ignore_err"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # a probing connection would hold the one-at-a-time responder up
    return proc, port


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    med = {}
    print(f"\n### Encrypt 32 B, {args.connections} keep-alive TLS 1.3 connections, "
          f"{args.rounds} x {args.duration} s, median round\n")
    print("| server | req/s | p50 ms | p99 ms | CPU µs/req | errors+non-2xx | rounds (req/s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, rounds in results.items():
        best = median_round(rounds)
        med[name] = best
        errors = sum(int(r["errors"] + r["non2xx"]) for r in rounds)
        print(f"| {name} | {best['rps']:,.0f} | {best['p50_us'] / 1000:.2f} | "
              f"{best['p99_us'] / 1000:.2f} | {best['cpu_us']:.0f} | {errors} | "
              + ", ".join(f"{r['rps']:,.0f}" for r in rounds) + " |")
    print(f"\nratio durable / baseline: {med['durable']['rps'] / med['baseline']['rps']:.2f} "
          f"(target >= 0.60)")
    for name, label, target in (("no-fsync", "durable / no-fsync", 0.80),
                                ("access-off", "durable (access log on) / access-off", 0.95)):
        if name in med:
            print(f"ratio {label}: {med['durable']['rps'] / med[name]['rps']:.2f} "
                  f"(target >= {target:.2f})")
    for name in ("otlp", "otlp-5pct", "otlp-2pct"):
        if name in med:
            print(f"ratio {name} / durable: {med[name]['rps'] / med['durable']['rps']:.2f} "
                  f"by req/s, {med['durable']['cpu_us'] / med[name]['cpu_us']:.2f} by CPU "
                  f"per request (target >= 0.90)")
    report_exporter(results)
    report_paired(results)
    if "access-off" in med:
        print(f"ratio durable / access-off by CPU per request: "
              f"{med['access-off']['cpu_us'] / med['durable']['cpu_us']:.2f} (target >= 0.95)")
    report_labelled(med)


def report_paired(results: dict[str, list[dict[str, float]]]) -> None:
    """Issue 18's ratios round by round (the two servers measured one after the other, so a
    slower phase of the machine slows both), then their median: less swayed by drift than the
    ratio of two median rounds."""
    for top, bottom, target in (("durable", "access-off", 0.95), ("otlp", "durable", 0.90)):
        if top in results and bottom in results:
            rps = [a["rps"] / b["rps"] for a, b in zip(results[top], results[bottom])]
            cpu = [b["cpu_us"] / a["cpu_us"] for a, b in zip(results[top], results[bottom])]
            print(f"paired {top} / {bottom}, round by round: "
                  + ", ".join(f"{r:.2f}" for r in rps)
                  + f"; median {statistics.median(rps):.2f} by req/s, "
                  f"{statistics.median(cpu):.2f} by CPU (target >= {target:.2f})")


def report_labelled(med: dict[str, dict[str, float]]) -> None:
    """The ratios of the labelled configurations (not the shipped defaults)."""
    if "access-off" in med:
        print(f"ratio access-off / baseline: "
              f"{med['access-off']['rps'] / med['baseline']['rps']:.2f} (labelled: WARNING)")
    for name in ("flush-thread", "no-spin", "fsync-here"):
        if name in med:
            print(f"ratio durable / {name}: {med['durable']['rps'] / med[name]['rps']:.2f} "
                  f"(labelled: the shipped flush against {name})")
    if "stapling" in med:
        print(f"ratio stapling / durable: {med['stapling']['rps'] / med['durable']['rps']:.2f}; "
              f"stapling / baseline: {med['stapling']['rps'] / med['baseline']['rps']:.2f}")


def report_exporter(results: dict[str, list[dict[str, float]]]) -> None:
    """The span exporter child's CPU (it runs off the serving core) per span and request."""
    for name in ("otlp", "otlp-5pct", "otlp-2pct"):
        rounds = results.get(name, [])
        spans = sum(r.get("spans", 0) for r in rounds)
        if spans:
            child = sum(r.get("child_cpu_s", 0.0) for r in rounds) * 1e6
            requests = sum(r["requests"] for r in rounds)
            print(f"{name} exporter process (off the serving core): {child / spans:.1f} CPU "
                  f"µs/span, {child / requests:.1f} µs/req ({spans:,} spans received)")


def populate(srv: Server, master: bytes, count: int) -> None:
    """Write ``count`` keys straight into the store (before the server holds its lock), each
    creation recorded first in the audit log as the server does (intents, the bound records,
    confirmations), 5000 at a time: start-up reconciliation then finds every key explained."""
    from ferrohsm.app import CHECK_VALUE, ensure_private_dir
    from ferrohsm.audit.sinks import FileSink
    from ferrohsm.store.filesystem import FilesystemStore
    from ferrohsm.store.sqlite import SQLiteStore
    ensure_private_dir(srv.data)
    record_mac = RecordMac.derive(master)  # the server's: its records must verify there
    store = (SQLiteStore(srv.data / "keys.sqlite3", record_mac) if srv.store == "sqlite"
             else FilesystemStore(srv.data, record_mac))
    sink = FileSink(srv.data / "audit", base64.b64decode(srv.env["FERROHSM_AUDIT_HMAC_KEY"]))
    sealer = Sealer(master)
    store.put_meta(CHECK_VALUE, sealer.make_check_value())
    now = datetime.now(UTC)
    sealed = sealer.seal(os.urandom(32), key_id=uuid7(), version=1, algorithm="aes-256-gcm")
    for start in range(0, count, 5000):
        batch = [lc.new_key(key_id=uuid7(), name=f"k{i:06d}", description="bench",
                            algorithm="aes-256-gcm", usage="encrypt",
                            tags=("bench", f"t{i % 10}"), sealed=sealed, now=now, actor="bench")
                 for i in range(start, min(count, start + 5000))]
        recorded_bulk_create(store, sink, batch)
    sink.close()
    store.close()


def recorded_bulk_create(store: Any, sink: Any, keys: list[Any]) -> None:
    from ferrohsm.audit.chain import AuditEvent, prepare
    from ferrohsm.domain import binding

    def event(key: Any, outcome: str, **details: Any) -> Any:
        return prepare(AuditEvent(actor="bench", role="administrator", action="key.create",
                                  outcome=outcome, message="bench population", key_id=key.id,
                                  key_version=1, details=details))
    targets = [binding.planned(k, 1) for k in keys]
    intents = sink.commit_deferred([event(t, "intent", **binding.intent_details(t, 0))
                                    for t in targets])
    store.bulk_create([binding.bind(t, r["seq"], r["hash"]) for t, r in zip(targets, intents)])
    sink.commit_deferred([event(t, "success", intent_seq=r["seq"])
                          for t, r in zip(targets, intents)])


def timed(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def listing(args: argparse.Namespace, tmp: Path, pki: DevPki, env: dict[str, str],
            secret: bytes, master: bytes) -> None:
    auditor = issue_token(secret, subject="bench-auditor", role="auditor")
    cases = [("filesystem", 5000), ("sqlite", 5000), ("sqlite", 100_000)]
    if args.fs_100k:
        cases.append(("filesystem", 100_000))
    print("\n### GET /v1/keys over HTTPS (one keep-alive connection, medians)\n")
    print("| store | keys | all pages (limit 1000) ms | first page of 100 ms | "
          "first page, tag filter ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for store, count in cases:
        srv = Server(tmp, f"list-{store}-{count}", pki, env, store=store)
        populate(srv, master, count)
        srv.start()
        try:
            conn = srv.conn()

            def all_pages() -> None:
                token, seen = None, 0
                while True:
                    path = "/v1/keys?limit=1000" + (f"&page_token={token}" if token else "")
                    status, page = call(conn, "GET", path, auditor)
                    assert status == 200, page
                    seen += len(page["keys"])
                    token = page.get("next_page_token")
                    if not token:
                        assert seen == count, seen
                        return
            first = lambda: call(conn, "GET", "/v1/keys?limit=100", auditor)
            tagged = lambda: call(conn, "GET", "/v1/keys?limit=100&tag=t3", auditor)
            all_ms = timed(all_pages, 5) if count <= 5000 else float("nan")
            print(f"| {store} | {count:,} | {all_ms:.1f} | {timed(first, 21):.2f} | "
                  f"{timed(tagged, 21):.2f} |")
        finally:
            srv.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-listing", action="store_true")
    parser.add_argument("--servers",
                        default="durable,no-fsync,access-off,otlp,otlp-5pct,otlp-2pct",
                        help="which FerroHSM configurations beside the baseline (comma list)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--same-processes", action="store_true", help="keep each server's "
                        "process for every round (the default starts a new one each round: "
                        "one process's luck, a persistent ±5-10 %%, is then averaged out)")
    parser.add_argument("--stapling", action="store_true", help="also a server with [tls] "
                        "ocsp_staple = true (pyOpenSSL) against a local openssl ocsp responder")
    parser.add_argument("--fs-100k", action="store_true", help="also 100k keys on the filesystem "
                        "store (creating them takes about a minute)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    os.sched_setaffinity(0, {1})  # wrk and this client on core 1; servers pin themselves to 0
    master, secret = secrets.token_bytes(32), secrets.token_urlsafe(48)
    env = dict(os.environ, FERROHSM_MASTER_KEY=base64.b64encode(master).decode(),
               FERROHSM_JWT_HS256_SECRET=secret,
               FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    with tempfile.TemporaryDirectory(prefix="ferrohsm-bench-") as name:
        tmp = Path(name)
        pki = make_dev_pki(tmp / "pki")
        if not args.skip_throughput:
            throughput(args, tmp, pki, env, secret.encode())
        if not args.skip_listing:
            listing(args, tmp, pki, env, secret.encode(), master)
    return 0


if __name__ == "__main__":
    sys.exit(main())
