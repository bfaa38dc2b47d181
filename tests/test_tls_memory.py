"""Many short TLS sessions through a real ``tlsgw serve``: the worker's memory stays flat.

Issue 7, defect 1: every finished TLS session used to sit in a reference cycle, so its OpenSSL
memory waited for Python's cyclic collector; after 100k sessions the workers held over 500 MB.
``test_session_lifetime.py`` pins down each cycle in-process; this is the end-to-end figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import pytest
import uvloop
from support import free_port

pytestmark = pytest.mark.timeout(240)

SESSIONS = 20_000
CONCURRENCY = 50


def worker_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def run_sessions(port: int, ctx: ssl.SSLContext, count: int) -> int:
    """``count`` TLS sessions (full handshake, 4 bytes echoed, close), ``CONCURRENCY`` at a
    time; returns how many echoed correctly."""

    async def main() -> int:
        left, ok = count, 0

        async def client() -> None:
            nonlocal left, ok
            while left > 0:
                left -= 1
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                     server_hostname="localhost")
                w.write(b"ping")
                if await r.readexactly(4) == b"ping":
                    ok += 1
                w.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await w.wait_closed()

        async with asyncio.timeout(180):
            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        return ok

    return uvloop.run(main())


def test_many_tls_sessions_leave_worker_memory_flat(gateway, backends, pki):
    b = backends("echo")
    port = free_port()
    gw = gateway(f"""
error_log: stderr notice
servers:
  - listen: 127.0.0.1:{port} ssl
    ssl_certificate: {pki.server}
    ssl_certificate_key: {pki.server_key}
    proxy_pass: {b.address}
""")
    (pid,) = gw.worker_pids()
    ctx = ssl.create_default_context(cafile=pki.ca)
    assert run_sessions(port, ctx, 1000) == 1000  # warm-up: allocator arenas, caches
    before = worker_rss_kib(pid)
    started = time.monotonic()
    assert run_sessions(port, ctx, SESSIONS) == SESSIONS
    took = time.monotonic() - started
    grown = worker_rss_kib(pid) - before
    print(f"{SESSIONS} TLS sessions in {took:.1f} s; worker RSS {before} KiB, grew {grown} KiB")
    assert grown < 20 * 1024, f"worker RSS grew {grown} KiB over {SESSIONS} TLS sessions"
