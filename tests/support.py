"""Test helpers: real loopback backends and a real ``tlsgw serve`` subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- backends ------------------------------------------------------------------------------
class _Proto(asyncio.Protocol):
    def __init__(self, backend: Backend):
        self.b = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        b = self.b
        b.accepted += 1
        b.active.add(transport)
        mode = b.mode
        if mode == "identify":
            transport.write(f"{b.name}\n".encode())  # type: ignore[attr-defined]
        elif mode == "reset":
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        elif mode == "close_after":
            transport.write(b"x" * b.nbytes)  # type: ignore[attr-defined]
            transport.close()
        elif mode == "blast":
            self.left = b.nbytes
            self.paused = False
            self._blast()

    def _blast(self) -> None:
        chunk = self.b.chunk
        while self.left > 0 and not self.paused:
            n = min(len(chunk), self.left)
            self.t.write(chunk[:n] if n < len(chunk) else chunk)  # type: ignore[attr-defined]
            self.left -= n
        if self.left <= 0:
            self.t.write_eof()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.b.mode == "blast":
            self._blast()

    def data_received(self, data: bytes) -> None:
        self.b.received += len(data)
        if self.b.mode in ("echo", "identify"):
            self.t.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        if self.b.mode in ("echo", "identify"):
            self.t.write_eof()  # type: ignore[attr-defined]
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.b.active.discard(self.t)


class Backend:
    """An asyncio TCP/unix backend in a thread.

    modes: echo, identify (name line, then echo), reset (RST at once), close_after (send
    ``nbytes`` then close), stall (accept, never read or write), blast (send ``nbytes`` then
    FIN), noaccept (listen with a full backlog so connects hang: a connect timeout).
    """

    def __init__(self, mode: str = "echo", name: str = "", host: str = "127.0.0.1",
                 unix: str | None = None, nbytes: int = 0):
        self.mode, self.host, self.unix, self.nbytes = mode, host, unix, nbytes
        self.chunk = os.urandom(256 * 1024) if mode == "blast" else b""
        self.accepted = 0
        self.received = 0
        self.active: set[asyncio.BaseTransport] = set()
        self.loop = asyncio.new_event_loop()
        self._fillers: list[socket.socket] = []
        self._raw: socket.socket | None = None
        if mode == "noaccept":
            self._raw = socket.socket()
            self._raw.bind((host, 0))
            self._raw.listen(0)
            self.port = self._raw.getsockname()[1]
            # fill the accept queue so further SYNs are dropped
            for _ in range(3):
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect((host, self.port))
                self._fillers.append(c)
            time.sleep(0.1)
        else:
            ready = threading.Event()
            self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
            self.thread.start()
            ready.wait(5)
        self.name = name or self.address

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            if self.unix:
                self.server = await self.loop.create_unix_server(lambda: _Proto(self), self.unix)
                self.port = 0
            else:
                self.server = await self.loop.create_server(lambda: _Proto(self), self.host, 0)
                self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    @property
    def address(self) -> str:
        if self.unix:
            return f"unix:{self.unix}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        for s in self._fillers:
            s.close()
        if self._raw is not None:
            self._raw.close()
            return

        def stop() -> None:
            self.server.close()
            for t in list(self.active):
                t.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)


# ---- the gateway subprocess ----------------------------------------------------------------
class Gateway:
    """``tlsgw serve -c FILE`` as a subprocess; stdout/stderr go to files in ``dir``."""

    def __init__(self, directory: Path, config: str, workers: int = 1):
        self.dir = directory
        self.config = directory / "tlsgw.yaml"
        self.config.write_text(textwrap.dedent(config))
        self.workers = workers
        self.out = directory / "stdout.log"
        self.err = directory / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Gateway:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tlsgw", "serve", "-c", str(self.config)],
                stdout=out, stderr=err, env=env, cwd=self.dir, start_new_session=True)
        if wait:
            started = re.compile(r"worker process \d+ started")
            wait_until(lambda: len(started.findall(self.stderr())) >= self.workers
                       or self.proc.poll() is not None, what="workers to start")
            assert self.proc.poll() is None, self.stderr()
        return self

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def access_lines(self, n: int, timeout: float = 10.0) -> list[str]:
        wait_until(lambda: len(self.stdout().splitlines()) >= n, timeout, f"{n} access-log lines")
        return self.stdout().splitlines()

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        wait_until(lambda: text in self.stderr(), timeout, f"{text!r} in the error log")
        return self.stderr()

    def pids(self) -> list[int]:
        assert self.proc is not None
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, kids)]

    def worker_pids(self) -> list[int]:
        return self.pids()[1:]

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def fd_count(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.worker_pids())

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"tlsgw did not stop on signal {sig}:\n{self.stderr()}")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tlsgw", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def connect(port: int, host: str = "127.0.0.1", source: str | None = None,
            timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(min(1 << 20, n - len(buf)))
        if not d:
            break
        buf += d
    return bytes(buf)


def recv_all(sock: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        d = sock.recv(1 << 16)
        if not d:
            return bytes(buf)
        buf += d
