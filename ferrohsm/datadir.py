"""The data directory: made 0700 and checked before anything sealed is written into it."""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
import traceback
from pathlib import Path

from .domain.errors import ConfigError


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` 0700 (and tighten it if it exists): data directories hold sealed secrets.
    A directory that cannot be made, tightened or written, or a path that is not a directory,
    is a ConfigError naming it."""
    given = Path(path)
    try:
        p = followed(given)  # every step checked before anything is made or read there
        for missing in reversed([d for d in (p, *p.parents) if not d.exists()]):
            missing.mkdir(mode=0o700, exist_ok=True)  # a parent made here (data_dir) private too
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {given.absolute()}: {why(exc)}"
                          ) from None
    if not p.is_dir():  # before the chmod: a file named by mistake (an archive) keeps its mode
        raise ConfigError(f"data directory {p.absolute()} is not a directory")
    _refuse_foreign(p)
    try:
        os.chmod(p, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot make data directory {p.absolute()} private (chmod 0700): "
                          f"{why(exc)}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"data directory {p.absolute()} is not writable")
    return p


def followed(path: str | Path) -> Path:
    """The real path of ``path`` (a data directory, existing or to be made), when no other
    user can change where it leads: each folder on the way, and each symlink, belongs to this
    user or root, and no folder holding the next step may be written by another user (a
    shared one only with the sticky bit, as /tmp), or they could rename that step away and
    put theirs in its place. systemd makes ``/var/lib/<name>`` a root-owned link to
    ``/var/lib/private/<name>``: followed. The rest of a path that does not exist yet is
    returned as given, below the last folder checked."""
    current, pending = Path("/"), list(Path(path).absolute().parts[1:])
    for _ in range(400):  # the kernel follows at most 40 links: bounded either way
        if not pending:
            return current
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        step = current / name
        if _shared(current):
            raise ConfigError(f"data directory {path}: {current} may be changed by other users "
                              "(theirs, or writable by them or a group they are in): keep the "
                              "data directory in a folder only its user and root may change")
        try:
            info = os.lstat(step)
        except FileNotFoundError:
            if ".." in pending:  # it would climb out of what is made, past every check
                raise ConfigError(f"data directory {path}: '..' after {step}, which does not "
                                  "exist: give the path without it") from None
            return step.joinpath(*pending)
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in (0, os.geteuid()):
                raise ConfigError(f"data directory {path}: {step} is a symlink another user "
                                  "could change: give the directory it leads to instead")
            target = Path(os.readlink(step))
            current = Path("/") if target.is_absolute() else current
            pending = [*target.parts[1 if target.is_absolute() else 0:], *pending]
            continue
        current = step
    raise ConfigError(f"data directory {path}: too many levels of symlinks")


def _shared(folder: Path) -> bool:
    """Whether another user could rename or replace what ``folder`` holds."""
    info = os.stat(folder)
    return info.st_uid not in (0, os.geteuid()) or (
        not info.st_mode & stat.S_ISVTX and _others_write(info))


def _others_write(info: os.stat_result) -> bool:
    """Whether users other than this one (and root) may write to a folder of ``info``: others
    by mode, or its group when the group has such a member (the user's own private group,
    umask 002 on Debian-like systems, has none: no one else gets in by it)."""
    return bool(info.st_mode & 0o002) or bool(
        info.st_mode & 0o020 and _group_has_others(info.st_gid))


@functools.lru_cache(maxsize=64)
def _group_has_others(gid: int) -> bool:
    import grp
    import pwd
    try:
        group = grp.getgrgid(gid)
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a group or user the system cannot name: assume the worst
        return True
    members = set(group.gr_mem) | {u.pw_name for u in pwd.getpwall() if u.pw_gid == gid}
    return bool(members - {me, "root"})


def _refuse_foreign(p: Path) -> None:
    """Refuse, before anything is read or written there, a directory another user owns or
    could write to: a secret or record planted in it would be trusted (a known JWT secret is
    an administrator token for whoever planted it). Tightening its mode would hide that."""
    info = p.stat()
    if info.st_uid != os.geteuid():
        owner, me = user_name(info.st_uid, bare=True), user_name(os.geteuid(), bare=True)
        raise ConfigError(f"data directory {p.absolute()} belongs to {owner} (uid "
                          f"{info.st_uid}), not to {me} (uid {os.geteuid()}) who runs this: "
                          f"run this as its owner (runuser -u {owner} -- ...), or chown it to "
                          f"{me} if it is to serve as {me}")
    if _others_write(info):
        raise ConfigError(f"data directory {p.absolute()} is writable by other users (mode "
                          f"{info.st_mode & 0o777:04o}): a file planted there would be trusted; "
                          "check what it holds, then chmod 700 it")


def why(exc: OSError) -> str:
    """``Read-only file system (EROFS)``: the reason of an OS error, in one short phrase."""
    code = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or type(exc).__name__
    return f"{reason} ({code})" if code else reason


def check_store_kind(kind: str, data_dir: str | Path) -> None:
    """Refuse a data directory that holds the other local key store, before anything is made in
    it: started with the wrong ``key_store``, the server would find its store empty and offer
    ``--accept-store-loss``, which would record every key of the real store as lost (and the
    memory store would append to the real store's audit log)."""
    data = Path(data_dir)
    if kind == "postgres" or not data.is_dir():
        return
    found = None
    if kind != "sqlite" and (data / "keys.sqlite3").is_file():
        found = "sqlite"
    elif kind != "filesystem" and (data / "keys").is_dir() and any((data / "keys").iterdir()):
        found = "filesystem"
    if found is not None:
        raise ConfigError(f"[storage].key_store is {kind!r}, but {data} holds a {found!r} key "
                          f"store: set key_store = \"{found}\" (or --key-store {found}), or "
                          "give another data_dir")


def local_store_present(kind: str, data_dir: str | Path) -> bool:
    """Whether ``data_dir`` holds a key store of ``kind`` already, found without opening (which
    would create one); a database store (postgres) lives elsewhere: True, it is opened to see."""
    data = Path(data_dir)
    if kind == "sqlite":
        return (data / "keys.sqlite3").is_file()
    if kind == "filesystem":
        return (data / "keys").is_dir()
    return True


_CALL_RE = re.compile(r"([A-Za-z_][\w.]*)\(")


def startup_failure(exc: OSError) -> ConfigError:
    """An OS error while starting (a read-only or full data directory, a missing file), as the
    one-line configuration error ``cannot <operation> <path>: <reason>``. The operation is the
    call on the failing line; a line that raises a new error (``raise error(...)`` in
    socket.create_server) names no operation, and one with no path either is not guessed to be
    a file of the data directory (a busy port once read "cannot error a file of ...")."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = frames[-1] if frames else None
    line = (inner.line or "").strip() if inner else ""
    call = None if line.startswith("raise") else _CALL_RE.search(line)
    where = f" (in {inner.name})" if inner else ""  # only when nothing else says where
    if call is None and exc.filename is None:
        return ConfigError(f"cannot start{where}: {why(exc)}")
    operation = call.group(1).rpartition(".")[2] if call else "access"  # os.open: open
    if exc.filename is None:
        return ConfigError(f"cannot {operation} a file of the data directory{where}: "
                           f"{why(exc)}")
    return ConfigError(f"cannot {operation} {exc.filename}: {why(exc)}")


def user_name(uid: int, bare: bool = False) -> str:
    """``alice (uid 1000)``, or ``alice`` when ``bare`` (the uid alone when it has no name): an
    operator fixes ownership by name."""
    import pwd
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
    return name if bare else f"{name} (uid {uid})"
