# FerroHSM zip app launcher: build.py stores this file as the archive's __main__.py, in place
# of shiv's two-line one, so that it runs before shiv's bootstrap.
#
# Why: shiv extracts the bundled packages (cryptography's native library cannot be imported from
# a zip) under SHIV_ROOT, by default ~/.shiv. That fails with a traceback when $HOME is not
# writable (systemd DynamicUser=, the nobody user), and every new build leaves its own copy
# behind (tens of MB each). So this launcher
#
# 1. picks the extraction root when SHIV_ROOT is not set: $CACHE_DIRECTORY (systemd
#    CacheDirectory=), else $XDG_CACHE_HOME/ferrohsm, else ~/.cache/ferrohsm when $HOME exists
#    and it can be created there, else a private (0700, owned by this user, no symlink)
#    ferrohsm-<uid> folder in the temporary directory; a root (SHIV_ROOT too) is used only when no other user can
#    write to it or to a folder above it (the code we import comes from there);
# 2. holds a shared lock on its own build's extraction for as long as the process runs, and
#    removes the extractions of other builds of the same file name that no running process
#    holds (an old server still running from its extraction keeps it);
# 3. then hands over to shiv's bootstrap, which extracts (once) and runs ferrohsm.__main__.
#
# For `serve` and `quickstart` it first holds SIGHUP (noted in FERROHSM_LAUNCHER_SIGHUP, taken
# over by ferrohsm/cli/earlyhup.py): a reload asked while the app loads must not end it.
#
# Standard library only, and nothing here may print a traceback for an environment problem:
# a root that cannot be used is one line on stderr and exit status 2 (a configuration error,
# as everywhere else in ferrohsm).

import fcntl
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import zipfile
from typing import Any, NoReturn


def _note_hup(signum: int, frame: Any) -> None:
    """A SIGHUP before the server's own hold (ferrohsm/cli/earlyhup.py takes it over)."""
    os.environ["FERROHSM_LAUNCHER_SIGHUP"] = "1"


if sys.argv[1:2] and sys.argv[1] in ("serve", "quickstart"):  # first: a reload is never fatal
    signal.signal(signal.SIGHUP, _note_hup)

_HELD: list[int] = []  # lock descriptors kept open for the life of the process


def _usable(path: str, warn: bool = True) -> str | None:
    """The real path of ``path`` (created 0700 with any missing parent) when it is this
    user's alone (``_unsafe``) and writable, else None. The real path is what is used from
    then on: a symlink on the way that someone swaps later changes nothing."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing != path:  # nothing is created where it would then be refused
        try:
            problem = _unsafe(os.path.realpath(existing), leaf=False)
            mine = os.lstat(existing).st_uid in (0, os.getuid())
        except OSError:  # a dangling link, a folder gone meanwhile
            return None
        if problem is not None:
            if warn and mine:  # (root with a user's
                sys.stderr.write(f"ferrohsm: not extracting under {existing}: {problem}\n")
            return None  # HOME: their folder, passed over quietly)
    saved = os.umask(0o077)  # makedirs gives the parents it creates 0777 & ~umask
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    finally:
        os.umask(saved)
    real = os.path.realpath(path)
    problem = _unsafe(real)
    if problem is not None:
        if warn:
            sys.stderr.write(f"ferrohsm: not extracting under {path}: {problem}\n")
        return None
    return real if os.access(real, os.W_OK | os.X_OK) else None


def _unsafe(real: str, leaf: bool = True) -> str | None:
    """Why another user could change what we import from the real path ``real``, or None:
    it must be this user's (``leaf``; else this user's or root's), not writable by group or
    others, and every folder above it owned by this user or root and writable by no one else
    (a shared one only with the sticky bit, as /tmp), or another user could rename it away
    and put a folder of their own, with their code, in its place."""
    uid, current = os.getuid(), real
    info = os.lstat(current)
    owners = (uid,) if leaf else (0, uid)
    shared = _others_write(info) and (leaf or not info.st_mode & stat.S_ISVTX)  # /tmp: fine
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners or shared:  # to make ours in
        return "it is not a folder of this user that only this user can write"
    while True:
        parent = os.path.dirname(current)
        if parent == current:
            return None
        info = os.stat(parent)
        if info.st_uid not in (0, uid) or (_others_write(info)
                                           and not info.st_mode & stat.S_ISVTX):
            return f"{parent} may be changed by other users"
        current = parent


def _others_write(info: os.stat_result) -> bool:
    """Write by others, or by a group with a member besides this user and root (a private
    group per user, umask 002, lets no one else in: ferrohsm/datadir.py has the same rule)."""
    if info.st_mode & 0o002:
        return True
    if not info.st_mode & 0o020:
        return False
    import grp
    import pwd
    try:
        members = set(grp.getgrgid(info.st_gid).gr_mem)
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return True
    members |= {u.pw_name for u in pwd.getpwall() if u.pw_gid == info.st_gid}
    return bool(members - {me, "root"})


def _private_tmp() -> str:
    """A per-user folder in the shared temporary directory, refused unless it is ours alone:
    another user who made it first could otherwise plant code we would import."""
    path = os.path.join(tempfile.gettempdir(), f"ferrohsm-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        _fail(f"cannot create {path}: {exc.strerror}")
    info = os.lstat(path)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & 0o077 or _unsafe(os.path.realpath(path)) is not None):
        _fail(f"{path} is not a private directory of this user (0700, not a symlink)")
    return os.path.realpath(path)


def extraction_root() -> str:
    explicit = os.environ.get("SHIV_ROOT", "")
    if explicit:
        usable = _usable(os.path.expanduser(explicit), warn=False)  # _fail says it
        if usable is None:
            _fail(f"SHIV_ROOT={explicit} cannot be created or written, or other users could "
                  "change it")
        return usable
    candidates = []
    cache_dir = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if os.path.isabs(cache_dir):
        candidates.append(cache_dir)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        candidates.append(os.path.join(xdg, "ferrohsm"))
    home = os.path.expanduser("~")
    if os.path.isabs(home) and os.path.isdir(home):  # a HOME that does not exist (nobody's
        candidates.append(os.path.join(home, ".cache", "ferrohsm"))  # /nonexistent) stays so
    for candidate in candidates:
        usable = _usable(candidate)
        if usable is not None:
            return usable
    return _private_tmp()


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"ferrohsm: {message}; set SHIV_ROOT to a writable directory\n")
    sys.exit(2)


def _lock(path: str, how: int) -> int | None:
    """An open descriptor on ``path`` locked with ``how``, or None when it is taken (LOCK_NB).
    Retries when the file was replaced meanwhile, so a lock is always on the current file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _private_lock_file(path: str) -> None:
    """Create shiv's extraction lock file 0600 before its bootstrap does: shiv opens it with no
    mode (0755 under the usual umask), and nothing but this user has a reason to open it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # one an older launcher left wider
    finally:
        os.close(fd)


def clean_other_builds(root: str, name: str, build_id: str) -> None:
    """Remove extractions of other builds of ``name`` under ``root`` that nobody runs."""
    pattern = re.compile(r"\.?" + re.escape(name) + r"_([0-9a-f]{64})(?:\.tmp|_lock|_inuse)?")
    try:
        entries = os.listdir(root)
    except OSError:
        return
    others = {m.group(1) for m in map(pattern.fullmatch, entries) if m} - {build_id}
    for other in sorted(others):
        inuse = os.path.join(root, f".{name}_{other}_inuse")
        fd = _lock(inuse, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            continue  # a process of that build is running from it
        try:
            for leftover in (f"{name}_{other}", f"{name}_{other}.tmp"):
                shutil.rmtree(os.path.join(root, leftover), ignore_errors=True)
            for lock in (f".{name}_{other}_lock", f".{name}_{other}_inuse"):
                try:
                    os.unlink(os.path.join(root, lock))
                except OSError:
                    pass
        finally:
            os.close(fd)


def prepare() -> None:
    archive = os.path.realpath(sys.argv[0])
    with zipfile.ZipFile(archive) as zf:
        build_id = json.loads(zf.read("environment.json"))["build_id"]
    root = extraction_root()
    os.environ["SHIV_ROOT"] = root
    root = os.path.expanduser(root)
    name = os.path.basename(archive)
    fd = _lock(os.path.join(root, f".{name}_{build_id}_inuse"), fcntl.LOCK_SH)
    if fd is not None:
        _HELD.append(fd)
    _private_lock_file(os.path.join(root, f".{name}_{build_id}_lock"))
    clean_other_builds(root, name, build_id)


try:
    prepare()
except OSError as exc:
    _fail(f"cannot prepare the extraction folder: {exc.strerror or exc}")

import _bootstrap  # type: ignore[import-not-found]  # noqa: E402  after the root is chosen

_bootstrap.bootstrap()
