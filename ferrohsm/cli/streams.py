"""Bytes in and out of the CLI: ``--in FILE`` or stdin, ``--out FILE`` or stdout.

Binary data goes through the byte streams (``sys.stdout.buffer``), never through text encoding.
Files that receive plaintext or key material are created 0600, because a decrypted secret must
not become world-readable just because the umask was loose. A raw binary value is not written to
a terminal: it would garble the screen, and for unwrapped key material, show a secret to anyone
looking over a shoulder.

An output is opened BEFORE the server is asked (``Output.open``): an unwritable ``--out`` must not
cost an approval, a key or an audit record of a success nobody received. The answer is then
written to a temporary file beside the target, flushed to disk and renamed over it, so a reader
never sees half a signature and an interrupted run leaves the old file in place.

Every write that fails (a full disk, an I/O error) ends the same way, through ``writing``:
one line naming the output and the cause, exit 3; or exit 5 when the server had already
answered (and acted: an approval spent, a key created), so the line must not claim that nothing
was sent. Standard output gets that too: main() runs a
command with ``sys.stdout`` behind ``StdoutGuard``, so a plain ``print`` to a full disk is the
same one line as an ``--out`` file, not an unexpected error. A closed pipe stays a
BrokenPipeError (exit 141, main()).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, Self, TextIO, cast

from .errors import CANNOT_WRITE, OUTPUT_LOST, CliExit
from .settings import UsageError

MAX_INPUT = 64 * 1024 * 1024  # far above what the server accepts; stops `cat /dev/zero |` early
CHUNK = 1 << 20  # what hash_input reads at a time


def _source(path: str | None) -> str:
    return "standard input" if path in (None, "-") else str(path)


def _refuse_empty(path: str | None) -> NoReturn:
    raise UsageError(f"{_source(path)} is empty: refusing to process nothing (did the step "
                     "that produces it fail?); give --allow-empty if empty input is intended")


def read_input(path: str | None, *, allow_empty: bool = True, at_most: int = 0) -> bytes:
    """All of ``path`` ('-' or None: stdin); UsageError when empty and not ``allow_empty``.
    ``at_most``: a smaller cap than MAX_INPUT, for an input of known size (a --digest): what
    is longer is refused as not that, without reading it all."""
    if path in (None, "-"):
        data = _read_capped(_stdin(), "stdin", at_most)
    else:
        try:
            with open(path, "rb") as fh:
                data = _read_capped(fh, path, at_most)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") \
                from None
    if not data and not allow_empty:
        _refuse_empty(path)
    return data


def hash_input(path: str | None, hash_names: tuple[str, ...], *,
               allow_empty: bool = True) -> dict[str, bytes]:
    """The digests of ``path`` ('-' or None: stdin) under each of ``hash_names``, read in one
    pass of chunks: an artefact of any size is signed by its digest without being held in
    memory."""
    digests = {name: hashlib.new(name) for name in hash_names}
    try:
        if path in (None, "-"):
            size = _feed(_stdin(), digests)
        else:
            with open(path, "rb") as fh:
                size = _feed(fh, digests)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if not size and not allow_empty:
        _refuse_empty(path)
    return {name: d.digest() for name, d in digests.items()}


def _stdin() -> BinaryIO:
    """Standard input's bytes; a closed one (``<&-``: the interpreter makes it None) is a usage
    error naming the way out, not an AttributeError."""
    if sys.stdin is None:
        raise UsageError("standard input is closed: give --in FILE, or redirect stdin")
    return sys.stdin.buffer


def _feed(stream: BinaryIO, digests: dict[str, Any]) -> int:
    size = 0
    while chunk := stream.read(CHUNK):
        for digest in digests.values():
            digest.update(chunk)
        size += len(chunk)
    return size


class InputTooLarge(UsageError):
    """An input larger than any request carries: main() adds the command's way out."""


def _read_capped(stream: BinaryIO, name: str, at_most: int = 0) -> bytes:
    if at_most:
        return stream.read(at_most + 1)  # the caller says what one byte more means
    data = stream.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise InputTooLarge(f"{name} is larger than {MAX_INPUT // (1024 * 1024)} MiB, more "
                            "than one request to any server carries; nothing was sent")
    return data


def read_text_input(path: str | None, what: str) -> str:
    """A ``fhsm:v…`` value from a file or stdin, surrounding whitespace removed."""
    data = read_input(path).strip()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"the input is not a {what} (expected fhsm:v<N>:<base64> text)") from None
    if not text:
        raise UsageError(f"the input is empty (expected a {what})")
    return text


def write_output(path: str | None, data: bytes, *, secret: bool = False,
                 binary: bool = False) -> None:
    """``data`` to ``path`` ('-' or None: stdout), atomically; ``secret`` files are made 0600."""
    with Output.open(path, secret=secret, binary=binary) as out:
        out.commit(data)


STDOUT = "standard output"


class _Answered:
    """Whether the server has answered a request of this command yet. A write that fails
    before that cost nothing on the server (exit 3); one that fails after it lost an answer
    the server already acted on (exit 5): a spent approval, a created key, an audited
    success."""

    answered = False
    acted = False  # an answer to a request that acts (not a GET): a closed pipe loses it too


def server_answered(acted: bool = False) -> None:
    """Called by the CLI's client for every answer it receives (cli/answered.py); ``acted``
    when the request was one that acts (POST, PUT, PATCH, DELETE)."""
    _Answered.answered = True
    _Answered.acted = _Answered.acted or acted


def has_answered() -> bool:
    """Whether the server has answered a request of this command (any method)."""
    return _Answered.answered


def reset_answered() -> None:
    _Answered.answered = _Answered.acted = False


def server_acted() -> bool:
    """Whether the server answered a request of this command that acts (not a read)."""
    return _Answered.acted


def _cannot_write(where: str, exc: OSError) -> str:
    if not _Answered.answered:
        return f"cannot write {where}: {_why(exc)}"
    return (f"the server carried out the request, but its answer could not be written to "
            f"{where}: {_why(exc)}; the answer is lost (an --approval-id given is spent)")


def stdout_problem() -> str | None:
    """Why standard output cannot take a command's answer, checked before anything is sent:
    closed (``>&-``: the interpreter makes ``sys.stdout`` None) or open read-only. None when
    it is usable, or when it is no file descriptor at all (a test's buffer)."""
    if sys.stdout is None:
        return "standard output is closed"
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return None
    try:
        import fcntl
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return "standard output is closed"
    if flags & os.O_ACCMODE == os.O_RDONLY:
        return "standard output is not open for writing"
    return None


def stdout_reader_gone() -> str | None:
    """Why the answer of a request that acts would be lost: standard output is a pipe or
    socket whose reader has already gone (``| tpyo``, ``| true``), which the kernel flags on
    the writing end (POLLERR, POLLHUP) before anything is written. A command that only reads
    is not asked (it ends 141 at its first write, as ``… | head`` does everywhere)."""
    import select
    import stat
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(mode := os.fstat(fd).st_mode) and not stat.S_ISSOCK(mode):
            return None
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return None
    if any(revents & (select.POLLERR | select.POLLHUP) for _, revents in events):
        return "the reader of standard output has gone (a closed pipe)"
    return None


class StdoutFailed(CliExit):
    """Standard output cannot be written: main() says so once and lets nothing write to it
    again (the interpreter's own flush at exit would fail a second time)."""


@contextmanager
def writing(where: str | None) -> Iterator[None]:
    """Run some writes to ``where`` (None or '-': standard output); an OSError becomes the one
    failure of an output that cannot be written: ``cannot write WHERE: <cause> (ENOSPC)``, exit
    3. A closed pipe is not that: it stays a BrokenPipeError, which main() makes exit 141."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        code = OUTPUT_LOST if _Answered.answered else CANNOT_WRITE
        if where in (None, "-", STDOUT):
            raise StdoutFailed(_cannot_write(STDOUT, exc), code) from None
        raise CliExit(_cannot_write(str(where), exc), code) from None


class StdoutGuard:
    """``sys.stdout`` (or its ``buffer``) as the commands see it: writes and flushes go through
    ``writing``, everything else (isatty, fileno, encoding) is the stream's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: Any) -> int:
        with writing(STDOUT):
            return int(self._stream.write(data))

    def writelines(self, lines: Any) -> None:
        with writing(STDOUT):
            self._stream.writelines(lines)

    def flush(self) -> None:
        with writing(STDOUT):
            self._stream.flush()

    @property
    def buffer(self) -> StdoutGuard:
        return StdoutGuard(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def guarded_stdout() -> Iterator[None]:
    """Standard output behind ``StdoutGuard`` for the duration of one command."""
    original = sys.stdout
    sys.stdout = cast(TextIO, StdoutGuard(original))
    try:
        yield
    finally:
        sys.stdout = original


def _why(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or type(exc).__name__
    return f"{reason} ({code})" if code else reason


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Output:
    """Where a command's answer goes, opened before the server is asked.

    A regular file (or a name not yet taken) gets a temporary sibling now and the rename at
    ``commit``; a device or pipe that already exists (``/dev/null``, ``/dev/stdout``, a FIFO) is
    opened as it is; None or '-' is standard output. Leaving the ``with`` block without a commit
    removes the temporary file and leaves the target untouched."""

    def __init__(self, path: str | None, secret: bool, binary: bool) -> None:
        self.path, self.secret, self.binary = path, secret, binary
        self._fh: BinaryIO | None = None
        self._tmp: Path | None = None
        self._target: Path | None = None
        self._in_place = False  # a file whose folder takes no temporary file: overwritten
        self._held: list[bytes] = []  # what an in-place write keeps until commit

    @classmethod
    def open(cls, path: str | None, *, secret: bool = False, binary: bool = False) -> Output:
        out = cls(path, secret, binary)
        if path is not None and not path.strip():
            raise UsageError("--out is empty: name a file, or '-' for standard output")
        if path in (None, "-") or names_stdout(str(path)):  # /dev/stdout: standard output
            if binary and sys.stdout.isatty():
                raise UsageError("refusing to write binary output to a terminal: "
                                 "use --out FILE or redirect stdout")
            return out
        try:
            inherited = _inherited_fd(str(path), secret)
            if inherited is not None:  # the shell's own open file: never reopened or replaced
                out._fh = os.fdopen(os.dup(inherited), "wb")
            else:
                out._open_file(Path(os.path.realpath(str(path))))
        except OSError as exc:
            raise CliExit(f"cannot write {path}: {_why(exc)}; nothing was sent to the server",
                          CANNOT_WRITE) from None
        return out

    def _open_file(self, target: Path) -> None:
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        if mode is not None and not stat.S_ISREG(mode):  # a device or a pipe: write through
            self._fh = open(target, "wb")  # closed in commit or __exit__
            if self.secret and os.isatty(self._fh.fileno()):  # /dev/tty, //dev/stdout, …
                raise PermissionError(errno.EACCES, "a secret goes to no terminal")
            return
        if mode is not None and not os.access(target, os.W_OK):  # cp and openssl refuse it too:
            # the rename below would not need the permission, and a chmod 444 is deliberate
            raise PermissionError(errno.EACCES, "it exists and is read-only", str(target))
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                       dir=target.parent)
        except PermissionError:
            if mode is None or (self.secret and stat.S_IMODE(mode) & 0o077):
                raise  # a secret goes only where no one else may read it
            # A file this user may write in a folder it may not (a log placed by an
            # administrator): written in place, as a shell's redirection would, not atomically
            self._fh, self._in_place = open(target, "r+b"), True
            return
        except OSError as exc:  # /proc/version exists: its directory takes no new file
            raise OSError(exc.errno, f"{exc.strerror} (creating a temporary file in "
                          f"{target.parent} to replace {target.name} atomically)") from None
        self._tmp, self._target = Path(tmp), target
        self._fh = os.fdopen(fd, "wb")
        # A file replaced keeps its permissions (never wider than 0600 for a secret); a new one
        # gets what the umask allows, or 0600 for a secret.
        keep = stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask()
        os.fchmod(fd, keep & 0o600 if self.secret else keep)
        if mode is not None:  # and its owner, where this user may give it (root): best effort
            with contextlib.suppress(OSError):
                held = target.stat()
                os.fchown(fd, held.st_uid, held.st_gid)

    def write(self, data: bytes) -> None:
        """Add ``data`` (to the temporary file; straight through for stdout and devices; kept
        until ``commit`` for a file written in place, so the old content stays whole until
        the answer is all there)."""
        if self._in_place:
            self._held.append(data)
            return
        with writing(None if self._fh is None else self.path):
            if self._fh is None:
                sys.stdout.flush()
                sys.stdout.buffer.write(data)
            else:
                self._fh.write(data)

    def commit(self, data: bytes = b"") -> None:
        """Write ``data`` and put everything written in place (flushed to disk first)."""
        self.write(data)
        if self._fh is None:
            with writing(None):
                sys.stdout.buffer.flush()
            return
        with writing(self.path):
            if self._in_place:  # emptied first: a write cut short never splices new and old
                self._fh.truncate(0)
                self._fh.write(b"".join(self._held))
            self._fh.flush()
            if self._tmp is not None or self._in_place:
                os.fsync(self._fh.fileno())
            self._fh.close()
            if self._tmp is not None and self._target is not None:
                os.replace(self._tmp, self._target)
                self._tmp = None
                _sync_dir(self._target.parent)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fh is not None and not self._fh.closed:
            try:
                self._fh.close()  # flushes what a failed write left: it fails again, said once
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def names_stdout(path: str) -> bool:
    """Whether ``path`` is this process's standard output by another name (``/dev/stdout``,
    ``/dev/fd/1``, ``/proc/self/fd/1``): Output takes it as ``-``, with every check standard
    output has (closed or read-only refused first; a command's own refusals of a terminal)."""
    found = _FD_PATH.fullmatch(path)
    return found is not None and _fd_of(found) == 1


def _inherited_fd(path: str, secret: bool) -> int | None:
    """The descriptor ``path`` names when it is one the shell gave this process
    (``/dev/fd/N``, ``/proc/self/fd/N``, ``/dev/stderr``, a shell's ``>(cmd)``), else None for
    any other path. Such a path was resolved before, which names a pipe ``pipe:[N]`` (refused
    as a file that cannot be made), or a file the shell opened, then replaced through a
    temporary file (``>> app.log`` wiped app.log). Refused (OSError, before anything is sent):
    a descriptor this process opened itself (close-on-exec: the launcher's lock file on fd 3
    took unwrapped key material), one not open for writing, and for a secret a terminal or a
    file others may read."""
    found = _FD_PATH.fullmatch(path)
    if found is None:
        return None
    fd = _fd_of(found)
    if fd is None:
        return None  # another process's descriptor: opened by name
    try:
        closed_on_exec = fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    except OSError:
        raise OSError(errno.EBADF, "no such descriptor is open") from None
    if closed_on_exec:
        raise OSError(errno.EBADF, "not a descriptor this command was given")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        raise OSError(errno.EBADF, "not open for writing")
    if secret and (os.isatty(fd) or _shared_file(os.fstat(fd))):
        raise OSError(errno.EACCES, "a secret goes to no terminal and no file others may read")
    return fd


def _shared_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and bool(stat.S_IMODE(st.st_mode) & 0o077)


def _fd_of(found: re.Match[str]) -> int | None:
    name, pid, number = found.groups()
    if pid is not None and pid not in ("self", str(os.getpid())):
        return None
    return {"stdout": 1, "stderr": 2}[name] if name else int(number)


_FD_PATH = re.compile(r"/dev/(stdout|stderr)|(?:/dev|/proc/(self|[0-9]+))/fd/([0-9]{1,9})")


def _sync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
