"""Start-up on a data directory it cannot use: one configuration error naming the path and the
operation, never "unexpected PermissionError"."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ferrohsm import app as wiring
from ferrohsm.domain.errors import ConfigError


def test_read_only_data_directory_names_the_path_and_the_chmod(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(ConfigError) as info:
        wiring.ensure_private_dir(tmp_path)
    assert str(tmp_path) in info.value.message and "chmod" in info.value.message
    assert "EPERM" in info.value.message and "\n" not in info.value.message


def test_data_directory_that_cannot_be_made_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"cannot create data directory {blocker}/data"):
        wiring.ensure_private_dir(blocker / "data")


def test_any_start_up_os_error_names_the_path_and_the_operation(tmp_path: Path) -> None:
    missing = tmp_path / "audit" / "audit-000001.jsonl"

    def open_segment() -> None:
        os.open(missing, os.O_RDONLY)
    try:
        open_segment()
    except OSError as exc:
        error = wiring.startup_failure(exc)
    assert error.message == (f"cannot open {missing}: "  # no internal function names
                             "No such file or directory (ENOENT)")


def test_an_os_error_raised_anew_names_no_operation_and_no_data_file() -> None:
    """socket.create_server re-raises a failed bind as ``raise error(...)`` with no path: that
    once read "cannot error a file of the data directory (in create_server)"."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        try:
            socket.create_server(("127.0.0.1", taken.getsockname()[1])).close()
        except OSError as exc:
            error = wiring.startup_failure(exc)
    assert error.message.startswith("cannot start (in create_server): Address already in use")
    assert "EADDRINUSE" in error.message and "data directory" not in error.message


def test_every_directory_made_for_the_data_is_private(tmp_path: Path) -> None:
    """The PostgreSQL store makes only the audit folder inside the data directory: the data
    directory made on the way must be 0700 too, whatever the umask."""
    old = os.umask(0o022)
    try:
        wiring.ensure_private_dir(tmp_path / "node-a" / "audit")
    finally:
        os.umask(old)
    for made in (tmp_path / "node-a", tmp_path / "node-a" / "audit"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made


def test_pin_cpu_on_no_core_of_the_machine_names_the_setting_and_the_cores() -> None:
    """Not "cannot os.sched_setaffinity a file of the data directory (in _serve)"."""
    from ferrohsm.cli import serve
    from ferrohsm.config import load_config
    before = os.sched_getaffinity(0)
    config = load_config(None, env={"FERROHSM_SERVER_PIN_CPU": "999"})
    with pytest.raises(ConfigError) as info:
        serve.pin_to(config)
    cores = serve.core_list(set(range(os.cpu_count() or 1)))
    assert info.value.message == (
        f"environment FERROHSM_SERVER_PIN_CPU: [server].pin_cpu = 999: this machine has "
        f"{'core' if os.cpu_count() == 1 else 'cores'} {cores}, and 999 cannot be taken "
        "(Invalid argument)")
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_pin_cpu_takes_a_core_outside_the_affinity_it_started_with() -> None:
    """A server started from a process pinned elsewhere (a benchmark's, a taskset) still takes
    its configured core: any core of the machine's cpuset may be taken."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    code = ("import os, sys; from ferrohsm.cli import serve; from ferrohsm.config import "
            f"load_config; os.sched_setaffinity(0, {{{second}}}); "
            f"serve.pin_to(load_config(None, env={{'FERROHSM_SERVER_PIN_CPU': '{first}'}})); "
            "print(sorted(os.sched_getaffinity(0)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.strip() == f"[{first}]", done.stderr


def test_a_file_given_as_the_data_directory_is_refused_and_keeps_its_mode(
        tmp_path: Path) -> None:
    """``restore --data-dir archive.fhsmbak`` by mistake: refused, and the file was chmod'ed
    0700 on the way."""
    archive = tmp_path / "some.fhsmbak"
    archive.write_text("data")
    archive.chmod(0o600)
    with pytest.raises(ConfigError, match=f"data directory {archive} is not a directory"):
        wiring.ensure_private_dir(archive)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600


# ---- directories and secret files of another user (red team) -------------------------------

def test_a_data_directory_others_can_write_is_refused_not_tightened(tmp_path: Path) -> None:
    """A world-writable data directory was made 0700 and used: a jwt.secret another user had
    planted in it then signed administrator tokens for them. Refused now, nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    for mode in (0o777, 0o757):
        os.chmod(data, mode)
        with pytest.raises(ConfigError, match="writable by other users"):
            wiring.ensure_private_dir(data)
        assert stat.S_IMODE(data.stat().st_mode) == mode  # left for its owner to look at
    os.chmod(data, 0o755)  # noqa: S103  readable, not writable, by others: made private
    assert stat.S_IMODE(wiring.ensure_private_dir(data).stat().st_mode) == 0o700


def test_group_write_counts_only_when_the_group_has_someone_else(tmp_path: Path) -> None:
    """Red team: umask 002 (a private group per user, as Debian sets it up) made every folder
    "changeable by other users", so the README's first command failed in such a checkout.
    A group with no one but this user (and root) lets no one else in; one with others does."""
    import grp
    import pwd

    from ferrohsm import datadir
    me = pwd.getpwuid(os.geteuid())
    alone = [g.gr_gid for g in grp.getgrall()
             if not (set(g.gr_mem) | {u.pw_name for u in pwd.getpwall()
                                      if u.pw_gid == g.gr_gid}) - {me.pw_name, "root"}]
    crowded = [g.gr_gid for g in grp.getgrall()
               if (set(g.gr_mem) | {u.pw_name for u in pwd.getpwall()
                                    if u.pw_gid == g.gr_gid}) - {me.pw_name, "root"}]
    if not alone or not crowded or os.geteuid() != 0:
        pytest.skip("needs root, and groups with and without other members")
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o775)  # noqa: S103  as made under umask 002
    os.chown(work, os.geteuid(), alone[0])
    assert wiring.ensure_private_dir(work / "data").parent == work
    os.chown(work, os.geteuid(), crowded[0])
    datadir._group_has_others.cache_clear()
    with pytest.raises(ConfigError, match="may be changed by other users"):
        wiring.ensure_private_dir(work / "data")


def test_dot_dot_after_a_missing_folder_is_refused_before_anything_is_made(
        tmp_path: Path) -> None:
    """Red team: <missing>/../<unsafe folder>/data passed the walk (the rest of a missing path
    was taken unchecked) and quickstart wrote its secrets there before a later check refused."""
    target = tmp_path / "base" / "new" / ".." / ".." / "elsewhere" / "data"
    (tmp_path / "base").mkdir()
    with pytest.raises(ConfigError, match=r"'\.\.' after"):
        wiring.ensure_private_dir(target)
    assert not (tmp_path / "base" / "new").exists()
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_a_data_directory_or_secret_file_of_another_user_is_refused(
        tmp_path: Path) -> None:
    import pwd

    from ferrohsm.config import read_secret_file
    nobody = pwd.getpwnam("nobody")
    secret = tmp_path / "jwt.secret"
    secret.write_text("attacker-known-secret-" * 3)
    secret.chmod(0o600)
    os.chown(secret, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigError, match=r"belongs to nobody \(uid \d+\), not to root .*"
                                          r"runuser -u nobody"):
        read_secret_file(str(secret), "[secrets].jwt_hs256_secret_file")
    data = tmp_path / "theirs"
    data.mkdir(mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigError, match=r"belongs to nobody .* run this as its owner"):
        wiring.ensure_private_dir(data)
    # quickstart stops before it writes a secret into their directory
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(data), "--listen", "127.0.0.1:0"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 2 and "belongs to nobody" in result.stderr, result.stderr
    assert not list(data.iterdir())


def test_a_data_directory_symlink_only_this_user_or_root_can_change_is_followed(
        tmp_path: Path) -> None:
    """systemd's DynamicUser= state directory is a root-owned link to private/<name>: the
    shipped unit could not start while every link was refused. Every step of the path is
    checked (red team): a folder on the way that others may write to, a link in one, or a
    target below one is refused, whether the data directory is a link or not."""
    real = tmp_path / "private" / "hsm"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "hsm").symlink_to("private/hsm")
    assert wiring.ensure_private_dir(tmp_path / "hsm") == real
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # noqa: S103  the folder another user could write to
    (shared / "hsm").symlink_to(real)
    (shared / "plain").mkdir(mode=0o700)
    for inside in ("hsm", "plain", "new"):  # a link, a directory, one to be made: all refused
        with pytest.raises(ConfigError, match="may be changed by other users"):
            wiring.ensure_private_dir(shared / inside)
    assert not (shared / "new").exists()
    os.chmod(shared, 0o1777)  # noqa: S103  sticky, as /tmp: entries there are their owner's
    assert wiring.ensure_private_dir(shared / "hsm") == real
    below = tmp_path / "open"
    below.mkdir()
    os.chmod(below, 0o777)  # noqa: S103  a folder above the target others may write to
    (below / "hsm").mkdir(mode=0o700)
    (tmp_path / "hsm2").symlink_to(below / "hsm")
    with pytest.raises(ConfigError, match="may be changed by other users"):
        wiring.ensure_private_dir(tmp_path / "hsm2")
    (tmp_path / "mid").symlink_to(tmp_path / "private")  # a link in the middle of the path
    assert wiring.ensure_private_dir(tmp_path / "mid" / "hsm") == real


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link to another user")
def test_a_link_of_another_user_anywhere_on_the_way_is_refused(tmp_path: Path) -> None:
    import pwd
    nobody = pwd.getpwnam("nobody")
    (tmp_path / "private" / "hsm").mkdir(parents=True, mode=0o700)
    (tmp_path / "mid").symlink_to(tmp_path / "private")
    os.lchown(tmp_path / "mid", nobody.pw_uid, nobody.pw_gid)
    (tmp_path / "last").symlink_to(tmp_path / "mid" / "hsm")  # ours, through theirs
    for path in (tmp_path / "mid" / "hsm", tmp_path / "last"):
        with pytest.raises(ConfigError, match="symlink another user could change"):
            wiring.ensure_private_dir(path)
