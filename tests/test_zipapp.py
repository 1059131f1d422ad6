"""Build dist/ferrohsm with build.py and run it isolated (python3 -I), as a bare host would."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from procstatus import catches_sighup

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "ferrohsm"
    subprocess.run([sys.executable, str(ROOT / "build.py"), "--out", str(out)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    return out


def run(zipapp: Path, *args: str, home: Path,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "SHIV_ROOT": str(home / "shiv"), **(extra_env or {})}
    return subprocess.run([sys.executable, "-I", str(zipapp), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=home)


def test_version_and_help(zipapp: Path, tmp_path: Path) -> None:
    from ferrohsm import __version__
    result = run(zipapp, "--version", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ferrohsm {__version__}"
    help_text = run(zipapp, "--help", home=tmp_path)
    assert help_text.returncode == 0
    for command in ("serve", "quickstart", "token", "audit"):
        assert command in help_text.stdout


def test_second_run_is_fast(zipapp: Path, tmp_path: Path) -> None:
    run(zipapp, "--version", home=tmp_path)  # first run extracts
    start = time.perf_counter()
    assert run(zipapp, "--version", home=tmp_path).returncode == 0
    assert time.perf_counter() - start < 5  # the bench holds the real (< 1 s) figure


def test_usage_error_exits_2_without_traceback(zipapp: Path, tmp_path: Path) -> None:
    result = run(zipapp, "no-such-command", home=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_build_is_reproducible(zipapp: Path, tmp_path: Path) -> None:
    again = tmp_path / "ferrohsm"
    subprocess.run([sys.executable, str(ROOT / "build.py"), "--out", str(again)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(
        zipapp.read_bytes()).digest()


def test_zipapp_verifies_an_exported_audit_log_offline(zipapp: Path, tmp_path: Path) -> None:
    import base64
    import secrets

    from ferrohsm.audit.chain import AuditEvent, record_line
    from ferrohsm.audit.sinks import FileSink
    key = secrets.token_bytes(32)
    sink = FileSink(tmp_path / "audit", key, durable=False)
    for n in range(50):
        sink.append(AuditEvent(actor="alice", role="operator", action="key.rotate",
                               outcome="success", message=f"rotation {n}"))
    records = sink.read(0, 1000)
    sink.close()
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(record_line(r) + b"\n" for r in records))
    key_file = tmp_path / "hmac.key"
    key_file.write_text(base64.b64encode(key).decode())
    key_file.chmod(0o600)
    ok = run(zipapp, "audit", "verify", str(export), "--hmac-key-file", str(key_file),
             home=tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    lines = export.read_bytes().splitlines(keepends=True)
    export.write_bytes(b"".join(lines[:10] + lines[11:]))  # delete one record
    bad = run(zipapp, "audit", "verify", str(export), "--hmac-key-file", str(key_file),
              home=tmp_path)
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "deleted" in bad.stdout, bad.stdout


def test_zipapp_checks_signed_votes_offline(zipapp: Path, tmp_path: Path) -> None:
    """``audit verify-votes`` in the one-file build: a signed vote checks, a forged one fails."""
    import base64
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ferrohsm.domain.votes import fingerprint, vote_message
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "approvers.toml").write_text(f'[approvers]\nalice = """\n{pem}"""\n')
    approval_id, request_hash = "0193c1d2-0000-7000-8000-000000000001", "ab" * 32
    message = vote_message(approval_id, request_hash, True)

    def record(signature: bytes) -> str:
        return json.dumps({"seq": 7, "actor": "alice", "action": "approval.approved",
                           "outcome": "success", "details": {
                               "approval_id": approval_id, "request_hash": request_hash,
                               "vote_signature": base64.b64encode(signature).decode(),
                               "vote_key_fingerprint": fingerprint(der),
                               "vote_message": message.decode()}}) + "\n"
    good, forged = tmp_path / "good.jsonl", tmp_path / "forged.jsonl"
    good.write_text(record(key.sign(message)))
    forged.write_text(record(Ed25519PrivateKey.generate().sign(message)))
    keys = str(tmp_path / "approvers.toml")
    ok = run(zipapp, "audit", "verify-votes", str(good), "--approver-keys", keys, home=tmp_path)
    assert ok.returncode == 0 and ": ok" in ok.stdout, ok.stdout + ok.stderr
    bad = run(zipapp, "audit", "verify-votes", str(forged), "--approver-keys", keys,
              home=tmp_path)
    assert bad.returncode == 1 and "bad_signature" in bad.stdout, bad.stdout + bad.stderr


def test_the_manual_page_and_completion_ship_in_the_build(zipapp: Path, tmp_path: Path) -> None:
    """`dist/ferrohsm man` and `dist/ferrohsm completion bash` work from the one file alone."""
    page = run(zipapp, "man", home=tmp_path)
    assert page.returncode == 0, page.stderr
    assert page.stdout.startswith(".TH FERROHSM 1 ") and '.SS "ferrohsm keys create"' in \
        page.stdout.replace("\\-", "-")
    shipped = zipapp.with_name("ferrohsm.1").read_text()  # written by build.py beside it
    # the very page `man` prints (it was dated 2023-11-14, the pinned SOURCE_DATE_EPOCH of the
    # reproducible zip, which is no date: an acceptance tester)
    assert shipped == page.stdout and '"version ' in shipped.split("\n", 1)[0]
    script = run(zipapp, "completion", "bash", home=tmp_path)
    assert script.returncode == 0 and "complete -o bashdefault -o default -F _ferrohsm ferrohsm" \
        in script.stdout


# ---- an unwritable home, and one extraction per build (deploy/zipapp_main.py) ----------------

def _second_build(tmp_path: Path) -> Path:
    """A build of this tree with one byte changed: a new build id, as after an upgrade."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", "dist", "build", "__pycache__", ".*_cache", "tests", "*.egg-info", "node_modules"))
    with (tree / "ferrohsm" / "__init__.py").open("a") as fh:
        fh.write("# a later build\n")
    out = tmp_path / "v2" / "ferrohsm"
    subprocess.run([sys.executable, str(tree / "build.py"), "--out", str(out)], check=True,
                   cwd=tree, capture_output=True, timeout=600)
    return out


def test_a_previous_builds_leftovers_are_never_shipped(tmp_path: Path) -> None:
    """A checkout copied with cp -r gives the last build's build/lib fresh times: setuptools
    took them for newer than the sources and shipped old code (a red team built that way)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", "dist", "build", "__pycache__", ".*_cache", "tests", "*.egg-info", "node_modules"))
    stale = tree / "build" / "lib" / "ferrohsm"
    stale.mkdir(parents=True)
    (stale / "left_over.py").write_text("GONE = True\n")
    (stale / "__init__.py").write_text('__version__ = "0.0.0-stale"\n')
    out = tmp_path / "ferrohsm"
    subprocess.run([sys.executable, str(tree / "build.py"), "--out", str(out)], check=True,
                   cwd=tree, capture_output=True, timeout=600)
    with zipfile.ZipFile(out) as built:
        names = built.namelist()
        init = next(n for n in names if n.endswith("site-packages/ferrohsm/__init__.py"))
        assert b"0.0.0-stale" not in built.read(init)
    assert not [n for n in names if n.endswith("left_over.py")]


def _as_nobody(zipapp: Path, tmpdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run like a systemd DynamicUser would: nobody, HOME=/nonexistent, no SHIV_ROOT."""
    env = ["PATH=/usr/bin:/bin", "HOME=/nonexistent", f"TMPDIR={tmpdir}"]
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", *env, str(zipapp),
                           *args], capture_output=True, text=True, timeout=120, cwd="/")


def _extractions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("ferrohsm_"))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                    reason="needs root and runuser to run as nobody")
def test_runs_from_an_unwritable_home_and_keeps_one_extraction(zipapp: Path) -> None:
    import fcntl
    import pwd
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="ferrohsm-zipapp-"))
    try:
        base.chmod(0o755)
        nobody = pwd.getpwnam("nobody")
        tmpdir = base / "tmp"
        tmpdir.mkdir()
        os.chown(tmpdir, nobody.pw_uid, nobody.pw_gid)
        first = base / "v1" / "ferrohsm"
        first.parent.mkdir(mode=0o755)
        shutil.copy(zipapp, first)
        second = _second_build(base)
        for folder in (base / "v2", base / "tree"):
            folder.chmod(0o755)

        result = _as_nobody(first, tmpdir, "--version")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        root = tmpdir / f"ferrohsm-{nobody.pw_uid}"
        assert root.stat().st_mode & 0o777 == 0o700 and root.stat().st_uid == nobody.pw_uid
        [old] = _extractions(root)

        # a process of the old build still running keeps its extraction...
        fd = os.open(root / f".{old}_inuse", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            assert _as_nobody(second, tmpdir, "--version").returncode == 0
            assert old in _extractions(root) and len(_extractions(root)) == 2
        finally:
            os.close(fd)
        # ...and the next start of the new build removes it once nothing runs from it
        assert _as_nobody(second, tmpdir, "--version").returncode == 0
        [new] = _extractions(root)
        assert new != old
        assert not any(old in name for name in os.listdir(root))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_unusable_shiv_root_is_one_line_not_a_traceback(zipapp: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SHIV_ROOT": str(blocked / "shiv")}
    result = subprocess.run([sys.executable, "-I", str(zipapp), "--version"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2  # a configuration error, like every other one
    assert "Traceback" not in result.stderr and "SHIV_ROOT" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_shiv_root_to_be_made_in_a_sticky_shared_folder_is_made(zipapp: Path,
                                                                   tmp_path: Path) -> None:
    """SHIV_ROOT=/tmp/x that did not exist yet was refused ("cannot be created"): the
    nearest folder that exists, shared but sticky as /tmp, was judged as if it were to hold
    the code itself. One without the sticky bit still is refused."""
    for mode, works in ((0o1777, True), (0o777, False)):
        shared = tmp_path / f"shared-{mode:o}"
        shared.mkdir()
        shared.chmod(mode)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "SHIV_ROOT": str(shared / "x" / "y")}
        result = subprocess.run([sys.executable, "-I", str(zipapp), "--version"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert (result.returncode == 0) is works, result.stderr
        if works:
            assert (shared / "x" / "y").stat().st_mode & 0o777 == 0o700
            assert (shared / "x").stat().st_mode & 0o777 == 0o700


def _no_shiv_root(zipapp: Path, home: Path, tmpdir: Path,
                  umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "TMPDIR": str(tmpdir)}
    return subprocess.run([sys.executable, "-I", str(zipapp), "--version"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=home,
                          preexec_fn=lambda: os.umask(umask))


def test_a_home_that_does_not_exist_is_never_created(zipapp: Path, tmp_path: Path) -> None:
    """HOME=/nonexistent (nobody's, a DynamicUser's): the cache goes to the private temporary
    folder; the launcher makes no home (as root it could, and a root-owned one would then
    lock the real user out of it)."""
    home, tmpdir = tmp_path / "missing" / "home", tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "TMPDIR": str(tmpdir)}
    result = subprocess.run([sys.executable, "-I", str(zipapp), "--version"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmpdir)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "missing").exists()
    assert (tmpdir / f"ferrohsm-{os.getuid()}").is_dir()


def test_an_extraction_root_others_can_write_is_never_used(zipapp: Path,
                                                           tmp_path: Path) -> None:
    """Red team: under umask 000 the launcher made ~/.cache 0777, and used a cache folder with
    no check of who could write it: another user swapped in their own extraction and the next
    run (as root) imported their code. Parents are now made 0700, and a root that another user
    could change (the folder or one above it) is passed over for the private temporary one."""
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(mode=0o755)
    tmpdir.mkdir(mode=0o700)
    made = _no_shiv_root(zipapp, home, tmpdir, umask=0)
    assert made.returncode == 0, made.stderr
    assert (home / ".cache").stat().st_mode & 0o777 == 0o700
    assert (home / ".cache" / "ferrohsm").stat().st_mode & 0o777 == 0o700

    shutil.rmtree(home / ".cache" / "ferrohsm")
    (home / ".cache").chmod(0o777)  # as an older launcher left it
    passed = _no_shiv_root(zipapp, home, tmpdir)
    assert passed.returncode == 0, passed.stderr
    assert f"not extracting under {home}/.cache:" in passed.stderr, passed.stderr  # the culprit
    assert not (home / ".cache" / "ferrohsm").exists() or not any(
        (home / ".cache" / "ferrohsm").iterdir())
    assert _extractions(tmpdir / f"ferrohsm-{os.getuid()}")
    # umask 002 with a private group (no one else in it, as Debian sets users up): not shared
    import grp
    import pwd
    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid())
    if not (set(group.gr_mem) | {u.pw_name for u in pwd.getpwall()
                                 if u.pw_gid == group.gr_gid}) - {me, "root"}:
        (home / ".cache").chmod(0o775)  # group-writable: the group is ours alone
        private = _no_shiv_root(zipapp, home, tmpdir)
        assert private.returncode == 0 and private.stderr == "", private.stderr
        assert _extractions(home / ".cache" / "ferrohsm")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_an_extraction_root_of_another_user_is_never_used(zipapp: Path, tmp_path: Path) -> None:
    import pwd
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    (home / ".cache" / "ferrohsm").mkdir(parents=True, mode=0o700)
    tmpdir.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(home / ".cache" / "ferrohsm", nobody.pw_uid, nobody.pw_gid)
    result = _no_shiv_root(zipapp, home, tmpdir)
    assert result.returncode == 0 and "not a folder of this user" in result.stderr, result.stderr
    assert not any((home / ".cache" / "ferrohsm").iterdir())
    assert _extractions(tmpdir / f"ferrohsm-{os.getuid()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give folders to another user")
def test_the_extraction_root_is_used_by_its_real_path(zipapp: Path, tmp_path: Path) -> None:
    """Red team: the check looked at the real path but shiv used the given one, through
    another user's symlink, which they could repoint between the check and the import. The
    real path is used now, and a link that leads into another user's folder is refused; and
    root with a user's HOME creates nothing in it (it made their ~/.cache root's)."""
    import pwd
    nobody = pwd.getpwnam("nobody")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir(mode=0o755)
    ours.mkdir(mode=0o700)
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    (theirs / "link").symlink_to(ours)
    os.lchown(theirs / "link", nobody.pw_uid, nobody.pw_gid)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SHIV_ROOT": str(theirs / "link")}
    first = subprocess.run([sys.executable, "-I", str(zipapp), "--version"], capture_output=True,
                           text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    assert _extractions(ours)  # extracted under the real path
    evil = theirs / "evil"
    evil.mkdir(mode=0o777)
    os.chown(evil, nobody.pw_uid, nobody.pw_gid)
    (theirs / "link").unlink()
    (theirs / "link").symlink_to(evil)  # repointed: now it leads into their folder
    second = subprocess.run([sys.executable, "-I", str(zipapp), "--version"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == 2 and "other users could change it" in second.stderr
    assert not any(evil.iterdir())

    home, tmpdir = tmp_path / "userhome", tmp_path / "tmp"
    home.mkdir(mode=0o755)
    tmpdir.mkdir(mode=0o700)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    sudo = _no_shiv_root(zipapp, home, tmpdir)
    assert sudo.returncode == 0 and sudo.stderr == "", sudo.stderr
    assert not any(home.iterdir())  # no root-owned ~/.cache left in the user's home
    assert _extractions(tmpdir / f"ferrohsm-{os.getuid()}")


def test_the_extraction_lock_file_is_private(zipapp: Path, tmp_path: Path) -> None:
    """shiv creates its lock with no mode (0755 under umask 022); the launcher makes it 0600,
    and narrows one an older launcher left wider."""
    root = tmp_path / "shiv"
    assert run(zipapp, "--version", home=tmp_path).returncode == 0
    [lock] = [p for p in root.iterdir() if p.name.endswith("_lock")]
    assert lock.stat().st_mode & 0o777 == 0o600
    lock.chmod(0o755)
    assert run(zipapp, "--version", home=tmp_path).returncode == 0
    assert lock.stat().st_mode & 0o777 == 0o600


def test_zipapp_carries_the_postgres_driver(zipapp: Path, tmp_path: Path) -> None:
    """psycopg travels inside the zip (pure Python over the host's libpq, see build.py): cut off
    from every site-packages, the zip app still loads it and libpq answers (connection refused
    on a closed port), where a missing driver would be a configuration error naming it."""
    args = ("quickstart", "--key-store", "postgres", "--data-dir", str(tmp_path / "d"),
            "--listen", "127.0.0.1:0")
    unset = run(zipapp, *args, home=tmp_path)
    assert unset.returncode == 2 and "FERROHSM_POSTGRES_DSN" in unset.stderr, unset.stderr
    refused = run(zipapp, *args, home=tmp_path,
                  extra_env={"FERROHSM_POSTGRES_DSN": "postgresql://hsm:pw-x9@127.0.0.1:1/keys"})
    assert refused.returncode == 1, refused.stderr
    assert "cannot connect to PostgreSQL at hsm@127.0.0.1:1/keys" in refused.stderr
    assert "psycopg" not in refused.stderr and "pw-x9" not in refused.stderr


def test_zipapp_init_prints_shares_that_reconstruct_the_checked_key(zipapp: Path,
                                                                     tmp_path: Path) -> None:
    """`ferrohsm init` from the one-file build: any 2 of the 3 shares it prints open the check
    value it kept, and nothing else it wrote holds a share."""
    import base64
    import itertools
    import re
    import secrets

    from ferrohsm.crypto import shamir
    from ferrohsm.custody import state
    from ferrohsm.custody.shares import parse_share
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SHIV_ROOT": str(tmp_path / "shiv"),
           "FERROHSM_JWT_HS256_SECRET": secrets.token_urlsafe(40),
           "FERROHSM_AUDIT_HMAC_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    out = subprocess.run([sys.executable, "-I", str(zipapp), "init", "--data-dir",
                          str(tmp_path / "data"), "--shares", "3", "--threshold", "2"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shares = [parse_share(s) for s in re.findall(r"fhsm1-\S+", out.stdout)]
    assert len(shares) == 3
    custody = state.load(tmp_path / "data")
    for pair in itertools.combinations(shares, 2):
        assert custody.current.opens_with(shamir.combine([(s.x, s.y) for s in pair]))
    written = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert not any(s.text().encode() in written for s in shares)


def test_the_launcher_holds_sighup_before_the_app_loads(zipapp: Path, tmp_path: Path) -> None:
    """`dist/ferrohsm serve` held SIGHUP only once the CLI and the server were imported: a
    reload asked in its first 0.7 s killed it (an outside tester). The launcher holds it in
    its first lines, before cryptography's library is loaded."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SHIV_ROOT": str(tmp_path / "shiv")}
    run(zipapp, "--version", home=tmp_path)  # extracted, as on every start but the first
    proc = subprocess.Popen([sys.executable, "-I", str(zipapp), "quickstart", "--data-dir",
                             str(tmp_path / "data"), "--listen", "127.0.0.1:0"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not catches_sighup(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.0005)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "_rust.abi3.so" not in maps  # cryptography not loaded yet: held that early
        for _ in range(20):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(30)
