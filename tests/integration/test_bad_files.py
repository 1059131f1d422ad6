"""Files and directories named by flags and settings, as an outside tester named them.

``/dev/zero`` as a token file, a profile file or a config file was read until memory ran out
(24 GB, deaf to SIGTERM); a mistyped ``backup --offline --data-dir`` made a new, empty data
directory and a backup of nothing with exit 0; a config file that is not UTF-8, and a new master
key file in a missing directory, ended in "unexpected …Error"; ``verify --signature /dev/zero``
suggested dropping a --message nobody gave. Each is now a one-line refusal with exit 2.

Every command runs under a 2 GB address-space limit, so a regression fails here with a
MemoryError instead of taking the machine's memory.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from custodykit import ROOT, Home

LIMIT = 2 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run(home: Home, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ferrohsm", *args], cwd=ROOT,
                          capture_output=True, text=True, env=home.env(**env), timeout=60,
                          preexec_fn=_limited)
    assert time.monotonic() - started < 30, args
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    return done


def test_dev_zero_is_refused_as_a_token_profile_config_or_signature_file(tmp_path: Path) -> None:
    home = Home(tmp_path, shamir=False)
    client = {"FERROHSM_URL": "https://127.0.0.1:9"}
    token = run(home, "whoami", "--token-file", "/dev/zero", **client)
    assert token.returncode == 2 and "larger than 1 MiB" in token.stderr, token.stderr
    profile = run(home, "whoami", FERROHSM_PROFILE_FILE="/dev/zero", **client)
    assert profile.returncode == 2 and "larger than 1 MiB" in profile.stderr, profile.stderr
    config = run(home, "serve", "--config", "/dev/zero")
    assert config.returncode == 2 and "larger than 4 MiB" in config.stderr, config.stderr
    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"release")
    verify = run(home, "verify", "release-key", "--in", str(artefact), "--signature",
                 "/dev/zero", FERROHSM_TOKEN="x" * 40, **client)
    assert verify.returncode == 2 and "is not a signature" in verify.stderr, verify.stderr
    assert "--message" not in verify.stderr


def test_a_tls_file_or_deny_list_that_never_ends_stops_start_up_with_its_name(
        tmp_path: Path) -> None:
    home = Home(tmp_path, shamir=False)
    text = home.config.read_text()
    for setting, table in (("client_ca", "tls"), ("deny_list_file", "auth")):
        config = tmp_path / f"{setting}.toml"
        config.write_text(text.replace(f"[{table}]\n", f'[{table}]\n{setting} = "/dev/zero"\n')
                          if f"[{table}]\n" in text else
                          f'{text}[{table}]\n{setting} = "/dev/zero"\n')
        out = run(home, "serve", "--config", str(config))
        assert out.returncode != 0 and "/dev/zero" in out.stderr, out.stderr
        assert "larger than" in out.stderr or "not a regular file" in out.stderr, out.stderr


def test_a_config_file_that_is_not_utf8_is_named_and_a_bom_is_taken(tmp_path: Path) -> None:
    home = Home(tmp_path, shamir=False)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[tls]\ncert = "\xff"\n')
    out = run(home, "serve", "--config", str(bad))
    assert out.returncode == 2 and "not UTF-8 text" in out.stderr, out.stderr
    from ferrohsm.config import load_config
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + home.config.read_bytes())
    assert load_config(str(bom)).storage.data_dir == str(home.data)


def test_offline_commands_refuse_a_data_directory_that_does_not_exist(tmp_path: Path) -> None:
    home = Home(tmp_path, shamir=False)
    missing = tmp_path / "typo"
    backup = run(home, "backup", "--offline", "--data-dir", str(missing), "--out",
                 str(tmp_path / "b.fhsmbak"))
    assert backup.returncode == 2 and "does not exist" in backup.stderr, backup.stderr
    rekey = run(home, "rekey", "--data-dir", str(missing), "--new-master-key-file",
                str(tmp_path / "new.key"))
    assert rekey.returncode == 2 and "does not exist" in rekey.stderr, rekey.stderr
    assert not missing.exists() and not (tmp_path / "b.fhsmbak").exists()
    assert not (tmp_path / "new.key").exists()


def test_a_new_master_key_file_in_a_missing_directory_changes_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path, shamir=False)
    home.serve().stop()
    records = len(home.audit_records())
    out = run(home, "rekey", "--config", str(home.config), "--new-master-key-file",
              str(tmp_path / "nodir" / "new.key"))
    assert out.returncode == 2 and "does not exist" in out.stderr, out.stderr
    assert len(home.audit_records()) == records
    again = run(home, "rekey", "--config", str(home.config), "--new-master-key-file",
                str(tmp_path / "new.key"))
    assert again.returncode == 0, again.stderr


def _with(text: str, table: str, line: str) -> str:
    return text.replace(f"[{table}]\n", f"[{table}]\n{line}\n") if f"[{table}]\n" in text \
        else f"{text}[{table}]\n{line}\n"


def test_a_fifo_or_a_nul_in_a_setting_stops_start_up_at_once_with_its_name(
        tmp_path: Path) -> None:
    """A FIFO nobody writes to hung start-up (and a TLS or keyset reload, for good: an outside
    tester), as OpenSSL's and Python's open wait for a writer; a NUL in a path ended in
    "unexpected ValueError"."""
    home = Home(tmp_path, shamir=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = home.config.read_text()
    for table, line in (("tls", f'cert = "{fifo}"'), ("tls", f'client_ca = "{fifo}"'),
                        ("auth", f'jwks_file = "{fifo}"')):
        config = tmp_path / "fifo.toml"
        config.write_text(_with(text, table, line) if "cert =" not in line
                          else text.replace(text[text.index("cert = "):].split("\n")[0], line))
        out = run(home, "serve", "--config", str(config))
        assert out.returncode == 2 and "regular file" in out.stderr, (line, out.stderr)
    config = tmp_path / "nul.toml"
    config.write_text(_with(text, "tls", 'client_ca = "/tmp/a\\u0000b"'))
    out = run(home, "serve", "--config", str(config))
    assert out.returncode == 2 and "[tls].client_ca: a NUL character" in out.stderr, out.stderr


def test_the_clis_tls_files_refuse_what_would_hang_or_be_ignored(tmp_path: Path) -> None:
    """--ca-cert from a FIFO (process substitution) is read with a deadline; a client key
    without its certificate, a certificate that is a FIFO and an encrypted key are each a
    one-line refusal (the key was ignored; OpenSSL hung, or asked for a pass phrase twice)."""
    home = Home(tmp_path, shamir=False)
    client = {"FERROHSM_URL": "https://127.0.0.1:9", "FERROHSM_TOKEN": "x" * 40}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ca = Path(home.ca).read_bytes()
    writer = subprocess.Popen(["sh", "-c", f'cat "{home.ca}" > "{fifo}"'])
    piped = run(home, "whoami", "--ca-cert", str(fifo), **client)
    writer.wait(10)
    assert piped.returncode != 0 and "CA certificate" not in piped.stderr, piped.stderr
    assert ca  # the FIFO's CA loaded: the failure is the unreachable server's
    key = tmp_path / "key.pem"
    key.write_bytes(subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                                    "ec_paramgen_curve:P-256", "-aes256", "-pass", "pass:x"],
                                   capture_output=True, check=True).stdout)
    cert = tmp_path / "cert.pem"
    cert.write_bytes(Path(home.ca).read_bytes())
    cases = ((["--client-key", str(key)], "without its certificate"),
             (["--client-cert", str(fifo), "--client-key", str(key)], "not a regular file"),
             (["--client-cert", str(cert), "--client-key", str(key)], "private key is encrypted"))
    for flags, says in cases:
        out = run(home, "whoami", *flags, **client)
        assert out.returncode == 2 and says in out.stderr, (flags, out.stderr)
        assert "pass phrase" not in out.stderr.lower()
