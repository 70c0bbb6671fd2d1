"""Linux's openat2(2), reached through libc's ``syscall()``: resolve a whole name beneath a
directory in one call, refusing every symlink and every escape.

Must never open anything but what it is asked (it is a thin wrapper); where the kernel, the
architecture or a seccomp filter lacks it, ``openat2`` is None and callers take their own path.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable

__all__ = ["PATH_FLAGS", "RESOLVE_STRICT", "openat2"]


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def _load_openat2() -> Callable[[int, bytes, int, int], int] | None:
    """Linux's openat2(2) through libc's syscall(); None where it does not exist or is barred."""
    if sys.platform != "linux" or platform.machine() not in _OPENAT2_MACHINES:
        return None
    if not os.path.isdir("/proc/self/fd"):  # the reopen below goes through it
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    def openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
        how = _OpenHow(flags, 0, resolve)
        fd = int(syscall(_SYS_OPENAT2, dir_fd, path, ctypes.byref(how), ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd

    # Probe once: an old kernel answers ENOSYS, a container's seccomp filter EPERM or ENOSYS.
    try:
        os.close(openat2(_AT_FDCWD, b".", PATH_FLAGS, RESOLVE_STRICT))
    except OSError:
        return None
    return openat2


# openat2 has one number on every architecture that has it (the generic syscall table).
_SYS_OPENAT2 = 437
_OPENAT2_MACHINES = frozenset({"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"})
_AT_FDCWD = -100
PATH_FLAGS = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC
# The kernel refuses any '..' escape, absolute path or symlink anywhere on the way (ELOOP/EXDEV):
# such names go to the component-by-component walk, which knows which symlinks may stay.
RESOLVE_STRICT = 0x08 | 0x04 | 0x02  # RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | NO_MAGICLINKS
openat2 = _load_openat2() if hasattr(os, "O_PATH") else None
