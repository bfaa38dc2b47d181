"""End-to-end: ``proxy_upload_rate`` and ``proxy_download_rate`` measured through `tlsgw serve`
(2 workers): the bytes arrive at the rate (within 10 % above, loosely below on a loaded
machine), all of them, and an upstream's FIN waits for the bytes still held."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from support import Backend, Gateway, connect, free_port

RATE = 64000  # bytes per second; pieces of RATE // 10
PIECE = RATE // 10
N = 96000  # about 1.4 s at RATE after the first piece


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    echo, blast = Backend("echo"), Backend("blast", nbytes=N)
    up, down = free_port(), free_port()
    g = Gateway(tmp_path_factory.mktemp("rates"), f"""
worker_processes: 2
worker_shutdown_timeout: 1s
log_format:
  r: '$status $bytes_sent $bytes_received'
access_log: stdout r
error_log: stderr info
proxy_timeout: 1s
servers:
  - listen: 127.0.0.1:{up}
    proxy_upload_rate: {RATE}
    proxy_pass: {echo.address}
  - listen: 127.0.0.1:{down}
    proxy_download_rate: {RATE}
    proxy_pass: {blast.address}
""", workers=2).start()
    yield g, up, down
    g.stop(timeout=10)
    echo.close()
    blast.close()


def timed_read(s: socket.socket, n: int | None) -> tuple[int, float, float, int]:
    """(bytes, time of the first, time of the last, bytes in the first read) until ``n`` bytes
    or EOF."""
    got, first, last, head = 0, 0.0, 0.0, 0
    while n is None or got < n:
        data = s.recv(65536)
        if not data:
            break
        last = time.monotonic()
        if not got:
            first, head = last, len(data)
        got += len(data)
    return got, first, last, head


def measured(got: int, first: float, last: float, head: int) -> float:
    """Bytes per second after the first piece (which goes at once)."""
    return (got - head) / (last - first)


def check_rate(r: float) -> None:
    assert r <= RATE * 1.10, r  # never faster than the limit (10 %)
    assert r >= RATE * 0.75, r  # and not much slower (timers run late on a loaded machine)


def test_upload_and_download_rates(gw):
    g, up, down = gw
    results: dict[str, tuple[int, float, float, int]] = {}

    def upload() -> None:
        with connect(up, timeout=10) as s:
            s.sendall(b"u" * N)  # into the kernel buffers at once; the gateway paces it
            results["up"] = timed_read(s, N)

    def download() -> None:
        with connect(down, timeout=10) as s:
            results["down"] = timed_read(s, None)  # the blast, then the upstream's FIN

    threads = [threading.Thread(target=f) for f in (upload, download)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results["up"][0] == N and results["down"][0] == N  # every byte, then EOF
    assert results["up"][3] <= PIECE and results["down"][3] <= PIECE
    check_rate(measured(*results["up"]))
    check_rate(measured(*results["down"]))
    lines = g.access_lines(2)
    assert f"200 {N} 0" in lines  # the download: all sent, at its rate
