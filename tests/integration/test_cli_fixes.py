"""Defects an outside tester found in the CLI, each through the real entry point (a new process
of ``python3 -m ferrohsm.cli.main``) against a real server over real TLS: checks made before
anything is sent (an unwritable backup archive, a closed standard output, arguments that are not
UTF-8, a missing token, unknown flags), an output lost after the server acted (exit 5), flags
before the command, and the messages of size, seal and approval states.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clikit import create, one_line, unique
from cliresult import Result as Run
from live import LiveServer

pytestmark = pytest.mark.slow  # a new process per command
ROOT = Path(__file__).resolve().parents[2]
POLICY = """
[policy.tags.dual]
approvals_required = 1
approval_actions = ["unwrap", "encrypt", "public-key"]
approval_ttl_seconds = 3600
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("cli-fixes"), config_text=POLICY)
    yield server
    server.close()


def _close_stdout() -> None:
    os.close(1)


class Cli:
    """``ferrohsm ARGS`` as a new process, with a role's token in FERROHSM_TOKEN."""

    def __init__(self, live: LiveServer, home: Path) -> None:
        self.live = live
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        self.env.update({"PYTHONPATH": str(ROOT), "HOME": str(home),
                         "XDG_CONFIG_HOME": str(home / ".config"),
                         "FERROHSM_URL": f"https://127.0.0.1:{live.port}",
                         "FERROHSM_CA_CERT": str(live.pki.ca_cert), "NO_COLOR": "1"})

    def __call__(self, *argv: str | bytes, role: str | None = "administrator",
                 stdin: bytes = b"", closed_stdout: bool = False,
                 env: dict[str, str] | None = None, stdout: int | None = None) -> Run:
        environment = dict(self.env)
        if role is not None:
            environment["FERROHSM_TOKEN"] = self.live.token(role)
        environment.update(env or {})
        own = closed_stdout or stdout is not None  # stdout not captured here
        done = subprocess.run([sys.executable, "-m", "ferrohsm.cli.main", *argv], input=stdin,
                              capture_output=not own, stdout=stdout,
                              stderr=subprocess.PIPE if own else None,
                              preexec_fn=_close_stdout if closed_stdout else None,
                              env=environment, timeout=120, check=False)
        run = Run(done.returncode, done.stdout or b"", done.stderr.decode())
        assert "Traceback" not in run.err and "unexpected" not in run.err, run.err
        return run


@pytest.fixture
def cli(live: LiveServer, tmp_path: Path) -> Cli:
    return Cli(live, tmp_path)


def records(live: LiveServer, action: str) -> int:
    found: list[dict[str, Any]] = []
    while True:
        page = live.rt.audit.read(found[-1]["seq"] if found else 0, 1000)
        found += page
        if len(page) < 1000:
            return sum(1 for r in found if r["action"] == action)


def approve(live: LiveServer, approval: str) -> None:
    approver = live.token("administrator", "approver-2")
    assert live.call("POST", f"/v1/approvals/{approval}/approve", {}, token=approver)[0] == 200


def parked_id(run: Run) -> str:
    assert run.code == 1 and "approval" in run.err, run.err
    return run.err.split("--approval-id ")[1].split()[0]


# ---- 1, 9: backup checks its archive before asking; same exit codes as other commands ----


def test_backup_to_an_unwritable_path_asks_nothing(cli: Cli, live: LiveServer,
                                                   tmp_path: Path) -> None:
    before = records(live, "system.backup")
    for target in ("/nonexistent/x.fhsmbak", str(tmp_path)):
        run = cli("backup", "--out", target)
        assert run.code == 3, run.err
        assert "no backup was taken" in one_line(run)
    taken = tmp_path / "taken.fhsmbak"
    taken.write_bytes(b"old")
    run = cli("backup", "--out", str(taken))
    assert run.code == 3 and "exists" in one_line(run) and taken.read_bytes() == b"old"
    assert cli("backup", "--out", "").code == 2
    for stdout in ("-", "/dev/stdout"):  # '-' was taken for a file's name
        run = cli("backup", "--out", stdout)
        assert run.code == 2 and "never to standard output" in one_line(run), run.err
    assert not Path("-").exists()
    assert records(live, "system.backup") == before
    missing = cli("restore", str(tmp_path / "missing.fhsmbak"), "--data-dir", str(tmp_path))
    assert missing.code == 2 and "cannot read" in one_line(missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.fhsmbak"]


def test_a_backup_removes_what_a_killed_one_left(cli: Cli, live: LiveServer,
                                                  tmp_path: Path) -> None:
    """Crash tester: a backup killed with -9 left its empty temporary file, and no later run
    removed it. One of a process that is gone is removed; a running backup's is kept."""
    from ferrohsm.cli.backup import _HOST
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f".nightly.fhsmbak.{_HOST}-{gone.pid}.tmp"
    running = tmp_path / f".nightly.fhsmbak.{_HOST}-{os.getpid()}.tmp"
    elsewhere = tmp_path / f".nightly.fhsmbak.other-host-{gone.pid}.tmp"  # NFS: not ours to judge
    for leftover in (stale, running, elsewhere):
        leftover.write_bytes(b"")
    run = cli("backup", "--out", str(tmp_path / "nightly.fhsmbak"))
    assert run.code == 0, run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, elsewhere.name, "nightly.fhsmbak"])


# ---- 2: a closed standard output is found before anything is sent -------------------------


def test_a_closed_stdout_is_refused_before_the_request(cli: Cli, live: LiveServer) -> None:
    key = create(cli, "aes-256-gcm", "encrypt", "dual")
    signer = create(cli, "ec-p256", "sign")
    parked = cli("encrypt", key, role="service", stdin=b"secret")
    approval = parked_id(parked)
    approve(live, approval)
    for argv, role in ((("encrypt", key, "--approval-id", approval), "service"),
                       (("sign", signer), "service"), (("whoami",), "service"),
                       (("version",), "service"), (("unwrap", key), "service")):
        run = cli(*argv, role=role, stdin=b"secret", closed_stdout=True)
        assert run.code == 3, (argv, run.err)
        assert one_line(run).startswith("ferrohsm: standard output is closed: nothing was sent")
    # the approval was not spent: it still runs, once
    assert live.call("GET", f"/v1/approvals/{approval}")[2]["state"] == "approved"
    assert cli("encrypt", key, "--approval-id", approval, role="service",
               stdin=b"secret").code == 0


def test_a_pipe_whose_reader_has_gone_is_refused_before_the_request(
        cli: Cli, live: LiveServer) -> None:
    """``ferrohsm unwrap … | tpyo``: the shell's reader failed at once, so the answer (key
    material, a signature made under an approval) would be lost after the server acted."""
    key = create(cli, "aes-256-gcm", "encrypt", "dual")
    signer = create(cli, "ec-p256", "sign")
    parked = cli("encrypt", key, role="service", stdin=b"secret")
    approval = parked_id(parked)
    approve(live, approval)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command starts
    try:
        for argv in (("encrypt", key, "--approval-id", approval), ("sign", signer)):
            run = cli(*argv, role="service", stdin=b"secret", stdout=write_end)
            assert run.code == 3, (argv, run.err)
            assert one_line(run).startswith(
                "ferrohsm: the reader of standard output has gone (a closed pipe): nothing was "
                "sent"), run.err
        read = cli("whoami", role="service", stdout=write_end)  # only reads: as `… | head`
        assert read.code == 141, read.err
    finally:
        os.close(write_end)
    assert live.call("GET", f"/v1/approvals/{approval}")[2]["state"] == "approved"  # unspent
    assert records(live, "key.sign") == 0


# ---- 3: arguments that are not UTF-8, header values with control characters -----------------


@pytest.mark.parametrize(("argv", "named"), [
    ((b"keys", b"show", b"\xff\xfe"), "argument KEY"),
    ((b"encrypt", b"k", b"--aad", b"\xff"), "--aad"),
    ((b"keys", b"list", b"--correlation-id", b"\xff"), "--correlation-id"),
    ((b"keys", b"list", b"--tag", b"\xff"), "--tag"),
    ((b"approvals", b"show", b"\xff"), "argument ID"),
    ((b"keys", b"list", b"--correlation-id", b"a\nb"), "--correlation-id"),
    ((b"encrypt", b"k", b"--approval-id", b"a\tb"), "--approval-id"),
])
def test_bad_argument_bytes_are_named_before_sending(cli: Cli, argv: tuple[bytes, ...],
                                                     named: str) -> None:
    run = cli(*argv, stdin=b"x")
    assert run.code == 2, run.err
    assert one_line(run).startswith(f"ferrohsm: {named}: the value "), run.err


def test_a_file_name_that_is_not_utf8_is_still_a_file_name(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    out = os.fsencode(tmp_path) + b"/\xff.enc"
    assert cli(b"encrypt", key.encode(), b"--out", out, role="service", stdin=b"x").code == 0
    assert Path(os.fsdecode(out)).read_text().startswith("fhsm:v")


# ---- 4: an answer lost after the server acted is exit 5, and says so ---------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_output_lost_after_the_server_acted_is_exit_5(cli: Cli, live: LiveServer) -> None:
    kek = create(cli, "aes-256-gcm", "wrap", "dual")
    wrapped = cli("wrap", kek, role="service", stdin=os.urandom(32))
    approval = parked_id(cli("unwrap", kek, role="service", stdin=wrapped.out))
    approve(live, approval)
    lost = cli("unwrap", kek, "--approval-id", approval, "--out", "/dev/full", role="service",
               stdin=wrapped.out)
    assert lost.code == 5, lost.err
    line = one_line(lost)
    assert "the server carried out the request" in line and "/dev/full" in line
    assert "nothing was sent" not in line and "approval-id given is spent" in line
    assert live.call("GET", f"/v1/approvals/{approval}")[2]["state"] == "executed"
    help_text = cli("--help", role=None).text
    assert "5   the server carried out the request" in help_text


# ---- 9, 10, 14: no token; flags before the command; unknown flags first ----------------------


def test_no_token_is_a_local_usage_error(cli: Cli, live: LiveServer) -> None:
    run = cli("keys", "list", role=None)
    assert run.code == 2 and one_line(run).startswith("ferrohsm: no token:"), run.err
    assert cli("status", role=None).code == 0  # /healthz needs none


def test_client_flags_before_the_command(cli: Cli, live: LiveServer) -> None:
    key = create(cli, "ec-p256", "sign")
    url = f"https://127.0.0.1:{live.port}"
    for argv in (("--json", "keys", "show", key), ("--server", url, "keys", "show", key, "--json"),
                 (f"--server={url}", "--output", "json", "keys", "show", key)):
        run = cli(*argv)
        assert run.code == 0, (argv, run.err)
        assert run.json()["name"] == key
    assert cli("--field", "name", "keys", "show", key).text == f"{key}\n"


def test_an_abbreviated_flag_is_named_first(cli: Cli) -> None:
    run = cli("keys", "create", "--alg=ec-p256", "--usage", "sign")
    assert run.code == 2
    last = run.err.strip().splitlines()[-1]
    assert "unrecognized argument: --alg (did you mean --algorithm?)" in last, run.err
    assert "never abbreviated" in last and "required" not in run.err


# ---- 5, 9: --output on audit export, the output flags on audit report/verify and token issue ---


def test_audit_export_refuses_a_format_given_as_its_file(cli: Cli, tmp_path: Path) -> None:
    for fmt in ("table", "json", "text"):
        run = cli("audit", "export", "--output", fmt, role="auditor")
        assert run.code == 2 and f"--out ./{fmt}" in one_line(run), run.err
    exported = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "--output", str(exported), role="auditor").code == 0
    assert exported.read_text().startswith("{")  # --output FILE still writes (a documented spelling)


def test_audit_report_and_verify_take_the_output_flags(cli: Cli, live: LiveServer,
                                                      tmp_path: Path) -> None:
    exported = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "--out", str(exported), role="auditor").code == 0
    count = len(exported.read_text().splitlines())
    assert cli("audit", "report", str(exported), "--field", "records").text == f"{count}\n"
    text = cli("audit", "report", str(exported), "--output", "text").text
    assert f"records\t{count}\n" in text
    assert cli("audit", "report", str(exported), "--output", "json").json()["records"] == count
    key = tmp_path / "hmac.key"
    key.write_text(base64.b64encode(live.secrets.audit_hmac_key).decode())
    key.chmod(0o600)
    verify = ("audit", "verify", str(exported), "--hmac-key-file", str(key), "--no-checkpoints")
    assert cli(*verify, "--field", "ok").text == "true\n"
    assert "ok\ttrue" in cli(*verify, "--output", "text").text
    for bad in (("--field", ""), ("--field", "ok", "--output", "table"),
                ("--json", "--output", "text")):
        run = cli(*verify, *bad)
        assert run.code == 2 and "error:" in run.err, (bad, run.err)


def test_audit_report_of_no_readable_record_is_not_success(cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\nnor this\n")
    run = cli("audit", "report", str(junk))
    assert run.code == 2 and "no readable audit record" in run.err and not run.out


def test_token_issue_json_shows_the_jti_that_revoke_takes(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "qs"
    data.mkdir()
    (data / "jwt.secret").write_text("s" * 40)
    (data / "jwt.secret").chmod(0o600)
    issue = ("token", "issue", "--data-dir", str(data), "--subject", "ci", "--role", "service")
    doc = cli(*issue, "--json").json()
    assert doc["token"].count(".") == 2 and doc["subject"] == "ci"
    assert doc["jti"] and doc["expires_at"].endswith("Z")
    assert cli(*issue, "--field", "jti").text.strip().count("-") == 4
    assert cli(*issue).text.count(".") == 2  # default: the token alone, as before
    missing = cli(*issue, "--field", "nope")
    assert missing.code == 2 and "eyJ" not in missing.err  # never the token in an error


# ---- 13: --field and --output combinations; text is never raw bytes ---------------------------


def test_field_and_output_combinations(cli: Cli) -> None:
    signer = create(cli, "ec-p256", "sign")
    empty = cli("keys", "show", signer, "--field", "")
    assert empty.code == 2 and "--field needs a member name" in one_line(empty)
    both = cli("keys", "show", signer, "--field", "id", "--output", "table")
    assert both.code == 2 and "give one of them" in one_line(both)
    text = cli("sign", signer, "--output", "text", role="service", stdin=b"artefact")
    assert text.code == 0, text.err
    lines = dict(line.split("\t") for line in text.text.splitlines())
    assert base64.b64decode(lines["signature"])[0] == 0x30
    key = create(cli, "aes-256-gcm", "encrypt")
    table = cli("data-key", key, "--no-plaintext", "--output", "table", role="service")
    assert table.code == 0 and table.text.startswith("Key ") and "{" not in table.text


# ---- 6: size errors name the AAD, and the data-key way out -----------------------------------


def test_size_errors_name_the_aad_and_the_way_out(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    run = cli("encrypt", key, "--aad", "a" * 70000, role="service", stdin=b"x")
    assert run.code == 1 and "--aad is 70000 bytes" in one_line(run), run.err
    assert "data key" not in run.err
    big = tmp_path / "big"
    with big.open("wb") as fh:
        fh.truncate((64 << 20) + 1)
    run = cli("encrypt", key, "--in", str(big), role="service")
    assert run.code == 2 and "nothing was sent" in one_line(run)
    assert "`ferrohsm data-key KEY`" in run.err


# ---- 12: verify takes the base64 signature that sign --field signature prints ---------------


def test_verify_accepts_a_base64_signature(cli: Cli, tmp_path: Path) -> None:
    signer = create(cli, "ec-p256", "sign")
    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"artefact")
    sig = tmp_path / "app.sig.b64"
    sig.write_bytes(cli("sign", signer, "--in", str(artefact), "--field", "signature",
                        role="service").out)
    run = cli("verify", signer, "--in", str(artefact), "--signature", str(sig), role="service")
    assert run.code == 0 and run.text.startswith("valid"), run.err
    sig.write_bytes(b"not a signature at all\n")
    bad = cli("verify", signer, "--in", str(artefact), "--signature", str(sig), role="service")
    assert bad.code == 2 and "or its base64 text" in one_line(bad)


def test_sign_and_verify_read_a_fifo_once(cli: Cli, tmp_path: Path) -> None:
    """A FIFO (or <(…)) can be read once: it is hashed both ways in that one read, as standard
    input is, never opened to check and then again (the second open would wait forever for a
    writer that is gone)."""
    signer = create(cli, "ec-p256", "sign")
    fifo = tmp_path / "artefact.fifo"
    payload = os.urandom(70 * 1024)
    sig = tmp_path / "artefact.sig"

    source = tmp_path / "artefact.bin"
    source.write_bytes(payload)

    def through_fifo(*argv: str) -> Run:
        os.mkfifo(fifo)
        writer = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(source), str(fifo)])
        try:
            return cli(*argv, "--in", str(fifo), role="service")
        finally:
            writer.wait(10)
            fifo.unlink()

    signed = through_fifo("sign", signer, "--out", str(sig))
    assert signed.code == 0 and sig.stat().st_size > 0, signed.err
    checked = through_fifo("verify", signer, "--signature", str(sig))
    assert checked.code == 0 and checked.text.startswith("valid"), checked.err


def test_a_digest_input_of_any_size_is_said_not_to_be_one(cli: Cli, tmp_path: Path) -> None:
    """--digest reads no further than a digest's length: a 65 MiB file is "not a digest", not
    "larger than 64 MiB ... drop --message" (a flag nobody gave)."""
    signer = create(cli, "ec-p256", "sign")
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as fh:
        fh.truncate(65 << 20)
    run = cli("sign", signer, "--digest", "--in", str(huge), role="service")
    assert run.code == 2 and "the input is more than 48 bytes, not a digest" in one_line(run)
    assert "--message" not in run.err


# ---- 15: a repeated parked request says the approval was reused ------------------------------


def test_a_repeated_parked_request_says_it_reused_the_approval(cli: Cli) -> None:
    kek = create(cli, "aes-256-gcm", "wrap", "dual")
    wrapped = cli("wrap", kek, role="service", stdin=os.urandom(32)).out
    first = cli("unwrap", kek, role="service", stdin=wrapped)
    ident = parked_id(first)
    assert "request parked as approval" in first.err
    again = cli("unwrap", kek, role="service", stdin=wrapped)
    assert parked_id(again) == ident
    assert f"already parked as approval {ident}" in one_line(again)


# ---- 16: messages that name the real problem ---------------------------------------------------


def test_messages_name_the_real_problem(cli: Cli, tmp_path: Path) -> None:
    signer = create(cli, "ec-p256", "sign")
    proc = cli("sign", signer, "--out", "/proc/version", role="service", stdin=b"x")
    assert proc.code == 3 and "creating a temporary file in /proc" in one_line(proc)
    empty = cli("sign", signer, "--out", "", role="service", stdin=b"x")
    assert empty.code == 2 and "--out is empty" in one_line(empty)
    not_pem = tmp_path / "z.txt"
    not_pem.write_text("z\n")
    cert = cli("whoami", "--client-cert", str(not_pem))
    assert cert.code == 2 and f"client certificate {not_pem}: not a PEM" in one_line(cert)
    url = cli("whoami", "--server", "https://[::1")
    assert url.code == 2 and one_line(url).startswith(
        "ferrohsm: --server/FERROHSM_URL: server URL 'https://[::1' is not a valid URL")
    down = cli("whoami", "--server", "https://127.0.0.1:1")
    assert down.code == 1 and "request id" not in one_line(down)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    quick = cli("quickstart", "--data-dir", str(a_file), "--listen", "127.0.0.1:0", role=None)
    assert quick.code == 2
    assert f"the data directory {a_file} exists and is not a directory" in one_line(quick)


# ---- 17: SIGTERM and SIGINT remove the --out temporary file ------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_leaves_no_temporary_file(cli: Cli, live: LiveServer, tmp_path: Path,
                                           sig: int, code: int) -> None:
    signer = create(cli, "ec-p256", "sign")
    out = tmp_path / "out"
    out.mkdir()
    env = {**cli.env, "FERROHSM_TOKEN": live.token("service")}
    with subprocess.Popen([sys.executable, "-m", "ferrohsm.cli.main", "sign", signer, "--in",
                           "/dev/zero", "--out", str(out / "zz.sig")], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 60
        while not list(out.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(out.iterdir()), "the temporary file was never created"
        time.sleep(0.2)  # hashing /dev/zero by now
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in err
    assert list(out.iterdir()) == []


# ---- the ninth pass: outputs of version, seal, unseal and backup; votes; closed pipes --------


def test_version_with_a_malformed_url_names_it(cli: Cli) -> None:
    run = cli("version", role=None, env={"FERROHSM_URL": "http://127.0.0.1:1"})
    assert run.code == 2, run.err  # a usage error, as for every other command
    assert "client  ferrohsm" in run.text and "must be https://" in run.text


def test_unseal_of_a_server_with_nothing_to_unseal_is_refused(cli: Cli, live: LiveServer) -> None:
    """A custodian who sends a share to a server whose master key is in the environment is
    told it was not used, not that it worked."""
    run = cli("unseal", stdin=b"fhsm1-00000000-1-AAAA\n")
    assert run.code == 1 and "nothing to unseal" in one_line(run), run.err
    assert live.call("POST", "/v1/sys/unseal", {"share": "x"})[0] == 409
    assert live.call("POST", "/v1/sys/unseal", {"share": "x" * 401})[0] == 400


def test_backup_answers_in_json_and_by_field(cli: Cli, tmp_path: Path) -> None:
    run = cli("backup", "--out", str(tmp_path / "a.fhsmbak"), "--json")
    assert run.code == 0, run.err
    answer = json.loads(run.text)
    assert answer["out"] == str(tmp_path / "a.fhsmbak") and len(answer["sha256"]) == 64
    assert answer["header"]["key_count"] >= 0
    digest = cli("backup", "--out", str(tmp_path / "b.fhsmbak"), "--field", "sha256")
    assert digest.code == 0 and len(digest.text.strip()) == 64, digest.err


def test_approvals_show_names_the_votes_and_the_denial(cli: Cli, live: LiveServer) -> None:
    kek = create(cli, "aes-256-gcm", "wrap", "dual")
    wrapped = cli("wrap", kek, role="service", stdin=os.urandom(32)).out
    approval = parked_id(cli("unwrap", kek, role="service", stdin=wrapped))
    denied = cli("approvals", "deny", approval, "--comment", "not during the freeze",
                 role=None, env={"FERROHSM_TOKEN": live.token("administrator", "approver-3")})
    assert denied.code == 0, denied.err
    shown = cli("approvals", "show", approval).text
    assert "Denied by" in shown and "approver-3 (administrator)" in shown
    assert "not during the freeze" in shown
    key_line = next(line for line in shown.splitlines() if line.startswith("Key"))
    assert kek in key_line  # by its name, as the listing shows it (it showed the id alone)


def _with_closed_reader(cli: Cli, *argv: str) -> tuple[int, str]:
    """``ferrohsm ARGV`` whose standard output is a pipe nobody reads any more."""
    reader, writer = os.pipe()
    os.close(reader)
    env = dict(cli.env, FERROHSM_TOKEN=cli.live.token("administrator"))
    try:
        done = subprocess.run([sys.executable, "-m", "ferrohsm.cli.main", *argv], stdout=writer,
                              stderr=subprocess.PIPE, env=env, timeout=120, check=False)
    finally:
        os.close(writer)
    return done.returncode, done.stderr.decode()


def test_a_pipe_closed_before_a_change_is_refused_and_changes_nothing(cli: Cli) -> None:
    """The reader was gone before the request: the key is not made (it was, before: exit 5,
    an answer lost). A pipe its reader closes while the request is under way still ends 5."""
    name = unique("piped")
    code, err = _with_closed_reader(cli, "keys", "create", "--algorithm", "aes-256-gcm",
                                    "--usage", "encrypt", "--name", name)
    assert code == 3 and "nothing was sent to the server" in err, err
    assert cli("keys", "show", name).code == 1  # not made
    code, err = _with_closed_reader(cli, "keys", "list")
    assert code == 141 and "stopped" in err, err  # a read changed nothing


def test_a_token_and_a_token_file_together_are_refused(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    run = cli("keys", "list", "--token", "x", "--token-file", str(tmp_path / "t"))
    assert run.code == 2 and "not both" in one_line(run), run.err


def test_a_public_key_under_dual_control_is_fetched_with_its_approval(cli: Cli,
                                                                      live: LiveServer) -> None:
    """The parked answer said to repeat with --approval-id, which keys public-key did not
    take (exit 2): under such a policy the CLI could never fetch the key."""
    signer = create(cli, "ec-p256", "sign", "dual")
    approval = parked_id(cli("keys", "public-key", signer))
    approve(live, approval)
    done = cli("keys", "public-key", signer, "--approval-id", approval)
    assert done.code == 0, done.err
    assert done.out.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_a_signature_made_before_a_rotation_is_pointed_at_its_version(cli: Cli,
                                                                      tmp_path: Path) -> None:
    """After a rotation an older release's genuine signature is invalid under the primary: the
    answer says which version it checked and how to check the older ones."""
    signer = create(cli, "ec-p256", "sign")
    artefact, sig = tmp_path / "old-release.tar.gz", tmp_path / "old-release.sig"
    artefact.write_bytes(b"release 1")
    assert cli("sign", signer, "--in", str(artefact), "--out", str(sig), role="service").code == 0
    assert cli("keys", "rotate", signer).code == 0
    run = cli("verify", signer, "--in", str(artefact), "--signature", str(sig), role="service")
    assert run.code == 1
    assert "checked version 2, the primary" in run.text and "--key-version N" in run.text
    old = cli("verify", signer, "--in", str(artefact), "--signature", str(sig),
              "--key-version", "1", role="service")
    assert old.code == 0 and old.text.startswith("valid"), old.err


def test_wrap_refuses_an_empty_input_like_encrypt_and_sign(cli: Cli, tmp_path: Path) -> None:
    wrapper = create(cli, "aes-256-gcm", "wrap")
    empty = cli("wrap", wrapper, role="service", stdin=b"")
    assert empty.code == 2 and "--allow-empty" in one_line(empty)
    sent = cli("wrap", wrapper, "--allow-empty", role="service", stdin=b"")
    assert sent.code == 1  # sent as asked; the server has its own word on it
    signer = create(cli, "ec-p256", "sign")
    one = tmp_path / "one-byte"
    one.write_bytes(b"x")
    short = cli("sign", signer, "--digest", "--in", str(one), role="service")
    assert short.code == 2 and "the input is 1 byte," in one_line(short)


def test_no_such_key_names_the_key_asked_for(cli: Cli) -> None:
    run = cli("encrypt", "no-such-key-here", role="service", stdin=b"x")
    assert run.code == 1
    assert one_line(run).startswith("ferrohsm: no such key: 'no-such-key-here' (`ferrohsm keys "
                                    "list` shows the keys this token sees)"), run.err


def test_a_malformed_approval_id_is_refused_before_anything_is_sent(cli: Cli,
                                                                     live: LiveServer) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    before = records(live, "request.refused")
    run = cli("keys", "rotate", key, "--approval-id", "nonsense")
    assert run.code == 2 and "must be an approval id" in one_line(run)
    assert records(live, "request.refused") == before


def test_a_server_that_cannot_be_reached_is_said_with_where_to_look(cli: Cli) -> None:
    run = cli("keys", "list", env={"FERROHSM_URL": "https://127.0.0.1:1"})
    assert run.code == 1
    assert one_line(run).endswith("is FERROHSM_URL (or --server) the right address?")
