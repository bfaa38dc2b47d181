"""Linux process controls through ``prctl(2)``: the parent-death signal and the process name;
the process title ``ps`` shows (:func:`set_title`, with setproctitle); glibc's ``malloc_trim(3)`` (see :mod:`tlsgw.process.memory`); and signal names as log lines
print them.

Declared once here (ctypes prototypes set at import), used by the master and its workers. On a
system without ``prctl`` both calls do nothing and return False (without glibc, no trim is
made); the worker's control socket
(see :mod:`tlsgw.process.master`) still notices a master that is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal

try:  # a runtime dependency; a checkout whose venv predates it still runs, with comm names only
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover
    _setproctitle = None

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
NAME_MAX = 15  # the kernel keeps 16 bytes of a task's name, NUL included

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
    _prctl.restype = ctypes.c_int
except (OSError, AttributeError):  # not Linux
    _prctl = None

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
    _malloc_trim = None


def _call(option: int, arg: int) -> bool:
    if _prctl is None:
        return False
    if _prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when the thread that forked it exits (the
    master forks from its main thread, which lives as long as the master)."""
    return _call(PR_SET_PDEATHSIG, sig)


def set_name(name: str) -> bool:
    """Name the calling thread (for the main thread: the process, as ``ps -o comm``, ``top``
    and ``pkill NAME`` show it). Threads started afterwards inherit the name."""
    buf = ctypes.create_string_buffer(name.encode()[:NAME_MAX])
    return _call(PR_SET_NAME, ctypes.addressof(buf))


def set_title(title: str, name: str) -> bool:
    """Give the process the title ``ps -o args``, ``ps aux`` and ``top -c`` show (its argv, as
    nginx's ``nginx: worker process``) and the kernel name *name* (``ps -o comm``, ``pkill``).
    False if the argv could not be rewritten (setproctitle missing)."""
    done = False
    if _setproctitle is not None:
        _setproctitle(title)
        done = True
    set_name(name)  # after: setproctitle may set comm to a cut title of its own
    return done


def can_trim() -> bool:
    return _malloc_trim is not None


def trim_heap() -> bool:
    """Give the allocator's free pages back to the kernel (``malloc_trim(0)``). True if any
    memory was released."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False


def signal_name(sig: int) -> str:
    """``SIGUSR1``; ``SIGRTMIN+3`` for the real-time signals the enum does not name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        if signal.SIGRTMIN < sig <= signal.SIGRTMAX:
            return f"SIGRTMIN+{sig - signal.SIGRTMIN}"
        return f"signal {sig}"
