"""The CLI as CI pipelines and operators use it, through the real executable (a subprocess of
``python3 -m ferrohsm.cli.main``) against a real server over real TLS: signing artefacts of any
size by digest, outputs checked before the server acts and written atomically, empty input
refused, a repeated parked command, --output/--field, version/status/whoami/token revoke,
pending approvals in `keys show`, no prefix abbreviations, and one-line causes with their own exit
codes (a busy port, an unwritable path, a token with a line break, a closed pipe) and debug
tracebacks without the token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clikit import create, one_line, unique
from cliresult import Result as Run
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from live import LiveServer

pytestmark = pytest.mark.slow  # a new process per command: about half a second each
ROOT = Path(__file__).resolve().parents[2]
POLICY = """
[policy.tags.dual]
approvals_required = 1
approval_actions = ["unwrap", "destroy"]
approval_ttl_seconds = 3600
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("cli-habits"), config_text=POLICY)
    yield server
    server.close()


class Cli:
    """``ferrohsm ARGS`` as a new process, with a role's token in FERROHSM_TOKEN."""

    def __init__(self, live: LiveServer, home: Path) -> None:
        self.live = live
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        self.env.update({"PYTHONPATH": str(ROOT), "HOME": str(home),
                         "XDG_CONFIG_HOME": str(home / ".config"),
                         "FERROHSM_URL": f"https://127.0.0.1:{live.port}",
                         "FERROHSM_CA_CERT": str(live.pki.ca_cert), "NO_COLOR": "1"})

    def __call__(self, *argv: str, role: str | None = "administrator", stdin: bytes = b"",
                 token: str | None = None, env: dict[str, str] | None = None,
                 stdout: str | None = None) -> Run:
        """``stdout``: a path to send standard output to (/dev/full) instead of capturing it."""
        environment = dict(self.env)
        if token is not None or role is not None:
            environment["FERROHSM_TOKEN"] = token if token is not None else \
                self.live.token(role or "")
        environment.update(env or {})
        with open(stdout or os.devnull, "wb") as sink:
            done = subprocess.run([sys.executable, "-m", "ferrohsm.cli.main", *argv],
                                  input=stdin, stdout=sink if stdout else subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=environment, timeout=120,
                                  check=False)
        run = Run(done.returncode, done.stdout or b"", done.stderr.decode())
        assert "Traceback" not in run.err, run.err
        return run


@pytest.fixture
def cli(live: LiveServer, tmp_path: Path) -> Cli:
    return Cli(live, tmp_path)


def all_records(live: LiveServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = live.rt.audit.read(found[-1]["seq"] if found else 0, 1000)
        found += page
        if len(page) < 1000:
            return found


def audit_actions(live: LiveServer, correlation_id: str) -> list[tuple[str, str]]:
    return [(r["action"], r["outcome"]) for r in all_records(live)
            if r.get("correlation_id") == correlation_id]


# ---- CI signing never loses work ------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "hash_name"), [("ec-p384", "sha384"),
                                                      ("rsa-2048", "sha256")])
def test_an_artefact_over_the_body_limit_signs_by_digest(cli: Cli, tmp_path: Path,
                                                         algorithm: str, hash_name: str) -> None:
    key = create(cli, algorithm, "sign")
    artefact, sig, pub = tmp_path / "app.tar.gz", tmp_path / "app.sig", tmp_path / "pub.pem"
    artefact.write_bytes(os.urandom(3 * 1024 * 1024))  # 3 MiB: over the 1 MiB request limit
    assert cli("sign", key, "--in", str(artefact), "--out", str(sig), role="service").code == 0
    assert cli("keys", "public-key", key, "--out", str(pub)).code == 0
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"] \
        if algorithm.startswith("rsa") else []
    openssl = subprocess.run(["openssl", "dgst", f"-{hash_name}", "-verify", str(pub), *pss,
                              "-signature", str(sig), str(artefact)], capture_output=True,
                             text=True, check=False)
    assert openssl.returncode == 0, openssl.stdout + openssl.stderr
    good = cli("verify", key, "--in", str(artefact), "--signature", str(sig), role="service")
    assert good.code == 0 and good.text.startswith("valid")
    piped = cli("verify", key, "--signature", str(sig), role="service",
                stdin=artefact.read_bytes())  # stdin: hashed both ways, the key's kept
    assert piped.code == 0, piped.err
    digest = hashlib.new(hash_name, artefact.read_bytes()).digest()
    given = cli("verify", key, "--digest", "--signature", str(sig), role="service", stdin=digest)
    assert given.code == 0, given.err


def test_every_413_names_the_way_out(cli: Cli, live: LiveServer, tmp_path: Path) -> None:
    key = create(cli, "ec-p256", "sign")
    over_input = cli("sign", key, "--message", role="service", stdin=b"y" * (100 * 1024))
    assert over_input.code == 1 and one_line(over_input).startswith(
        "ferrohsm: input is larger than the 65536-byte limit: drop --message: by default only "
        "the input's digest is sent"), over_input.err
    body = {"message": base64.b64encode(b"z" * 70000).decode()}  # over the input limit
    status, _, reply = live.call("POST", f"/v1/keys/{key}/sign", body, role="service")
    assert status == 413 and "by its digest" in reply["error"]["message"], reply
    encrypt_key = create(cli, "aes-256-gcm", "encrypt")
    too_big = cli("encrypt", encrypt_key, role="service", stdin=b"p" * (100 * 1024))
    line = one_line(too_big)
    assert too_big.code == 1 and line.startswith(
        "ferrohsm: input is larger than the 65536-byte limit: encrypt large data locally under "
        "a data key instead (envelope encryption: `ferrohsm data-key KEY`) (payload_too_large, "
        "request id "), line
    assert "sign" not in line and "verify" not in line and line.count("data key") == 1
    two_mib = cli("encrypt", encrypt_key, role="service", stdin=b"q" * (2 << 20))
    line = one_line(two_mib)  # over this server's 1 MiB body limit: sent, and its 413 explained
    assert two_mib.code == 1 and "payload_too_large" in line and "under a data key" in line, line


def test_inputs_no_request_could_carry_are_refused_before_sending(
        cli: Cli, live: LiveServer, tmp_path: Path) -> None:
    key = create(cli, "ec-p384", "sign")
    encrypt_key = create(cli, "aes-256-gcm", "encrypt")
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as sparse:  # as base64, over the 64 MiB no server may exceed
        sparse.truncate(50 << 20)
    for argv, advice in ((("sign", key, "--message"), "drop --message"),
                         (("encrypt", encrypt_key), "under a data key")):
        corr = unique("huge")
        run = cli(*argv, "--in", str(huge), "--out", str(tmp_path / "o"), "--correlation-id",
                  corr, role="service")
        line = one_line(run)
        assert run.code == 2 and f"--in {huge} is {50 << 20} bytes: too large for one " \
            "request to any server" in line and "nothing was sent" in line and advice in line, \
            run.err
        assert audit_actions(live, corr) == [] and not (tmp_path / "o").exists()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(200 * 1024))
    digest = cli("sign", key, "--in", str(big), "--digest", role="service")
    assert digest.code == 2 and one_line(digest) == (
        "ferrohsm: --digest: the input is more than 48 bytes, not a digest (32 bytes for SHA-256, 48 "
        "bytes for SHA-384); without --digest the input is hashed here")
    wrong = cli("sign", key, "--digest", role="service", stdin=hashlib.sha256(b"a").digest())
    assert wrong.code == 2 and one_line(wrong) == (
        f"ferrohsm: --digest: key {key} signs SHA-384 digests of 48 bytes; the input is 32 bytes")
    not_sig = cli("verify", key, "--in", str(big), "--signature", str(big), role="service")
    assert not_sig.code == 2 and one_line(not_sig).startswith(
        f"ferrohsm: --signature {big} is not a signature (more than 4096 bytes; "), not_sig.err


def test_unwrap_to_an_unwritable_path_keeps_the_approval(cli: Cli, live: LiveServer,
                                                         tmp_path: Path) -> None:
    kek = create(cli, "aes-256-gcm", "wrap", "dual")
    material = os.urandom(32)
    wrapped = cli("wrap", kek, role="service", stdin=material)
    assert wrapped.code == 0, wrapped.err
    parked = cli("unwrap", kek, role="service", stdin=wrapped.out)
    assert parked.code == 1 and "approval required" in parked.err
    approval = parked.err.split("--approval-id ")[1].split()[0]
    approver = live.token("administrator", "approver-2")
    assert live.call("POST", f"/v1/approvals/{approval}/approve", {}, token=approver)[0] == 200
    again = cli("unwrap", kek, role="service", stdin=wrapped.out)  # repeated, no --approval-id
    assert again.code == 1 and one_line(again).startswith(
        f"ferrohsm: already approved: this request is approval {approval} (1 of 1 approvals"), \
        again.err
    assert f"repeating the command with --approval-id {approval} (" in again.err
    lost = cli("unwrap", kek, "--approval-id", approval, "--out", "/nonexistent/dir/key.bin",
               role="service", stdin=wrapped.out)
    assert lost.code == 3, lost.err
    assert "cannot write /nonexistent/dir/key.bin" in one_line(lost)
    assert live.call("GET", f"/v1/approvals/{approval}")[2]["state"] == "approved"  # not used
    out = tmp_path / "key.bin"
    out.write_bytes(b"old contents")
    done = cli("unwrap", kek, "--approval-id", approval, "--out", str(out), role="service",
               stdin=wrapped.out)
    assert done.code == 0, done.err
    assert out.read_bytes() == material and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert live.call("GET", f"/v1/approvals/{approval}")[2]["state"] == "executed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.bin"]  # no temporary file left


def test_outputs_are_opened_before_the_server_acts(cli: Cli, live: LiveServer,
                                                   tmp_path: Path) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    signer = create(cli, "ec-p256", "sign")
    for argv in (("encrypt", key), ("sign", signer)):
        corr = unique("lost")
        for target in ("/nonexistent/out", str(tmp_path)):  # a missing directory; a directory
            run = cli(*argv, "--out", target, "--correlation-id", corr, role="service",
                      stdin=b"data")
            assert run.code == 3 and "nothing was sent to the server" in one_line(run)
        assert audit_actions(live, corr) == []  # no success was recorded for a lost answer
    ciphertext = tmp_path / "card.enc"
    assert cli("encrypt", key, "--out", str(ciphertext), role="service", stdin=b"4111").code == 0
    assert stat.S_IMODE(ciphertext.stat().st_mode) == 0o644 & ~_umask()
    plain = tmp_path / "card.txt"
    assert cli("decrypt", key, "--in", str(ciphertext), "--out", str(plain),
               role="service").code == 0
    assert plain.read_bytes() == b"4111" and stat.S_IMODE(plain.stat().st_mode) == 0o600
    assert cli("encrypt", key, "--out", os.devnull, role="service", stdin=b"x").code == 0
    kept = tmp_path / "kept.enc"
    kept.write_text("old")
    kept.chmod(0o640)
    assert cli("encrypt", key, "--out", str(kept), role="service", stdin=b"new").code == 0
    assert kept.read_text().startswith("fhsm:v1:") and stat.S_IMODE(kept.stat().st_mode) == 0o640


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_encrypt_and_sign_refuse_empty_input(cli: Cli, live: LiveServer) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    signer = create(cli, "ec-p256", "sign")
    signature = tmp_signature(cli, signer)
    for argv in (("encrypt", key), ("sign", signer, "--out", os.devnull),
                 ("verify", signer, "--signature", signature)):  # verify: an outside tester
        corr = unique("empty")
        refused = cli(*argv, "--correlation-id", corr, role="service", stdin=b"")
        assert refused.code == 2 and "standard input is empty" in one_line(refused)
        assert "--allow-empty" in refused.err
        assert audit_actions(live, corr) == []
        allowed = cli(*argv, "--allow-empty", role="service", stdin=b"")
        assert allowed.code == 0, allowed.err


def tmp_signature(cli: Cli, signer: str) -> str:
    """A signature of the empty message, in a file that lasts the test session."""
    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "empty.sig")
    signed = cli("sign", signer, "--allow-empty", "--out", path, role="service", stdin=b"")
    assert signed.code == 0, signed.err
    return path


def test_a_repeated_parked_command_gets_its_pending_approval(cli: Cli, live: LiveServer) -> None:
    kek = create(cli, "aes-256-gcm", "wrap", "dual")
    wrapped = cli("wrap", kek, role="service", stdin=os.urandom(32)).out
    ids, corrs = [], [unique("park"), unique("repeat")]
    for corr in corrs:
        parked = cli("unwrap", kek, "--json", "--correlation-id", corr, role="service",
                     stdin=wrapped)
        assert parked.code == 1
        ids.append(parked.json()["approval"]["id"])
    assert ids[0] == ids[1]
    assert audit_actions(live, corrs[0]) == [("approval.requested", "intent"),
                                             ("approval.requested", "success")]
    assert audit_actions(live, corrs[1]) == [("crypto.unwrap", "denied")]  # no second approval
    by_field = cli("unwrap", kek, "--field", "approval.id", role="service", stdin=wrapped)
    assert by_field.code == 1 and by_field.text == f"{ids[0]}\n"  # ID=$(… --field approval.id)
    key_id = cli("keys", "show", kek, "--field", "id").text.strip()
    pending = [a for a in live.call("GET", "/v1/approvals?state=pending")[2]["approvals"]
               if a["key_id"] == key_id]
    assert [a["id"] for a in pending] == [ids[0]]
    other = live.token("service", "another-service")
    again = cli("unwrap", kek, "--json", token=other, role=None, stdin=wrapped)
    assert again.json()["approval"]["id"] != ids[0]  # another requester: its own approval
    different = cli("unwrap", kek, "--json", role="service",
                    stdin=cli("wrap", kek, role="service", stdin=os.urandom(32)).out)
    assert different.json()["approval"]["id"] != ids[0]  # another request: its own approval
    shown = cli("keys", "show", kek)
    assert shown.code == 0 and "Pending approvals: 3" in shown.text and ids[0] in shown.text
    assert "Pending approvals: not visible to this role" in \
        cli("keys", "show", kek, role="service").text  # may not list them: said, not hidden


# ---- output formats ---------------------------------------------------------------------------


def test_json_is_the_apis_json_and_field_prints_one_value(cli: Cli, live: LiveServer) -> None:
    name = create(cli, "aes-256-gcm", "encrypt", "formats")
    listed = cli("keys", "list", "--tag", "formats", "--json")
    api = live.call("GET", "/v1/keys?tag=formats")[2]
    assert listed.json() == api and "total" in listed.json()
    assert cli("keys", "list", "--tag", "formats", "--output", "json").json() == api
    text = cli("keys", "list", "--tag", "formats", "--output", "text").text.splitlines()
    assert len(text) == 1 and text[0].split("\t")[0] == name
    assert cli("keys", "list", "--tag", "formats", "--field", "name").text == f"{name}\n"
    assert cli("keys", "list", "--tag", "formats", "--field", "total").text == "1\n"
    none = cli("keys", "list", "--tag", "no-such-tag-anywhere", "--field", "name")
    assert none.code == 0 and none.text == ""  # nothing matched: no line, not a usage error
    # a member of an answer whose one list is empty is still printed
    assert cli("keys", "list", "--tag", "no-such-tag-anywhere", "--field", "total").text == "0\n"
    assert cli("keys", "show", name, "--field", "versions.0.state").text == "enabled\n"
    assert cli("keys", "show", name, "--field", "tags").json() == ["formats"]
    missing = cli("keys", "show", name, "--field", "nope")
    assert missing.code == 2 and "no such member" in one_line(missing)
    detail = cli("keys", "show", name, "--output", "text").text
    assert f"name\t{name}\n" in detail and "versions.0.version\t1\n" in detail
    version = cli("encrypt", name, "--field", "key_version", role="service", stdin=b"x")
    assert version.text == "1\n"
    # the API's members in the API's order, its text as sent (not \u-escaped)
    assert cli("keys", "update", name, "--description", "caf\u00e9 \u2713").code == 0
    shown = cli("keys", "show", name, "--json")
    api_key = live.call("GET", f"/v1/keys/{name}")[2]
    assert list(shown.json()) == list(api_key)
    assert '"description": "caf\u00e9 \u2713"' in shown.out.decode()


# ---- operator commands ------------------------------------------------------------------------


def test_version_with_and_without_a_server(cli: Cli, tmp_path: Path) -> None:
    from ferrohsm import __version__
    both = cli("version", "--json")
    assert both.code == 0 and both.json()["client"] == __version__
    assert both.json()["server"] == __version__
    alone = cli("version", env={"FERROHSM_URL": ""})
    assert alone.code == 0 and alone.text == f"client  ferrohsm {__version__}\n"
    broken = tmp_path / "broken.toml"
    broken.write_text("[default\n")  # a profile that does not parse is said, not taken for none
    said = cli("version", env={"FERROHSM_URL": "", "FERROHSM_PROFILE_FILE": str(broken)})
    assert said.code == 2 and "server  unknown: profile file" in said.text, said.err
    down = cli("version", "--server", "https://127.0.0.1:9")
    assert down.code == 1 and "server  unknown" in down.text


def test_status_reports_health_seal_state_and_certificate_expiry(cli: Cli,
                                                                 live: LiveServer) -> None:
    run = cli("status", "--json", role=None)
    assert run.code == 0, run.err
    status = run.json()
    assert status["status"] == "ok" and status["sealed"] is False
    cert = x509.load_pem_x509_certificate(Path(live.pki.server_cert).read_bytes())
    assert status["certificate"]["not_after"] == \
        cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["certificate"]["source"] == "tls" and status["certificate"]["days_left"] > 0
    table = cli("status").text
    assert "Health       ok" in table and "Sealed       no" in table and "days left" in table


def test_whoami_shows_the_token_as_the_server_reads_it(cli: Cli, live: LiveServer) -> None:
    token = live.token("service", "ci-builder", tags=["release"], ttl=300)
    run = cli("whoami", "--json", token=token)
    assert run.code == 0, run.err
    me = run.json()
    assert (me["subject"], me["role"], me["tags"]) == ("ci-builder", "service", ["release"])
    assert me["expires_at"] and me["jti"]
    assert "Tags      release" in cli("whoami", token=token).text
    assert ("token.whoami", "success") in [(r["action"], r["outcome"]) for r in
                                           all_records(live) if r.get("actor") == "ci-builder"]
    assert live.call("GET", "/v1/whoami", role=None)[0] == 401


def test_token_revoke_by_jti(cli: Cli, live: LiveServer) -> None:
    jti = unique("leaked")
    leaked = live.token("service", "leaky", jti=jti)
    assert cli("whoami", token=leaked).code == 0
    refused = cli("token", "revoke", jti, role="operator")
    assert refused.code == 1 and "(forbidden, request id" in one_line(refused)
    pasted = cli("token", "revoke", leaked)  # the whole token: refused, not echoed
    assert pasted.code == 2 and "whoami --field jti" in one_line(pasted)
    assert leaked not in pasted.err + pasted.text
    revoked = cli("token", "revoke", jti)
    assert revoked.code == 0 and f"Revoked token {jti}" in revoked.text
    after = cli("whoami", token=leaked)
    assert after.code == 1 and "(unauthenticated, request id" in one_line(after)


# ---- habits: abbreviations, one-line causes ---------------------------------------------------


def test_flags_are_never_abbreviated(cli: Cli) -> None:
    run = cli("keys", "create", "--alg", "aes-256-gcm", "--usage", "encrypt")
    assert run.code == 2 and "--algorithm" in run.err  # the required flag is missing
    assert cli("keys", "list", "--stat", "active").code == 2


def test_an_unknown_flag_is_refused_by_its_own_command(cli: Cli) -> None:
    run = cli("keys", "rotate", "some-key", "--nope", "1")
    assert run.code == 2 and run.err.startswith("usage: ferrohsm keys rotate ")
    assert run.err.strip().splitlines()[-1] == (
        "ferrohsm keys rotate: error: unrecognized argument: --nope")  # named first
    top = cli("--nope", role=None)
    assert top.code == 2 and "ferrohsm: error: unrecognized argument: --nope" in top.err


def test_a_busy_port_is_one_line_and_exit_4(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = cli("quickstart", "--data-dir", str(tmp_path / "data"), "--listen",
                  f"127.0.0.1:{port}", role=None)
    assert run.code == 4, run.err
    assert run.err.strip().splitlines()[-1] == (
        f"ferrohsm: cannot listen on 127.0.0.1:{port}: the address is already in use (another "
        "server, or an old one still running?): stop it or choose another --listen port")


@pytest.mark.parametrize("listen", ["badhost.invalid:1", "999.1.1.1:8443"])
def test_a_listen_host_that_does_not_resolve_is_one_line_and_exit_4(
        cli: Cli, tmp_path: Path, listen: str) -> None:
    run = cli("quickstart", "--data-dir", str(tmp_path / "data"), "--listen", listen, role=None)
    assert run.code == 4, run.err
    assert one_line(run) == f"ferrohsm: cannot listen on {listen}: host not found"


def test_a_malformed_listen_flag_is_named_as_the_flag(cli: Cli, tmp_path: Path) -> None:
    run = cli("quickstart", "--data-dir", str(tmp_path / "data"), "--listen", "nowhere", role=None)
    assert run.code == 2, run.err
    assert one_line(run) == ("ferrohsm: configuration error: flag --listen: [server].listen "
                             "must be HOST:PORT, got 'nowhere'")


def test_quickstart_on_ipv6_prints_a_bracketed_url_the_cli_uses(cli: Cli, tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-m", "ferrohsm.cli.main", "quickstart",
                           "--data-dir", str(tmp_path / "data"), "--listen", "[::1]:0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=cli.env) as proc:
        try:
            assert proc.stdout is not None
            exports = dict(proc.stdout.readline().strip().removeprefix("export ").split("=", 1)
                           for _ in range(3))
            assert exports["FERROHSM_URL"].startswith("https://[::1]:"), exports
            run = cli("keys", "list", "--json", token=exports["FERROHSM_TOKEN"],
                      env={k: v for k, v in exports.items() if k != "FERROHSM_TOKEN"})
            assert run.code == 0, run.err
        finally:
            proc.terminate()


def test_an_unwritable_export_path_is_exit_3(cli: Cli) -> None:
    run = cli("audit", "export", "--out", "/proc/ferrohsm/audit.jsonl", role="auditor")
    assert run.code == 3 and "cannot write /proc/ferrohsm/audit.jsonl" in one_line(run)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_and_exit_3_or_5(cli: Cli, live: LiveServer, tmp_path: Path) -> None:
    signer = create(cli, "ec-p256", "sign")
    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"artefact")
    exported = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "--out", str(exported), role="auditor").code == 0
    full = "No space left on device (ENOSPC)"
    argv: tuple[str, ...]
    run = cli("audit", "report", str(exported), stdout="/dev/full")  # offline: nothing sent
    assert run.code == 3, run.err
    assert one_line(run) == f"ferrohsm: cannot write standard output: {full}"
    # after the server answered: exit 5, and the line says the server acted
    lost = "the server carried out the request, but its answer could not be written to"
    for argv in (("keys", "list"), ("keys", "show", signer, "--json"), ("whoami",)):
        run = cli(*argv, stdout="/dev/full")
        assert run.code == 5, (argv, run.err)
        assert one_line(run).startswith(f"ferrohsm: {lost} standard output: {full}")
    for argv, role in ((("audit", "export", "--out", "/dev/full"), "auditor"),
                       (("sign", signer, "--in", str(artefact), "--out", "/dev/full"),
                        "service")):
        run = cli(*argv, role=role)
        assert run.code == 5, (argv, run.err)
        assert one_line(run).startswith(f"ferrohsm: {lost} /dev/full: {full}")


def test_tokens_with_line_breaks(cli: Cli, live: LiveServer, tmp_path: Path) -> None:
    token = live.token("auditor", "newline-auditor")
    assert cli("whoami", "--field", "subject", token=token + "\n").text == "newline-auditor\n"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\r\n")
    via_file = cli("whoami", "--field", "subject", role=None,
                   env={"FERROHSM_TOKEN_FILE": str(token_file)})
    assert via_file.code == 0 and via_file.text == "newline-auditor\n"
    broken = cli("whoami", token=token[:20] + "\n" + token[20:])
    assert broken.code == 2 and "contains a line break inside it" in one_line(broken)
    assert token[:20] not in broken.err


def test_a_closed_pipe_is_one_line_and_exit_141(cli: Cli, live: LiveServer,
                                                tmp_path: Path) -> None:
    exported = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "--out", str(exported), role="auditor").code == 0
    for argv in (["audit", "report", str(exported)], ["keys", "list"]):
        env = dict(cli.env, FERROHSM_TOKEN=live.token())
        with subprocess.Popen([sys.executable, "-m", "ferrohsm.cli.main", *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()  # the reader leaves before the first line
            err = proc.stderr.read().decode()
            assert proc.wait(timeout=60) == 141, err
        assert err == "ferrohsm: output closed early by the reader (broken pipe); stopped\n"


def test_debug_tracebacks_never_print_the_token(cli: Cli, live: LiveServer,
                                                tmp_path: Path) -> None:
    """A bug whose message quotes the Authorization header (simulated in the transport, the one
    thing faked here: an unexpected error is by definition one nobody planned for)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import http.client\n"
        "original = http.client.HTTPConnection.putheader\n"
        "def putheader(self, header, *values):\n"
        "    if header.lower() == 'authorization':\n"
        "        raise ValueError(f'Invalid header value {values!r} for {header}')\n"
        "    return original(self, header, *values)\n"
        "http.client.HTTPConnection.putheader = putheader\n")
    token = live.token("administrator", "debugging-admin")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "FERROHSM_DEBUG": "1"}
    quiet = cli("keys", "list", token=token, env={**env, "FERROHSM_DEBUG": ""})
    assert quiet.code == 1 and "unexpected ValueError" in one_line(quiet)
    done = subprocess.run([sys.executable, "-m", "ferrohsm.cli.main", "keys", "list", "--token",
                           token], capture_output=True, text=True, timeout=60, check=False,
                          env={**cli.env, **env, "FERROHSM_TOKEN": token})
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: Invalid header value" in done.stderr
    assert "[REDACTED]" in done.stderr
    assert token not in done.stderr and token.split(".")[1] not in done.stderr


def test_status_reports_an_expired_server_certificate_as_such(cli: Cli, tmp_path: Path) -> None:
    """An expired server certificate is what status exists to report: it said "unreachable"
    and pointed at the CA file. The date is read over a handshake that sends nothing."""
    import datetime as dt
    import ssl
    import threading

    from certkit import TestCA
    ca = TestCA(tmp_path / "ca")
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    leaf = ca.leaf(["127.0.0.1"], not_before=ended - dt.timedelta(days=30), not_after=ended)
    (tmp_path / "leaf.pem").write_bytes(leaf.chain_pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        listener.settimeout(20)
        for _ in range(8):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    received.append(tls.recv(100))
            except OSError:
                pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:
        run = cli("status", "--json", "--server", url, "--ca-cert", str(tmp_path / "ca.pem"))
        assert run.code == 1, run.err
        status = run.json()
        expired_at = ended.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert status["status"] == "certificate_expired"
        assert status["certificate"]["not_after"] == expired_at
        assert status["certificate"]["days_left"] == -1  # a day and a few seconds ago
        assert status["sealed"] is None  # not reached: not said to be unsealed
        assert f"expired at {expired_at}" in status["reason"]
        assert all(not data for data in received)  # nothing, a token least of all, was sent
    finally:
        listener.close()


def test_an_expired_ca_is_not_reported_as_the_servers_certificate(cli: Cli,
                                                                  tmp_path: Path) -> None:
    """OpenSSL says "certificate has expired" for any certificate of the chain: a server whose
    own certificate is in date was reported expired, at a date a year ahead."""
    import datetime as dt
    import ssl
    import threading

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    today = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "expired test CA")])
    ca = (cx509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(cx509.random_serial_number())
          .not_valid_before(today - dt.timedelta(days=60))
          .not_valid_after(today - dt.timedelta(days=1))
          .add_extension(cx509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (cx509.CertificateBuilder()
            .subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(cx509.random_serial_number())
            .not_valid_before(today - dt.timedelta(days=30))
            .not_valid_after(today + dt.timedelta(days=300))
            .add_extension(cx509.SubjectAlternativeName(
                [cx509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        listener.settimeout(20)
        for _ in range(6):
            try:
                conn, _ = listener.accept()
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.recv(100)
            except OSError:
                continue
    threading.Thread(target=serve, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:
        run = cli("status", "--json", "--server", url, "--ca-cert", str(tmp_path / "ca.pem"))
        assert run.code == 1
        assert "certificate_expired" not in run.out.decode() and "expired at" not in run.err
        assert "check the CA certificate" in run.err
    finally:
        listener.close()
