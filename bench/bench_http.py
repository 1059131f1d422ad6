"""Benchmark HardenedHTTPServer against the stdlib baseline (bench/echo_server.py) with wrk.

Both servers run the same echo handler (parse the JSON body, reply a fixed JSON body) over TLS 1.3
(or plain HTTP with --plain), each in its own process pinned to one core, while wrk runs pinned to
the other core with 16 keep-alive connections (GIL hand-offs between cores cost ~40% here).
Rounds alternate between the servers and the median round is reported, with the ratio. Server CPU
time per request (from /proc) is reported too: on a machine shared with other work it is steadier
than req/s, which drops whenever something else takes the server's core.

    python3 bench/bench_http.py [--duration 10] [--rounds 3] [--connections 16] [--plain]

Needs /usr/bin/wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = '{"plaintext":"aGVsbG8gd29ybGQ=","aad":"Y29udGV4dA=="}'
LUA_TEMPLATE = """
wrk.method = "POST"
wrk.body = 'BODY'
wrk.headers["Content-Type"] = "application/json"
HEADERS
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def lua_script(body: str, headers: dict[str, str] | None = None) -> str:
    """A wrk script POSTing ``body`` that prints one RESULT line of JSON when done."""
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    return LUA_TEMPLATE.replace("BODY", body).replace("HEADERS", extra)


LUA = lua_script(BODY)


def serve_hardened(argv: list[str]) -> None:
    """Child-process mode: HardenedHTTPServer with an echo app equivalent to the baseline's."""
    sys.path.insert(0, str(ROOT))
    from echo_server import REPLY  # this file's folder is sys.path[0]

    from ferrohsm.api.http import JSON_CONTENT_TYPE, Request, Response
    from ferrohsm.api.server import HardenedHTTPServer
    from ferrohsm.tls.context import server_context

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--pin-cpu", type=int)
    args = parser.parse_args(argv)
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    headers = [("Content-Type", JSON_CONTENT_TYPE)]

    def echo(request: Request) -> Response:
        json.loads(request.body or b"null")
        return Response(200, REPLY, list(headers))

    provider = None
    if args.cert:
        context = server_context(args.cert, args.key)
        provider = lambda: context
    # The echo handler is as cheap as a crypto call, so it runs on the event loop like one.
    server = HardenedHTTPServer(echo, host="127.0.0.1", port=args.port,
                                ssl_context_provider=provider, inline=lambda request: True)
    server.install_signal_handlers(grace=2)
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def start(kind: str, port: int, cert: Path | None, key: Path | None,
          cpu: int) -> subprocess.Popen[bytes]:
    tls = ["--cert", str(cert), "--key", str(key)] if cert else []
    if kind == "baseline":
        cmd = [sys.executable, str(HERE / "echo_server.py"), "--port", str(port)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve-hardened", "--port", str(port)]
    proc = subprocess.Popen([*cmd, *tls, "--pin-cpu", str(cpu)], stdout=subprocess.DEVNULL)
    wait_listening(port)
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): CPU per request is a steadier figure
    than req/s on a machine shared with other work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, connections: int, duration: int,
            server_pid: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url]
    cpu_before = cpu_seconds(server_pid)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(server_pid) - cpu_before
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu_us"] = cpu * 1e6 / max(1, result["requests"])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-hardened":
        serve_hardened(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="HardenedHTTPServer vs stdlib echo baseline")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--plain", action="store_true", help="plain HTTP instead of TLS 1.3")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--wrk-cpu", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    sys.path.insert(0, str(ROOT))
    from ferrohsm.tls.devpki import make_dev_pki

    os.sched_setaffinity(0, {args.wrk_cpu})  # wrk (our child) inherits the other core
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_dev_pki(Path(tmp) / "pki")
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        cert, key = (None, None) if args.plain else (pki.server_cert, pki.server_key)
        scheme = "http" if args.plain else "https"
        results: dict[str, list[dict[str, float]]] = {"baseline": [], "hardened": []}
        procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for kind in results:  # both run at once; only the one under load uses the core
                port = free_port()
                proc = start(kind, port, cert, key, args.server_cpu)
                procs[kind] = (proc, f"{scheme}://127.0.0.1:{port}/v1/keys/k/encrypt")
                run_wrk(procs[kind][1], script, args.connections, 2, proc.pid)  # warm-up
            for _ in range(args.rounds):  # alternate, so both see the same background noise
                for kind, rounds in results.items():
                    proc, url = procs[kind]
                    rounds.append(run_wrk(url, script, args.connections, args.duration,
                                          proc.pid))
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)
        report(results, args)


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median req/s (a real round, not an average of rounds)."""
    return sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    summary = {}
    print(f"{'server':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} "
          f"{'errors':>7}  "
          f"({args.connections} conns, {args.rounds}x{args.duration}s, "
          f"{'plain' if args.plain else 'TLS 1.3'}, median round)")
    for kind, rounds in results.items():
        best = median_round(rounds)
        summary[kind] = best
        errors = sum(r["errors"] + r["non2xx"] for r in rounds)
        print(f"{kind:10} {best['rps']:9.0f} {best['p50_us'] / 1000:8.2f} "
              f"{best['p99_us'] / 1000:8.2f} {best['cpu_us']:10.1f} {errors:7d}   rounds: "
              + ", ".join(f"{r['rps']:.0f}" for r in rounds))
    ratio = summary["hardened"]["rps"] / summary["baseline"]["rps"]
    spread = statistics.pstdev(r["rps"] for r in results["hardened"])
    cpu_ratio = summary["baseline"]["cpu_us"] / summary["hardened"]["cpu_us"]
    print(f"ratio hardened/baseline: {ratio:.2f} req/s, {cpu_ratio:.2f} by CPU per request "
          f"(hardened round spread ±{spread:.0f} req/s)")


if __name__ == "__main__":
    main()
