"""The `ferrohsm` client commands against a real server over real TLS: every subcommand's success
and error paths, exit codes (0/1/2), one-line errors with request ids, and no secret in errors.

Commands run in-process (``main(argv)`` with stdin/stdout/stderr swapped for byte buffers) so the
whole suite costs one server start; tests/integration/test_journeys.py runs the built
``dist/ferrohsm`` as a new operator would.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cliresult import Result
from live import LiveServer

from ferrohsm.cli.main import main

POLICY = """
[policy.tags.dual]
approvals_required = 1
approval_actions = ["destroy"]
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("cli"), config_text=POLICY)
    yield server
    server.close()


class Cli:
    """Runs ``ferrohsm ARGS`` in-process with a role's token in FERROHSM_TOKEN."""

    def __init__(self, live: LiveServer, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
        self.live, self.mp = live, monkeypatch
        for name in list(os.environ):
            if name.startswith("FERROHSM_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        monkeypatch.setenv("FERROHSM_URL", f"https://127.0.0.1:{live.port}")
        monkeypatch.setenv("FERROHSM_CA_CERT", str(live.pki.ca_cert))

    def __call__(self, *argv: str, role: str | None = "administrator",
                 stdin: bytes = b"") -> Result:
        if role:
            self.mp.setenv("FERROHSM_TOKEN", self.live.token(role))
        else:
            self.mp.delenv("FERROHSM_TOKEN", raising=False)
        out = io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        stderr = io.StringIO()
        with mock.patch.multiple(sys, stdin=io.TextIOWrapper(io.BytesIO(stdin)), stdout=stdout,
                                 stderr=stderr):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
                code = exc.code if isinstance(exc.code, int) else 1
        stdout.flush()
        result = Result(code, out.getvalue(), stderr.getvalue())
        assert "Traceback" not in result.err
        return result


@pytest.fixture
def cli(live: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    return Cli(live, monkeypatch, tmp_path)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create(cli: Cli, algorithm: str, usage: str, *extra: str) -> dict[str, Any]:
    name = unique(algorithm)
    result = cli("keys", "create", "--algorithm", algorithm, "--usage", usage, "--name", name,
                 *extra, "--json")
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]  # parsed JSON


def assert_api_error(result: Result, code: str) -> None:
    """Exit 1 and exactly one stderr line naming the code and a request id."""
    assert result.code == 1, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferrohsm: "), result.err
    assert f"({code}, request id " in lines[0], lines[0]


# ---- keys ---------------------------------------------------------------------------------


def test_keys_create_shows_the_key_and_refuses_a_taken_name(cli: Cli) -> None:
    name = unique("payments")
    result = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt",
                 "--name", name, "--tag", "pci", "--tag", "prod", "--description", "cards")
    assert result.code == 0, result.err
    assert f"Created {name}" in result.text
    assert "pci, prod" in result.text and "v1 (primary)" in result.text
    again = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt",
                "--name", name)
    assert_api_error(again, "conflict")
    assert cli("keys", "create", "--algorithm", "des", "--usage", "encrypt").code == 2
    assert_api_error(cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt",
                         role="auditor"), "forbidden")


def test_keys_list_table_json_filters_and_paging(cli: Cli) -> None:
    tag = unique("t")
    names = [create(cli, "aes-256-gcm", "encrypt", "--tag", tag)["name"] for _ in range(3)]
    table = cli("keys", "list", "--tag", tag)
    assert table.code == 0, table.err
    header, *rows = table.text.splitlines()
    assert header.split() == ["NAME", "ID", "ALGORITHM", "USAGE", "STATE", "VERSION", "TAGS",
                              "UPDATED"]
    assert sorted(r.split()[0] for r in rows) == sorted(names)
    assert len({r.index("aes-256-gcm") for r in rows}) == 1  # aligned columns
    assert "UTC" in rows[0] and "T" not in rows[0].split()[-2]  # readable times
    data = cli("keys", "list", "--tag", tag, "--json").json()
    assert sorted(k["name"] for k in data["keys"]) == sorted(names)
    page = cli("keys", "list", "--tag", tag, "--limit", "2", "--json").json()
    assert len(page["keys"]) == 2 and page["next_page_token"]
    rest = cli("keys", "list", "--tag", tag, "--page-token", page["next_page_token"], "--json")
    assert len(rest.json()["keys"]) == 1
    text = cli("keys", "list", "--tag", tag, "--limit", "2", "--output", "text")
    assert len(text.text.splitlines()) == 2 and "UTC" not in text.text and " of " not in text.text
    assert text.err.startswith("(more keys: --page-token ")  # stdout: the values alone
    field = cli("keys", "list", "--tag", tag, "--limit", "2", "--field", "name")
    assert len(field.text.splitlines()) == 2 and field.err.startswith("(more keys: ")
    assert "no keys match" in cli("keys", "list", "--tag", unique("none")).text
    assert cli("keys", "list", "--limit", "0").code == 2
    assert_api_error(cli("keys", "list", "--page-token", "garbage!"), "bad_request")


def test_keys_show_update_and_not_found(cli: Cli) -> None:
    key = create(cli, "ec-p256", "sign")
    for ref in (key["name"], key["id"]):
        shown = cli("keys", "show", ref)
        assert shown.code == 0 and key["id"] in shown.text and "ec-p256" in shown.text
    updated = cli("keys", "update", key["name"], "--description", "release builds", "--json")
    assert updated.code == 0 and updated.json()["description"] == "release builds"
    assert_api_error(cli("keys", "show", unique("missing")), "not_found")
    empty = cli("keys", "show", "")  # an unset variable: refused here, not sent as GET /v1/keys/
    assert empty.code == 2 and "argument KEY: the value is empty" in empty.err
    assert_api_error(cli("keys", "update", key["name"], "--description", "x", role="service"),
                     "forbidden")


def test_rotate_then_rollback(cli: Cli) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    rotated = cli("keys", "rotate", key["name"])
    assert rotated.code == 0, rotated.err
    assert "v2 is now primary" in rotated.text and key["id"] in rotated.text
    back = cli("keys", "rollback", key["name"], "--version", "1", "--json")
    assert back.code == 0 and back.json()["primary_version"] == 1
    # a version the key does not have: 409 (docs/api.md, Keys)
    assert_api_error(cli("keys", "rollback", key["name"], "--version", "9"), "conflict")
    assert cli("keys", "rollback", key["name"]).code == 2  # --version is required
    assert_api_error(cli("keys", "rotate", unique("missing")), "not_found")


def test_revoke_destroy_cancel_and_state_display(cli: Cli) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")
    revoked = cli("keys", "revoke", key["name"], "--reason", "suspected leak")
    assert revoked.code == 0 and "revoked: encrypt/sign/wrap refused" in revoked.text
    assert_api_error(cli("encrypt", key["name"], role="service", stdin=b"x"), "conflict")
    destroy = cli("keys", "destroy", key["name"])
    assert destroy.code == 0, destroy.err
    assert "destroy_scheduled (in 23h" in destroy.text and "cancel-destroy" in destroy.text
    assert_api_error(cli("keys", "destroy", key["name"], role="operator"), "forbidden")
    cancelled = cli("keys", "cancel-destroy", key["name"], "--json")
    assert cancelled.code == 0 and cancelled.json()["state"] == "revoked"
    assert_api_error(cli("keys", "cancel-destroy", key["name"]), "conflict")
    assert "revoked" in cli("keys", "list", "--state", "revoked").text


def test_public_key_to_file_and_refused_for_symmetric(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "ec-p384", "sign")
    out = tmp_path / "pub.pem"
    assert cli("keys", "public-key", key["name"], "--out", str(out)).code == 0
    assert out.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    as_json = cli("keys", "public-key", key["name"], "--version", "1", "--json").json()
    assert as_json["version"] == 1 and "PUBLIC KEY" in as_json["pem"]
    aes = create(cli, "aes-256-gcm", "encrypt")
    result = cli("keys", "public-key", aes["name"])
    assert result.code == 1 and result.out == b""


def test_keys_list_field_of_an_unnamed_key_and_of_no_member(cli: Cli) -> None:
    tag = unique("unnamed")
    made = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt", "--tag", tag,
               "--json")
    assert made.code == 0, made.err
    names = cli("keys", "list", "--tag", tag, "--field", "name")
    assert (names.code, names.out) == (0, b"\n")  # not "null"
    assert cli("keys", "show", made.json()["id"], "--field", "name").out == b"\n"
    missing = cli("keys", "list", "--tag", tag, "--field", "nope")
    assert missing.code == 2
    [line] = missing.err.splitlines()
    assert "it has: next_page_token, total; and in each of keys: algorithm, " in line


# ---- cryptographic operations -------------------------------------------------------------


def test_encrypt_decrypt_stdin_stdout_files_and_aad(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")["name"]
    secret = os.urandom(300)
    enc = cli("encrypt", key, "--aad", "order-17", role="service", stdin=secret)
    assert enc.code == 0 and enc.text.startswith("fhsm:v1:") and enc.text.endswith("\n")
    dec = cli("decrypt", key, "--aad", "order-17", role="service", stdin=enc.out)
    assert dec.code == 0 and dec.out == secret
    assert_api_error(cli("decrypt", key, "--aad", "other", role="service", stdin=enc.out),
                     "bad_request")
    plain, cipher, back = tmp_path / "p", tmp_path / "c", tmp_path / "b"
    plain.write_bytes(secret)
    assert cli("encrypt", key, "--in", str(plain), "--out", str(cipher), role="service").code == 0
    assert cli("decrypt", key, "--in", str(cipher), "--out", str(back), role="service").code == 0
    assert back.read_bytes() == secret and (back.stat().st_mode & 0o777) == 0o600
    as_json = cli("encrypt", key, "--json", role="service", stdin=b"hi").json()
    assert as_json["key_version"] == 1 and as_json["ciphertext"].startswith("fhsm:v1:")
    assert cli("decrypt", key, role="service", stdin=b"\xff\xfe").code == 2
    assert cli("encrypt", key, "--in", str(tmp_path / "nope"), role="service").code == 2
    refused = cli("encrypt", key, stdin=b"x")  # administrators may not use keys
    assert_api_error(refused, "forbidden")
    assert "service token" in refused.err


def test_service_token_whose_tags_do_not_cover_the_key_is_told_so(cli: Cli) -> None:
    key = create(cli, "aes-256-gcm", "encrypt", "--tag", "dev")["name"]
    scoped = cli.live.token("service", "cli-scoped", tags=["prod"])
    refused = cli("encrypt", key, "--token", scoped, role=None, stdin=b"x")
    assert_api_error(refused, "not_found")
    assert "tags (prod) do not cover this key" in refused.err
    assert "need a service token" not in refused.err


def test_sign_verify_with_openssl_and_digest(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "rsa-2048", "sign")["name"]
    msg, sig, pub = tmp_path / "msg", tmp_path / "msg.sig", tmp_path / "pub.pem"
    msg.write_bytes(b"artefact bytes\n" * 100)
    assert cli("sign", key, "--in", str(msg), "--out", str(sig), role="service").code == 0
    assert cli("keys", "public-key", key, "--out", str(pub)).code == 0
    openssl = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-sigopt",
                              "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                              "-signature", str(sig), str(msg)], capture_output=True, text=True,
                             check=False)
    assert openssl.returncode == 0, openssl.stdout + openssl.stderr
    good = cli("verify", key, "--in", str(msg), "--signature", str(sig), role="service")
    assert good.code == 0 and good.text.startswith("valid")
    bad = cli("verify", key, "--signature", str(sig), role="service", stdin=b"other")
    assert bad.code == 1 and bad.text.startswith("invalid")
    assert cli("verify", key, "--signature", str(sig), "--json", role="service",
               stdin=b"other").json() == {"valid": False, "key_version": 1}  # the API's JSON
    import hashlib
    digest = hashlib.sha256(msg.read_bytes()).digest()
    signed = cli("sign", key, "--digest", "--json", role="service", stdin=digest).json()
    sig.write_bytes(base64.b64decode(signed["signature"]))
    assert cli("verify", key, "--in", str(msg), "--signature", str(sig), role="service").code == 0
    assert cli("verify", key, role="service").code == 2  # --signature is required
    aes = create(cli, "aes-256-gcm", "encrypt")["name"]
    assert_api_error(cli("sign", aes, "--out", str(sig), role="service", stdin=b"m"), "conflict")


def test_binary_output_is_never_written_to_a_terminal() -> None:
    from ferrohsm.cli.settings import UsageError
    from ferrohsm.cli.streams import write_output
    terminal = mock.Mock(isatty=lambda: True)
    with mock.patch.object(sys, "stdout", terminal), pytest.raises(UsageError):
        write_output(None, b"\x30\x45", binary=True)
    terminal.buffer.write.assert_not_called()


def test_wrap_unwrap_round_trip(cli: Cli, tmp_path: Path) -> None:
    kek = create(cli, "aes-256-gcm", "wrap")["name"]
    material = os.urandom(32)
    wrapped = cli("wrap", kek, role="service", stdin=material)
    assert wrapped.code == 0 and wrapped.text.startswith("fhsm:v1:")
    out = tmp_path / "dk.bin"
    assert cli("unwrap", kek, "--out", str(out), role="service", stdin=wrapped.out).code == 0
    assert out.read_bytes() == material and (out.stat().st_mode & 0o777) == 0o600
    as_json = cli("unwrap", kek, "--json", role="service", stdin=wrapped.out).json()
    assert base64.b64decode(as_json["key_material"]) == material
    assert_api_error(cli("unwrap", kek, role="service", stdin=b"fhsm:v1:AAAA"), "bad_request")
    enc_key = create(cli, "aes-256-gcm", "encrypt")["name"]
    assert_api_error(cli("wrap", enc_key, role="service", stdin=material), "conflict")


def test_data_key_round_trip_no_plaintext_and_errors(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")["name"]
    out = tmp_path / "dek.json"
    made = cli("data-key", key, "--bits", "128", "--out", str(out), role="service")
    assert made.code == 0, made.err
    answer = json.loads(out.read_text())
    assert (out.stat().st_mode & 0o777) == 0o600  # it holds a plaintext key
    data_key = base64.b64decode(answer["plaintext"])
    assert len(data_key) == 16 and answer["ciphertext"].startswith("fhsm:v1:")
    back = cli("decrypt", key, role="service", stdin=answer["ciphertext"].encode())
    assert back.code == 0 and back.out == data_key
    wrapped_only = cli("data-key", key, "--no-plaintext", "--aad", "tenant-7", role="service")
    assert wrapped_only.code == 0 and "plaintext" not in wrapped_only.json()
    again = cli("decrypt", key, "--aad", "tenant-7", role="service",
                stdin=wrapped_only.json()["ciphertext"].encode())
    assert again.code == 0 and len(again.out) == 32
    assert cli("data-key", key, "--bits", "100", role="service").code == 2
    assert_api_error(cli("data-key", key, role="operator"), "forbidden")
    sign_key = create(cli, "ec-p256", "sign")["name"]
    assert_api_error(cli("data-key", sign_key, role="service"), "conflict")


def test_data_key_never_replaces_an_existing_out_file_without_force(cli: Cli,
                                                                    tmp_path: Path) -> None:
    """The --out file may hold the only wrapped copy of an earlier data key."""
    key = create(cli, "aes-256-gcm", "encrypt")["name"]
    out = tmp_path / "dek.json"
    assert cli("data-key", key, "--out", str(out), role="service").code == 0
    first = out.read_bytes()
    again = cli("data-key", key, "--out", str(out), role="service")
    assert again.code == 3 and out.read_bytes() == first
    assert again.err.strip().splitlines() == [
        f"ferrohsm: {out} exists: choose a new name or give --force to replace it; nothing "
        "was sent to the server"]
    forced = cli("data-key", key, "--out", str(out), "--force", role="service")
    assert forced.code == 0, forced.err
    assert json.loads(out.read_text())["ciphertext"] != json.loads(first)["ciphertext"]
    assert cli("data-key", key, "--out", os.devnull, role="service").code == 0


def test_data_key_honours_field_and_output_text(cli: Cli) -> None:
    key = create(cli, "aes-256-gcm", "encrypt")["name"]
    plaintext = cli("data-key", key, "--field", "plaintext", role="service")
    assert plaintext.code == 0, plaintext.err
    assert len(base64.b64decode(plaintext.text.strip(), validate=True)) == 32
    version = cli("data-key", key, "--no-plaintext", "--field", "key_version", role="service")
    assert version.text == "1\n"
    text = cli("data-key", key, "--no-plaintext", "--output", "text", role="service").text
    names = [line.split("\t")[0] for line in text.splitlines()]
    assert "ciphertext" in names and "key_version" in names and not text.startswith("{")
    missing = cli("data-key", key, "--no-plaintext", "--field", "nope", role="service")
    assert missing.code == 2 and missing.out == b""
    assert missing.err.strip().splitlines() == [
        "ferrohsm: --field nope: the answer has no such member; it has: ciphertext, key_id, "
        "key_version"]
    assert "plaintext" in cli("data-key", key, "--output", "json", role="service").json()


def test_a_plaintext_data_key_is_never_written_to_a_terminal(cli: Cli, live: LiveServer) -> None:
    import argparse
    from typing import cast

    from ferrohsm.cli import ops
    from ferrohsm.cli.settings import Settings, UsageError
    from ferrohsm.client import Client
    key = create(cli, "aes-256-gcm", "encrypt")["name"]
    settings = cast(Settings, argparse.Namespace(approval_id=None, output="table", field=None))
    terminal = mock.Mock(isatty=lambda: True)
    with Client(f"https://127.0.0.1:{live.port}", live.token("service"),
                ca_cert=str(live.pki.ca_cert)) as client, \
            mock.patch.object(sys, "stdout", terminal):
        args = argparse.Namespace(key=key, bits=256, no_plaintext=False, aad=None, out=None)
        with pytest.raises(UsageError, match="terminal"):
            ops.data_key(args, client, settings)
        terminal.buffer.write.assert_not_called()
        args.no_plaintext = True
        assert ops.data_key(args, client, settings) == 0  # a wrapped key alone may be shown
    written = b"".join(c.args[0] for c in terminal.buffer.write.call_args_list)
    assert b"ciphertext" in written and b"plaintext" not in written


def test_unwrapped_key_material_is_never_written_to_a_terminal_in_any_output_mode(
        cli: Cli, live: LiveServer) -> None:
    """Not as raw bytes, and not inside JSON, text or --field key_material either: the check
    comes before the request, so nothing is unwrapped (or audited as unwrapped) for a screen."""
    import argparse
    from typing import cast

    from ferrohsm.cli import ops
    from ferrohsm.cli.settings import Settings, UsageError
    from ferrohsm.client import Client
    kek = create(cli, "aes-256-gcm", "wrap")["name"]
    wrapped = cli("wrap", kek, role="service", stdin=os.urandom(32)).text.strip()
    terminal = mock.Mock(isatty=lambda: True)
    with Client(f"https://127.0.0.1:{live.port}", live.token("service"),
                ca_cert=str(live.pki.ca_cert)) as client, \
            mock.patch.object(sys, "stdin", mock.Mock(buffer=io.BytesIO(wrapped.encode()))), \
            mock.patch.object(sys, "stdout", terminal), \
            mock.patch.object(client, "unwrap", wraps=client.unwrap) as sent:
        for output, field in (("table", None), ("json", None), ("text", None),
                              ("json", "key_material")):
            settings = cast(Settings, argparse.Namespace(approval_id=None, output=output,
                                                         field=field))
            args = argparse.Namespace(key=kek, input=None, out=None)
            sys.stdin.buffer.seek(0)
            with pytest.raises(UsageError, match="terminal"):
                ops.unwrap(args, client, settings)
        sent.assert_not_called()
    terminal.buffer.write.assert_not_called()
    terminal.write.assert_not_called()


def test_correlation_id_reaches_the_audit_log(cli: Cli, live: LiveServer) -> None:
    key = create(cli, "ec-p256", "sign")["name"]
    corr = unique("build")
    assert cli("sign", key, "--correlation-id", corr, "--out", os.devnull, role="service",
               stdin=b"m").code == 0
    _, _, body = live.call("GET", "/v1/audit?limit=1000")
    records = [r for r in body["records"] if r.get("correlation_id") == corr]
    # the digest's hash follows the key's algorithm, read first (same correlation id)
    assert [r["action"] for r in records] == ["key.read", "crypto.sign"]


# ---- approvals ------------------------------------------------------------------------------


def approvals_routed(live: LiveServer) -> bool:
    status, _, _ = live.call("GET", "/v1/approvals")
    return status != 404


def test_approvals_list_approve_deny_and_repeat(cli: Cli, live: LiveServer) -> None:
    if not approvals_routed(live):
        pytest.skip("GET /v1/approvals is not routed yet (approvals API under construction)")
    key = create(cli, "aes-256-gcm", "encrypt", "--tag", "dual")["name"]
    parked = cli("keys", "destroy", key, "--json")
    assert parked.code == 1 and "approval required" in parked.err
    approval_id = parked.json()["approval"]["id"]
    assert f"--approval-id {approval_id}" in parked.err
    listing = cli("approvals", "list", "--state", "pending", role="operator")
    assert listing.code == 0 and approval_id in listing.text and "0/1" in listing.text
    row = next(line for line in listing.text.splitlines() if approval_id in line)
    assert row.split()[2] == key  # the key by its name, not its id
    text = cli("approvals", "list", "--state", "pending", "--output", "text", role="operator")
    cells = next(line for line in text.text.splitlines() if approval_id in line).split("\t")
    assert cells[2] == key and cells[-1].endswith("Z")  # raw values: the API's ISO expiry
    early = cli("keys", "destroy", key, "--approval-id", approval_id)
    assert early.code == 1 and f"approval {approval_id} is still pending (0 of 1 approvals" \
        in early.err and "parked" not in early.err, early.err
    mismatch = create(cli, "aes-256-gcm", "encrypt", "--tag", "dual")["name"]
    wrong = cli("keys", "destroy", mismatch, "--approval-id", approval_id)
    assert wrong.code == 1 and "is for a different request" in wrong.err
    assert "granted" not in wrong.err
    shown = cli("approvals", "show", approval_id, "--json", role="auditor")
    assert shown.code == 0 and shown.json()["state"] == "pending"
    assert_api_error(cli("approvals", "show", str(uuid.uuid4())), "not_found")
    assert_api_error(cli("approvals", "approve", approval_id), "forbidden")  # own request
    approved = cli("approvals", "approve", approval_id, "--comment", "ticket 7", role="operator")
    assert approved.code == 0, approved.err
    done = cli("keys", "destroy", key, "--approval-id", approval_id, "--json")
    assert done.code == 0 and done.json()["state"] == "destroy_scheduled"
    other = create(cli, "aes-256-gcm", "encrypt", "--tag", "dual")["name"]
    second = cli("keys", "destroy", other, "--json").json()["approval"]["id"]
    assert cli("approvals", "deny", second, role="operator").code == 0
    denied = cli("approvals", "list", "--state", "denied", "--json", role="auditor").json()
    assert second in json.dumps(denied)
    assert cli("keys", "destroy", other, "--approval-id", second).code == 1
    assert_api_error(cli("approvals", "approve", str(uuid.uuid4()), role="operator"),
                     "not_found")
    assert cli("approvals", "list", "--state", "bogus").code == 2


# ---- audit, token, serve ------------------------------------------------------------------


def test_audit_export_verifies_offline_and_detects_tampering(cli: Cli, live: LiveServer,
                                                             tmp_path: Path) -> None:
    create(cli, "aes-256-gcm", "encrypt")
    out = tmp_path / "audit.jsonl"
    result = cli("audit", "export", "--output", str(out), role="auditor")
    assert result.code == 0 and "exported" in result.err
    lines = out.read_bytes().splitlines()
    assert lines and json.loads(lines[0])["seq"] == 1
    cli.mp.setenv("FERROHSM_AUDIT_HMAC_KEY",
                  base64.b64encode(live.secrets.audit_hmac_key).decode())
    verified = cli("audit", "verify", str(out))
    assert verified.code == 0, verified.err  # no checkpoints beside an export: said loudly
    assert verified.text.startswith("OK (WARNING: checkpoints NOT checked):"), verified.text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # like the log it copies
    assert cli("audit", "report", str(out)).code == 0
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(out.read_bytes().replace(b'"outcome":"success"', b'"outcome":"denied"', 1))
    assert cli("audit", "verify", str(tampered)).code == 1
    stdout = cli("audit", "export", "--after-seq", "2", role="auditor")
    assert stdout.code == 0 and json.loads(stdout.out.splitlines()[0])["seq"] == 3
    assert_api_error(cli("audit", "export", role="service"), "forbidden")
    assert cli("audit", "verify").code == 2


def test_token_issue(cli: Cli) -> None:
    import jwt
    cli.mp.setenv("FERROHSM_JWT_HS256_SECRET", "s" * 48)
    result = cli("token", "issue", "--subject", "alice", "--role", "operator", "--ttl", "60")
    assert result.code == 0, result.err
    claims = jwt.decode(result.text.strip(), "s" * 48, algorithms=["HS256"], audience="ferrohsm")
    assert claims["sub"] == "alice" and claims["role"] == "operator"
    assert cli("token", "issue", "--subject", "a", "--role", "operator", "--ttl", "99999").code == 2
    assert cli("token", "issue", "--subject", "a", "--role", "root").code == 2


@pytest.mark.parametrize("argv,says", [
    (["--subject", "a\nb"], "--subject must be 1..256 printable characters"),
    (["--subject", "x" * 257], "--subject must be 1..256 printable characters"),
    (["--subject", "ci", "--tag", "Bad Tag"], "--tag must be at most 32 tags"),
    (["--subject", "system"], "not system or anonymous"),
    (["--subject", "ci", "--role", "operator", "--tag", "prod"],
     "--tag scopes service tokens only"),
    (["--subject", "ci", "--ttl", "0"], "--ttl must be 1..900 seconds"),
    (["--subject", "ci", "--data-dir", "/nonexistent"],
     "--data-dir /nonexistent: the data directory does not exist"),
])
def test_token_issue_refuses_what_the_server_would_refuse(cli: Cli, argv: list[str],
                                                          says: str) -> None:
    if "--data-dir" not in argv:
        cli.mp.setenv("FERROHSM_JWT_HS256_SECRET", "s" * 48)
    role = [] if "--role" in argv else ["--role", "service"]  # a flag is given once
    result = cli("token", "issue", *role, *argv)
    assert result.code == 2 and result.out == b"", result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.err


def test_token_issue_reads_the_units_credential_as_the_server_does(cli: Cli,
                                                                   tmp_path: Path) -> None:
    """deploy/ferrohsm.service gives the secret as a systemd credential: ``token issue
    --config`` finds it in $CREDENTIALS_DIRECTORY, as the server does."""
    import jwt as pyjwt
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    secret = "c" * 48
    (creds / "jwt_hs256_secret").write_text(secret)
    (creds / "jwt_hs256_secret").chmod(0o400)
    config = tmp_path / "ferrohsm.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "state"}"\n')
    cli.mp.delenv("FERROHSM_JWT_HS256_SECRET", raising=False)
    cli.mp.setenv("CREDENTIALS_DIRECTORY", str(creds))
    result = cli("token", "issue", "--config", str(config), "--subject", "ops",
                 "--role", "operator")
    assert result.code == 0, result.err
    claims = pyjwt.decode(result.out.decode().strip(), secret, algorithms=["HS256"],
                          options={"verify_aud": False})
    assert claims["sub"] == "ops"
    cli.mp.delenv("CREDENTIALS_DIRECTORY")
    missing = cli("token", "issue", "--config", str(config), "--subject", "ops",
                  "--role", "operator")
    assert missing.code == 2 and "CREDENTIALS_DIRECTORY" in missing.err, missing.err

def test_serve_with_a_bad_config_exits_2(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 'nowhere'\n")
    result = cli("serve", "--config", str(bad))
    assert result.code == 2 and result.err.startswith("ferrohsm: configuration error")


# ---- settings, transport and safety -------------------------------------------------------


def test_missing_server_bad_timeout_and_unreachable(cli: Cli) -> None:
    cli.mp.delenv("FERROHSM_URL")
    assert "no server" in cli("keys", "list").err
    assert cli("keys", "list").code == 2
    assert cli("keys", "list", "--server", "http://plain").code == 2
    assert cli("keys", "list", "--server", "https://x", "--timeout", "-1").code == 2
    down = cli("keys", "list", "--server", "https://127.0.0.1:1")
    assert down.code == 1 and "cannot reach" in down.err
    assert "request id" not in down.err  # refused at connect: no request left, no id to quote
    assert cli("keys", "list", "--server", "https://127.0.0.1:1", "--ca-cert", "/nope").code == 2


def test_status_and_version_name_the_node_that_answered(cli: Cli, live: LiveServer) -> None:
    live_url, dead = f"https://127.0.0.1:{live.port}", "https://127.0.0.1:1"
    cli.mp.setenv("FERROHSM_URL", f"{dead},{live_url}")
    status = cli("status", "--json")
    assert status.code == 0, status.err
    assert status.json()["server"] == live_url
    assert [n["server"] for n in status.json()["unreachable"]] == [dead]
    lines = cli("status").text.splitlines()
    assert lines[0] == f"Server       {live_url}"
    assert lines[1].startswith(f"Unreachable  cannot reach {dead}: ")
    version = cli("version", "--json")
    assert version.code == 0 and version.json()["server_url"] == live_url
    assert cli("version").text.splitlines()[1].endswith(f" at {live_url}")
    assert cli("status", "--json", "--server", live_url).json()["unreachable"] == []


def test_status_json_when_no_server_answers(cli: Cli) -> None:
    cli.mp.setenv("FERROHSM_URL", "https://127.0.0.1:1,https://127.0.0.1:2")
    down = cli("status", "--json")
    assert down.code == 1 and "cannot reach" in down.err
    answer = down.json()
    assert (answer["status"], answer["server"]) == ("unreachable", None)
    assert "cannot reach any of the 2 servers" in answer["error"]
    assert [n["server"] for n in answer["unreachable"]] == ["https://127.0.0.1:1",
                                                            "https://127.0.0.1:2"]
    field = cli("status", "--field", "status")
    assert field.code == 1 and field.text == "unreachable\n"
    table = cli("status")
    assert table.code == 1 and table.out == b"" and len(table.err.splitlines()) == 1


def test_wrong_ca_and_missing_token(cli: Cli, live: LiveServer) -> None:
    wrong_ca = cli("keys", "list", "--ca-cert", str(live.pki.server_cert))
    assert wrong_ca.code in (1, 2) and "ferrohsm:" in wrong_ca.err
    no_token = cli("keys", "list", role=None)  # refused here, before anything is sent
    assert no_token.code == 2 and no_token.err.startswith("ferrohsm: no token:")
    assert "token issue" in no_token.err


def test_errors_never_show_the_token(cli: Cli) -> None:
    marker = "eyJ.SECRET-MARKER-do-not-print." + "x" * 20
    result = cli("keys", "list", "--token", marker, role=None)
    assert result.code == 1 and marker not in result.err and "SECRET-MARKER" not in result.err


def test_profiles_flags_and_environment(cli: Cli, live: LiveServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(live.token("auditor") + "\n")
    profiles = tmp_path / ".config" / "ferrohsm" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(f'[staging]\nserver = "https://127.0.0.1:{live.port}"\n'
                        f'ca_cert = "{live.pki.ca_cert}"\ntoken_file = "../../token"\n'
                        '[leaky]\ntoken = "x"\n')
    cli.mp.setenv("FERROHSM_URL", "https://127.0.0.1:1")  # an explicit profile beats the env
    assert cli("keys", "list", "--profile", "staging", role=None).code == 0
    cli.mp.setenv("FERROHSM_PROFILE", "staging")
    cli.mp.delenv("FERROHSM_URL")
    assert cli("keys", "list", role=None).code == 0
    flag_wins = cli("keys", "list", "--server", "https://127.0.0.1:1", role=None)
    assert flag_wins.code == 1 and "cannot reach" in flag_wins.err
    assert cli("keys", "list", "--profile", "nope", role=None).code == 2
    leaky = cli("keys", "list", "--profile", "leaky", role=None)
    assert leaky.code == 2 and "token_file" in leaky.err


# ---- the SDK under the CLI: retries, connection reuse, typed errors --------------------------


def counting_app(statuses: list[int], seen: list[tuple[str, int]]) -> Any:
    """Answers with ``statuses`` in turn (then 200), recording (method, peer port) per request."""
    from ferrohsm.api.http import Request, json_response

    def app(request: Request) -> Any:
        seen.append((request.method, request.peer_port))
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            return json_response(200, {"ok": True})
        body = {"error": {"code": "unavailable", "message": "try later",
                          "request_id": request.request_id}}
        return json_response(status, body, [("Retry-After", "0")])
    return app


def test_client_retries_only_idempotent_calls(make_server: Any, dev_pki: Any) -> None:
    from ferrohsm.client import Client, ServerError
    seen: list[tuple[str, int]] = []
    server = make_server(counting_app([503, 503], seen))
    with Client(f"https://127.0.0.1:{server.server_address[1]}", "t",
                ca_cert=str(dev_pki.ca_cert), retries=2) as client:
        assert client.request("GET", "/x") == {"ok": True}
        assert [m for m, _ in seen] == ["GET"] * 3
        seen.clear()
        server.app = counting_app([503], seen)
        with pytest.raises(ServerError) as caught:
            client.request("POST", "/x", {})
        assert [m for m, _ in seen] == ["POST"]
        assert caught.value.code == "unavailable" and caught.value.request_id


def test_client_reuses_its_connection_and_survives_an_idle_close(make_server: Any,
                                                                 dev_pki: Any) -> None:
    import time

    from ferrohsm.client import Client
    seen: list[tuple[str, int]] = []
    server = make_server(counting_app([], seen), idle_timeout=0.3)
    with Client(f"https://127.0.0.1:{server.server_address[1]}", "t",
                ca_cert=str(dev_pki.ca_cert), retries=0) as client:
        client.request("GET", "/a")
        client.request("GET", "/b")
        assert seen[0][1] == seen[1][1]  # one connection, kept alive
        time.sleep(0.8)  # the server closes the idle connection
        assert client.request("POST", "/c", {}) == {"ok": True}  # never sent into a dead socket
    assert [m for m, _ in seen] == ["GET", "GET", "POST"]


def test_an_answer_that_is_no_json_object_is_a_transport_error(make_server: Any,
                                                                dev_pki: Any) -> None:
    """A proxy's or another server's ``[1, 2]`` is said as such, not met later as an
    unexpected KeyError in the command that read it."""
    from ferrohsm.api.http import Request, json_response
    from ferrohsm.client import Client, TransportError

    def app(request: Request) -> Any:
        return json_response(200, [1, 2])

    server = make_server(app)
    with Client(f"https://127.0.0.1:{server.server_address[1]}", "t",
                ca_cert=str(dev_pki.ca_cert), retries=0) as client:
        with pytest.raises(TransportError, match="not a JSON object"):
            client.request("GET", "/v1/keys")


def test_client_typed_errors(live: LiveServer) -> None:
    from ferrohsm.client import BadRequest, Client, Forbidden, NotFound, Unauthenticated
    url = f"https://127.0.0.1:{live.port}"
    with Client(url, live.token("operator"), ca_cert=str(live.pki.ca_cert)) as client:
        with pytest.raises(NotFound) as caught:
            client.get_key(unique("missing"))
        assert caught.value.status == 404 and caught.value.request_id
        with pytest.raises(BadRequest):
            client.get_key("k/rotate?x")  # percent-encoded, so refused rather than re-routed
        with pytest.raises(Forbidden):
            client.destroy_key("anything")
    with Client(url, "bad-token", ca_cert=str(live.pki.ca_cert)) as client, \
            pytest.raises(Unauthenticated) as caught2:
        client.list_keys()
    assert "bad-token" not in str(caught2.value) and "bad-token" not in repr(client)
