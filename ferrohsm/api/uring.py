"""An fsync the event loop can start and be told about: Linux io_uring, on the standard library.

Why: with the fsync on a thread, each group of audit records costs the GIL's hand-offs between
the loop and that thread (about eleven context switches a group on the bench machine), and the
waiting thread is woken across cores by the disk's interrupt. Here the loop puts one
IORING_OP_FSYNC on a submission ring (one ``io_uring_enter``, no GIL hand-off), the kernel runs it
on its own worker, and its completion makes an eventfd readable in the loop's selector
(``fileno()``), like a socket. Measured in bench/RESULTS.md.

Only what one fsync at a time needs is here: ``io_uring_setup``, one mmap of the rings (the
single-mmap layout), one of the submission entries, the eventfd registration; Linux 5.7 or
later, so that every flag used is known to the kernel. The system
calls go through ``ctypes``; the ring memory through ``struct`` on ``mmap``. Plain loads and
stores are enough for the ring's head and tail on x86-64 (total store order), so ``available()``
is False on any other machine, as on a kernel without io_uring, in a sandbox that forbids it, or
with ``kernel.io_uring_disabled`` set: the server then flushes on a thread, as before.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
import sys

# x86-64 system call numbers (the same on every kernel since 5.1)
_SETUP, _ENTER, _REGISTER = 425, 426, 427
_OP_NOP, _OP_FSYNC = 0, 3
_SQE_ASYNC = 1 << 4  # IOSQE_ASYNC: straight to a kernel worker (an fsync cannot be done inline)
_REGISTER_EVENTFD = 4
_REGISTER_IOWQ_AFF = 17  # Linux 5.14: the cores this thread's io_uring workers may run on
_FEAT_SINGLE_MMAP = 1
_FEAT_FAST_POLL = 1 << 5  # Linux 5.7: every flag used here (IOSQE_ASYNC is 5.6) is known
_OFF_SQES = 0x10000000
# io_uring_params: 10 u32, io_sqring_offsets (8 u32 + u64), io_cqring_offsets (8 u32 + u64)
_PARAMS = struct.Struct("=10I8IQ8IQ")
# io_uring_sqe: opcode, flags, ioprio, fd, off, addr, len, fsync_flags, user_data, 24 bytes more
_SQE = struct.Struct("=BBHiQQIIQ24x")
_U32 = struct.Struct("=I")
_CQE = struct.Struct("=QiI")  # user_data, res, flags
_MASK32 = 0xFFFFFFFF


class RingError(OSError):
    """io_uring could not be set up here (the caller flushes on a thread instead)."""


def available() -> bool:
    """Whether this machine can run the ring at all (Linux on x86-64)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


class FsyncRing:
    """A small io_uring that runs fsyncs; completions are read on the thread that submits."""

    def __init__(self, entries: int = 8) -> None:
        if not available():
            raise RingError(errno.ENOSYS, "io_uring is used only on Linux x86-64")
        self._libc = _libc()
        params = ctypes.create_string_buffer(_PARAMS.size)
        fd = self._libc.syscall(_SETUP, ctypes.c_uint(entries), params)
        if fd < 0:
            code = ctypes.get_errno()
            raise RingError(code, f"io_uring_setup: {os.strerror(code)}")
        self._fd = fd
        self._efd = -1
        try:
            self._map(_PARAMS.unpack(params.raw))
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._register_eventfd()
        except BaseException:
            self.close()
            raise

    def _map(self, p: tuple[int, ...]) -> None:
        sq_entries, cq_entries, features = p[0], p[1], p[5]
        sq, cq = p[10:17], p[19:26]  # the offsets (the reserved words and addresses skipped)
        if not features & _FEAT_FAST_POLL or not features & _FEAT_SINGLE_MMAP:
            raise RingError(errno.ENOSYS, "io_uring older than Linux 5.7")
        size = max(sq[6] + sq_entries * 4, cq[5] + cq_entries * _CQE.size)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self._rings = mmap.mmap(self._fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, prot)
        self._sqes = mmap.mmap(self._fd, sq_entries * _SQE.size,
                               mmap.MAP_SHARED | mmap.MAP_POPULATE, prot, offset=_OFF_SQES)
        self._sq_tail, self._sq_array = sq[1], sq[6]
        self._sq_mask = _U32.unpack_from(self._rings, sq[2])[0]
        self._cq_head, self._cq_tail, self._cqes = cq[0], cq[1], cq[5]
        self._cq_mask = _U32.unpack_from(self._rings, cq[2])[0]

    def _register_eventfd(self) -> None:
        value = ctypes.c_int(self._efd)
        if self._libc.syscall(_REGISTER, ctypes.c_uint(self._fd),
                              ctypes.c_uint(_REGISTER_EVENTFD), ctypes.byref(value),
                              ctypes.c_uint(1)) < 0:
            code = ctypes.get_errno()
            raise RingError(code, f"io_uring_register: {os.strerror(code)}")

    def steer_workers(self, cpus: frozenset[int]) -> None:
        """Run the kernel workers that carry out this thread's fsyncs on ``cpus``. Must come
        before the thread's first submission: a worker already started keeps its cores."""
        self._submit(_OP_NOP, 0, -1, 0)  # gives this thread its io_uring context, done inline
        self.completions()
        nbytes = (max(cpus) // 64 + 1) * 8  # a cpu_set_t: one bit per core, in 64-bit words
        mask = sum(1 << cpu for cpu in cpus).to_bytes(nbytes, "little")
        if self._libc.syscall(_REGISTER, ctypes.c_uint(self._fd),
                              ctypes.c_uint(_REGISTER_IOWQ_AFF),
                              ctypes.create_string_buffer(mask, nbytes), ctypes.c_uint(nbytes)) < 0:
            code = ctypes.get_errno()
            raise RingError(code, f"io_uring_register: {os.strerror(code)}")

    def fileno(self) -> int:
        """The eventfd that becomes readable when a completion is posted."""
        return self._efd

    def submit_fsync(self, fd: int, user_data: int) -> None:
        """Start ``fsync(fd)``; its result comes back from ``completions()`` with ``user_data``.
        The caller keeps ``fd`` open until then, and at most the ring's size in flight."""
        self._submit(_OP_FSYNC, _SQE_ASYNC, fd, user_data)

    def _submit(self, op: int, flags: int, fd: int, user_data: int) -> None:
        rings = self._rings
        tail = _U32.unpack_from(rings, self._sq_tail)[0]
        index = tail & self._sq_mask
        _SQE.pack_into(self._sqes, index * _SQE.size, op, flags, 0, fd, 0, 0, 0, 0, user_data)
        _U32.pack_into(rings, self._sq_array + index * 4, index)
        _U32.pack_into(rings, self._sq_tail, (tail + 1) & _MASK32)  # published after the entry
        if self._libc.syscall(_ENTER, ctypes.c_uint(self._fd), ctypes.c_uint(1), ctypes.c_uint(0),
                              ctypes.c_uint(0), None, ctypes.c_size_t(0)) < 0:
            code = ctypes.get_errno()
            _U32.pack_into(rings, self._sq_tail, tail)  # not consumed: take it back
            raise OSError(code, f"io_uring_enter: {os.strerror(code)}")

    def completions(self) -> list[tuple[int, int]]:
        """(user_data, result) of every completion posted so far: result is fsync's return
        value, or minus the errno it failed with. Clears the eventfd first, so a completion
        posted meanwhile makes it readable again."""
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        rings, out = self._rings, []
        head = _U32.unpack_from(rings, self._cq_head)[0]
        tail = _U32.unpack_from(rings, self._cq_tail)[0]
        while head != tail:
            user_data, result, _ = _CQE.unpack_from(rings, self._cqes
                                                    + (head & self._cq_mask) * _CQE.size)
            out.append((user_data, result))
            head = (head + 1) & _MASK32
        _U32.pack_into(rings, self._cq_head, head)
        return out

    def close(self) -> None:
        """Unmap and close. Only with nothing in flight (the kernel finishes what is)."""
        for name in ("_sqes", "_rings"):
            mapping = self.__dict__.pop(name, None)
            if mapping is not None:
                mapping.close()
        for fd in (self._efd, self._fd):
            if fd >= 0:
                os.close(fd)
        self._efd = self._fd = -1
