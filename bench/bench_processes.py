#!/usr/bin/env python3
"""``[server] processes = 2`` against ``processes = 1``: encrypt throughput and p99 at 16 keep-alive
TLS 1.3 connections, the same build, durable audit on, rounds alternating between the two so they
share the machine's background noise.

Both run the shipped defaults (INFO logging: an access line per request; durable audit in the
file sink) but for the key store, SQLite (the filesystem store belongs to one process), and the
rate limit, raised so the load is not refused. The single process is the best one-process
configuration: pinned to one core, and run on each core in turn, the faster one counting (on the
bench VM the disk's interrupts arrive on core 1; a single pinned process has the kernel run its
audit fsyncs on the other core, [audit] fsync_elsewhere, so core 0 is now the faster one); ``processes = 2`` pins a child per core by default, and is also run unpinned (labelled). ``wrk`` is not pinned: it shares the two cores, as
a client on the same host would. CPU per request sums the children. ``BENCH_SINK=sqlite`` runs
the SQLite audit sink instead (labelled).

Each round starts every group afresh (``--same-processes`` keeps them): two processes of one
configuration differ by a persistent 5-10 % in CPU a request (bench/RESULTS.md, 2026-12-06).

Target (issue 16): processes = 2 at least 1.4 x processes = 1, p99 under 25 ms.

    python3 bench/bench_processes.py [--duration 8] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_http import cpu_seconds, free_port, lua_script, median_round, wait_listening
from bench_server import call

from ferrohsm.auth.authn import issue_token
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import DevPki, make_dev_pki

SINK = os.environ.get("BENCH_SINK", "file")
CONFIG = """
[server]
listen = "127.0.0.1:{port}"
processes = {processes}
{pinning}
[storage]
key_store = "sqlite"
data_dir = "{data}"
[tls]
cert = "{cert}"
key = "{key}"
[audit]
sink = "{sink}"
durable = true
[rate_limit]
requests_per_second = 1000000.0
burst = 1000000
"""


class Group:
    """One `ferrohsm serve` with ``processes`` children (or itself alone for 1)."""

    def __init__(self, tmp: Path, processes: int, pki: DevPki, env: dict[str, str],
                 pinning: str = "", tag: str = "") -> None:
        self.port, self.processes = free_port(), processes
        self.cfg = tmp / f"p{processes}{tag}.toml"
        self.cfg.write_text(CONFIG.format(port=self.port, processes=processes, pinning=pinning,
                                          sink=SINK,
                                          data=tmp / f"p{processes}{tag}", cert=pki.server_cert,
                                          key=pki.server_key))
        self.env, self.pki = env, pki
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "serve", "--config",
                                      str(self.cfg)], env=self.env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL)
        wait_listening(self.port, timeout=60)

    def pids(self) -> list[int]:
        """The serving processes: the children of a supervisor, or the process itself."""
        assert self.proc is not None
        if self.processes == 1:
            return [self.proc.pid]
        kids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
        return kids

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(60)


def wrk(group: Group, url: str, script: Path, connections: int, duration: int
        ) -> dict[str, float]:
    cpu_before = group.cpu()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script),
                          url], check=True, capture_output=True, text=True).stdout
    cpu = group.cpu() - cpu_before
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu_us"] = cpu * 1e6 / max(1, result["requests"])
    return result


def run(args: argparse.Namespace, tmp: Path, pki: DevPki, env: dict[str, str],
        secret: bytes) -> dict[str, list[dict[str, float]]]:
    admin = issue_token(secret, subject="bench-admin", role="administrator")
    service = issue_token(secret, subject="bench-service", role="service")
    plaintext = base64.b64encode(b"x" * 32).decode()
    cores = sorted(os.sched_getaffinity(0))[:2]
    groups = {
        # the best single-process configuration: pinned to one core (no GIL hand-offs), on
        # whichever core serves it best (report() takes the faster)
        **{f"processes = 1 (pin_cpu = {core})": Group(tmp, 1, pki, env, f"pin_cpu = {core}",
                                                     f"c{core}") for core in cores},
        "processes = 2 (shipped: one core each)": Group(tmp, 2, pki, env),
        "processes = 2, pin_processes = false": Group(tmp, 2, pki, env,
                                                      "pin_processes = false", "u"),
    }
    urls: dict[str, str] = {}
    script = tmp / "encrypt.lua"
    script.write_text(lua_script(json.dumps({"plaintext": plaintext}),
                                 {"Authorization": f"Bearer {service}"}))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in groups}
    try:
        for name, group in groups.items():
            group.start()
            conn = http.client.HTTPSConnection("127.0.0.1", group.port, timeout=30,
                                               context=client_context(str(pki.ca_cert)))
            status, key = call(conn, "POST", "/v1/keys", admin,
                               {"algorithm": "aes-256-gcm", "usage": "encrypt"})
            assert status == 201, key
            urls[name] = f"https://127.0.0.1:{group.port}/v1/keys/{key['id']}/encrypt"
            wrk(group, urls[name], script, args.connections, 1)  # warm-up
        for round_no in range(args.rounds):
            for name, group in groups.items():
                if round_no and not args.same_processes:  # new processes each round
                    group.stop()
                    group.start()
                    wrk(group, urls[name], script, args.connections, 1)
                results[name].append(wrk(group, urls[name], script, args.connections,
                                         args.duration))
    finally:
        for group in groups.values():
            group.stop()
    return results


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    print(f"\n### Encrypt 32 B, SQLite store, {SINK} audit sink, durable, {args.connections} "
          f"connections, {args.rounds} x {args.duration} s, median round\n")
    print("| server | req/s | p50 ms | p99 ms | CPU µs/req | errors+non-2xx | rounds (req/s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    med = {}
    for name, rounds in results.items():
        best = med[name] = median_round(rounds)
        errors = sum(int(r["errors"] + r["non2xx"]) for r in rounds)
        print(f"| {name} | {best['rps']:,.0f} | {best['p50_us'] / 1000:.2f} | "
              f"{best['p99_us'] / 1000:.2f} | {best['cpu_us']:.0f} | {errors} | "
              + ", ".join(f"{r['rps']:,.0f}" for r in rounds) + " |")
    singles = [name for name in med if name.startswith("processes = 1")]
    fastest = max(singles, key=lambda name: med[name]["rps"])
    one = med[fastest]
    two, loose = med["processes = 2 (shipped: one core each)"], med[
        "processes = 2, pin_processes = false"]
    print(f"\nthe best single process: {fastest}")
    print(f"ratio processes=2 / processes=1: {two['rps'] / one['rps']:.2f} (target >= 1.4); "
          f"p99 {two['p99_us'] / 1000:.1f} ms (target < 25)")
    print(f"ratio processes=2 unpinned / processes=1: {loose['rps'] / one['rps']:.2f} "
          "(labelled: pin_processes = false)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--same-processes", action="store_true", help="keep each group's "
                        "processes for every round (the default starts new ones each round)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    secret = secrets.token_urlsafe(48)
    env = dict(os.environ,
               FERROHSM_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
               FERROHSM_JWT_HS256_SECRET=secret,
               FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    with tempfile.TemporaryDirectory(prefix="ferrohsm-bench-") as name:
        tmp = Path(name)
        report(run(args, tmp, make_dev_pki(tmp / "pki"), env, secret.encode()), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
