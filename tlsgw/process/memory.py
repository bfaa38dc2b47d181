"""Handing freed heap memory back to the kernel once a burst of connections is over.

Every TLS connection makes uvloop and OpenSSL allocate buffers (uvloop's TLS read buffer alone is
256 KiB of address space, touched as records arrive). When thousands of connections close, the
memory is freed, but glibc's allocator keeps the freed pages in its heaps and arenas, and
fragmentation stops it from shrinking them: measured here, 5,000 idle TLS connections per worker,
once closed, left each worker 115 MiB above where it started, with every Python object gone. The
pages are reused by the next connections, so this is not a leak, but an operator reads it as one,
and a machine that served a burst keeps the memory until the worker restarts.

``malloc_trim(0)`` gives every whole free page of every arena back (``MADV_DONTNEED``). It walks
the heaps, so it is called rarely: from a timer that looks at the open-session count once a
second and trims when it has fallen to half of the peak seen since the last trim (and the peak
was at least :data:`MIN_PEAK`), and again on the next :data:`AFTERWARDS` looks: a session leaves
the open set when it ends, but its transports (and uvloop's TLS buffers with them) are freed a
little later, when the connections have finished closing, so a trim at that very moment can find
the memory still in use (seen: 95 MiB left of 84 MiB grown, in one run of four). A steady load
never trims; the end of a burst trims a few times. With it
the same 5,000 idle TLS connections per worker leave 15 MiB behind instead of 115 MiB, and 2,000
short TLS sessions 4 MiB instead of 44 MiB (``tests/soak/run.py --sessions 2000 --idle 5000
--no-doc``); how much comes back varies with what stays allocated among the freed pages
(tests/test_memory_return.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized

from tlsgw.process import procctl

INTERVAL = 1.0  # seconds between looks at the session count
MIN_PEAK = 64  # sessions: below this, what a trim could return is not worth the walk
AFTERWARDS = 2  # looks that trim again after a burst has ended (see the module docstring)


class MemoryReturn:
    """The once-a-second look at a worker's open sessions; trims after a burst."""

    __slots__ = ("loop", "sessions", "peak", "timer", "trims", "again")

    def __init__(self, loop: asyncio.AbstractEventLoop, sessions: Sized):
        self.loop = loop
        self.sessions = sessions
        self.peak = 0
        self.timer: asyncio.TimerHandle | None = None
        self.trims = 0
        self.again = 0  # trims still to make after the last burst

    def start(self) -> None:
        if procctl.can_trim():
            self.timer = self.loop.call_later(INTERVAL, self.tick)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def tick(self) -> None:
        self.look()
        self.timer = self.loop.call_later(INTERVAL, self.tick)

    def look(self) -> bool:
        """Update the peak; trim if the count fell to half of it. True if it trimmed."""
        n = len(self.sessions)
        if n > self.peak:
            self.peak = n
            return False
        if self.peak >= MIN_PEAK and n <= self.peak // 2:
            self.again = AFTERWARDS
            self.peak = n
        elif self.again:
            self.again -= 1
        else:
            return False
        procctl.trim_heap()
        self.trims += 1
        return True
