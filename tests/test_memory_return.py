"""After a burst of connections, a worker gives the freed memory back (tlsgw/process/memory.py).

glibc keeps freed heap pages; without the trim, thousands of closed TLS connections left a worker
tens of MiB above where it started, with every Python object freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import pytest
import uvloop
from support import wait_until

from tlsgw.process import memory

pytestmark = pytest.mark.timeout(180)

IDLE = 3000


# ---- the rule, without sockets ---------------------------------------------------------------
class _Loop:
    def call_later(self, delay, callback):  # noqa: ANN001, ANN201 - a stand-in
        raise AssertionError("not used by look()")


def test_trims_once_when_a_burst_is_over(monkeypatch):
    trims = []
    monkeypatch.setattr(memory.procctl, "trim_heap", lambda: trims.append(1) or True)
    sessions: list[int] = []
    m = memory.MemoryReturn(_Loop(), sessions)
    for n in (10, 200, 500, 500, 400, 260):  # rising, then falling but above half the peak
        sessions[:] = range(n)
        assert not m.look()
    sessions[:] = range(250)  # half of the peak of 500
    assert m.look() and len(trims) == 1
    for _ in range(memory.AFTERWARDS):  # the closed connections' memory is freed a bit later
        assert m.look()
    assert len(trims) == 1 + memory.AFTERWARDS
    for n in (250, 200, 130, 250):  # the new peak is 250: 130 > 125 is above half of it
        sessions[:] = range(n)
        assert not m.look()
    sessions.clear()
    assert m.look() and len(trims) == 2 + memory.AFTERWARDS
    assert m.peak == 0


def test_steady_or_small_loads_never_trim(monkeypatch):
    trims = []
    monkeypatch.setattr(memory.procctl, "trim_heap", lambda: trims.append(1) or True)
    sessions: list[int] = []
    m = memory.MemoryReturn(_Loop(), sessions)
    for n in [100, 90, 110, 95] * 20:  # churn around a level
        sessions[:] = range(n)
        m.look()
    for n in [memory.MIN_PEAK - 1, 0, memory.MIN_PEAK - 1, 0]:  # bursts below MIN_PEAK
        m.peak = 0
        sessions[:] = range(n)
        m.look()
    assert trims == []


def test_trim_heap_calls_glibc():
    if not memory.procctl.can_trim():
        pytest.skip("no malloc_trim in this C library")
    assert memory.procctl.trim_heap() in (True, False)  # a real call; it may find nothing


# ---- end to end --------------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _hold_idle_tls(port: int, ctx: ssl.SSLContext, count: int, opened) -> None:  # noqa: ANN001
    """Open ``count`` TLS connections (each echoes one byte, so its buffers are in use), call
    ``opened()`` while all are open, then close them all."""

    async def main() -> None:
        sem = asyncio.Semaphore(100)
        conns = []

        async def one() -> None:
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                     server_hostname="localhost")
                w.write(b"x")
                assert await r.readexactly(1) == b"x"
                conns.append(w)

        async with asyncio.timeout(120):
            await asyncio.gather(*(one() for _ in range(count)))
        opened()
        for w in conns:
            w.close()
        for w in conns:
            with contextlib.suppress(OSError, ssl.SSLError):
                await w.wait_closed()

    uvloop.run(main())


def test_closed_idle_tls_connections_give_their_memory_back(gateway, backends, pki):
    b = backends("echo")
    gw = gateway(f"""
error_log: stderr notice
servers:
  - listen: 127.0.0.1:0 ssl
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
    proxy_pass: {b.address}
""")
    (pid,) = gw.worker_pids()
    ctx = ssl.create_default_context(cafile=pki.ca)
    _hold_idle_tls(gw.port(0), ctx, 200, lambda: None)  # warm-up: caches, first arenas
    time.sleep(memory.INTERVAL * 2.5)
    before = _rss_kib(pid)
    peak = []
    _hold_idle_tls(gw.port(0), ctx, IDLE, lambda: peak.append(_rss_kib(pid)))
    grown_open = peak[0] - before
    assert grown_open > 20 * 1024, f"{IDLE} open TLS connections grew the worker by only " \
        f"{grown_open} KiB: the test would prove nothing"
    # The worker sees the count fall within a second or two and trims. How much comes back
    # varies with what else stays allocated among the freed pages: measured here, what stays is
    # 7-10 % of the growth with the trims in most runs and up to about half in some (what else
    # stays allocated among the freed pages varies), 120-125 % without them (closing allocates
    # too), so the bound sits between the two.
    left = []

    def returned() -> bool:
        left.append(_rss_kib(pid) - before)
        return left[-1] < grown_open * 3 // 4

    try:
        wait_until(returned, timeout=12, what="the worker's memory to come back")
    finally:
        print(f"{IDLE} idle TLS connections: +{grown_open} KiB open, +{left[-1]} KiB closed")
