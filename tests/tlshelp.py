"""Helpers shared by the TLS end-to-end tests: clients (Python ``ssl``, ``openssl s_client``),
access-log parsing, and a gateway that lives for a whole test module."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from support import Gateway, wait_until

OPENSSL = shutil.which("openssl") or "openssl"
CURL = shutil.which("curl") or "curl"

#: Access-log format of the TLS tests: one JSON object per session (not-found values are "");
#: a short shutdown timeout so that a test leaving a session open cannot stall the teardown.
LOG = """
worker_shutdown_timeout: 2s
log_format:
  j: 'escape=json {"status":"$status","port":"$server_port","proto":"$ssl_protocol","cipher":"$ssl_cipher","sni":"$ssl_server_name","reused":"$ssl_session_reused","verify":"$ssl_client_verify","dn":"$ssl_client_s_dn","pid":"$pid","up":"$upstream_addr","conn":"$connection"}'
access_log: stdout j
error_log: stderr info
"""


def log_entries(gw: Gateway, port: int | None = None) -> list[dict[str, str]]:
    """The whole lines only: the writer may be half-way through the last one."""
    out = []
    text = gw.stdout()
    for line in text[:text.rfind("\n") + 1].splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if port is None or e["port"] == str(port):
                out.append(e)
    return out


def wait_entries(gw: Gateway, port: int, n: int, timeout: float = 10.0) -> list[dict[str, str]]:
    """The access-log entries of sessions on ``port``, once there are at least ``n``."""
    wait_until(lambda: len(log_entries(gw, port)) >= n, timeout, f"{n} access-log lines for :{port}")
    return log_entries(gw, port)


def count(gw: Gateway, port: int) -> int:
    """How many sessions on ``port`` are logged so far (to read only the next ones)."""
    return len(log_entries(gw, port))


def new_entries(gw: Gateway, port: int, since: int, n: int,
                timeout: float = 10.0) -> list[dict[str, str]]:
    """The ``n`` access-log entries on ``port`` after the first ``since``."""
    return wait_entries(gw, port, since + n, timeout)[since:since + n]


def error_lines(gw: Gateway, port: int) -> list[str]:
    """Error-log lines that name ``server: 127.0.0.1:PORT`` or belong to a session that does."""
    text = gw.stderr().splitlines()
    conns = {line.split("*", 1)[1].split()[0] for line in text
             if f"connected to 127.0.0.1:{port}" in line and "*" in line}
    return [line for line in text if f"server: 127.0.0.1:{port}" in line
            or ("*" in line and line.split("*", 1)[1].split()[0] in conns)]


def wait_error(gw: Gateway, port: int, *texts: str, timeout: float = 10.0) -> str:
    """The first error-log line of a session on ``port`` that contains every one of ``texts``."""
    def find() -> str | None:
        for line in error_lines(gw, port):
            if all(t in line for t in texts):
                return line
        return None

    try:
        return wait_until(find, timeout, f"{texts} in the error log")  # type: ignore[return-value]
    except AssertionError:
        raise AssertionError(f"no error line for :{port} with {texts}:\n"
                             + "\n".join(error_lines(gw, port))) from None


def tls_connect(port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost",
                session: ssl.SSLSession | None = None, host: str = "127.0.0.1",
                timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def roundtrip(sock: ssl.SSLSocket | socket.socket, data: bytes = b"ping") -> bytes:
    """Send ``data`` through an echo path and return what came back (as many bytes)."""
    sock.sendall(data)
    buf = b""
    while len(buf) < len(data):
        chunk = sock.recv(len(data) - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def refused(port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost") -> str:
    """Connect, expecting the gateway to refuse the TLS session; returns why it failed.

    In TLS 1.3 a client-certificate refusal arrives after the client's handshake has
    completed, so a refused session may also show as the first read failing or ending.
    """
    try:
        s = tls_connect(port, ctx, server_hostname)
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    try:
        s.sendall(b"ping")
        data = s.recv(4)
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    finally:
        s.close()
    assert not data, f"the session was accepted and answered {data!r}"
    return "closed"


TOKEN = "tlsgw-echo-token"


def s_client(port: int, *args: str, send: bytes = TOKEN.encode() + b"\n",
             expect: str | None = TOKEN, timeout: float = 10.0) -> tuple[int, str]:
    """``openssl s_client -connect 127.0.0.1:PORT ARGS``; returns (exit status, output).

    ``send`` is written at once; if ``expect`` is given, stdin stays open until it has come
    back (so TLS 1.3 tickets are in before the client exits), then it is closed.
    """
    proc = subprocess.Popen([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    out = b""
    try:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(send)
            proc.stdin.flush()
        except BrokenPipeError:  # s_client has already exited (a refused handshake): its
            pass                 # output and exit status say why
        if expect is not None:
            # the echo may come back in the middle of a line s_client prints
            while expect.encode() not in out:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        out += proc.stdout.read()
        code = proc.wait()
    finally:
        killer.cancel()
    return code, out.decode(errors="replace")


def curl(url: str, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CURL, "-sS", "--max-time", str(timeout), *args, url],
                          capture_output=True, text=True, timeout=timeout + 5)


def wait_fds(gw: Gateway, baseline: int, timeout: float = 10.0) -> None:
    """Wait until the workers' open descriptors are back to ``baseline`` (no leak)."""
    last: list[int] = []

    def back() -> bool:
        last[:] = [gw.fd_count()]
        return last[0] <= baseline

    try:
        wait_until(back, timeout, "worker fds to return to baseline")
    except AssertionError:
        raise AssertionError(f"worker fds: {last[0]} open, baseline {baseline}") from None


def settled_fds(gw: Gateway, timeout: float = 10.0) -> int:
    """The workers' open descriptor count once it has stopped changing (a test's baseline)."""
    deadline = time.monotonic() + timeout
    prev = gw.fd_count()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = gw.fd_count()
        if now == prev:
            return now
        prev = now
    return prev


class Ports:
    """Distinct free loopback ports: each is held bound until :meth:`release`, so two calls
    cannot return the same one (``support.free_port`` may, once its socket is closed)."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []

    def __call__(self) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.held.append(s)
        return int(s.getsockname()[1])

    def release(self) -> None:
        for s in self.held:
            s.close()
        self.held.clear()


def module_gateway(directory: Path, config: str, workers: int = 1) -> Gateway:
    directory.mkdir(parents=True, exist_ok=True)
    return Gateway(directory, config, workers).start()


def yaml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def entry(**kw: Any) -> str:
    """One ``servers:`` entry from keyword arguments (lists become YAML flow lists)."""
    lines = []
    for i, (k, v) in enumerate(kw.items()):
        val = yaml_list(v) if isinstance(v, list | tuple) else json.dumps(str(v))
        lines.append(f"  {'- ' if i == 0 else '  '}{k}: {val}")
    return "\n".join(lines)
