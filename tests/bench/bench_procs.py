"""Processes the benchmark starts, and what it reads about them from /proc.

Every long-lived process (the backend nginx, the gateways) is started as
``timeout -s KILL CAP taskset -c CPUS COMMAND`` in a session of its own:

* ``timeout`` is the hard cap: when ``CAP`` seconds have passed it kills its whole process group
  (nginx/tlsgw master and workers), even if this script was killed with SIGKILL and could not
  clean up.
* :func:`stop` (called from ``finally`` blocks and ``atexit``) ends the group with SIGTERM, then
  SIGKILL if it has not gone after a grace period.

Accounting reads ``/proc`` only: CPU time is ``utime + stime`` (fields 14 and 15 of
``/proc/PID/stat``, whole thread group, in clock ticks) summed over a process and all its
descendants, found through ``/proc/PID/task/TID/children``. Memory is ``VmRSS`` from
``/proc/PID/status``, summed the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_started: list[subprocess.Popen[bytes]] = []


def spawn(argv: Sequence[str], *, cpus: Sequence[int] | None, cap: int, log: Path,
          cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cpus``, killed after ``cap`` seconds at the latest."""
    cmd = ["timeout", "-s", "KILL", str(cap)]
    if cpus and shutil.which("taskset"):
        cmd += ["taskset", "-c", ",".join(map(str, cpus))]
    cmd += list(argv)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, start_new_session=True)
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a process started by :func:`spawn` and everything in its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Workers may outlive their master (tlsgw and nginx both); clear the whole group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc in _started:
        _started.remove(proc)


@atexit.register
def stop_all() -> None:
    for proc in list(reversed(_started)):
        stop(proc, grace=3.0)


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                kids += [int(x) for x in text.split()]
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def gateway_root(wrapper: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The pid of the real master under the ``timeout``/``taskset`` wrapper (taskset execs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(wrapper.pid)
        if kids:
            return kids[0]
        if wrapper.poll() is not None:
            break
        time.sleep(0.01)
    raise RuntimeError(f"process {wrapper.args!r} did not start")


def cpu_ticks(pids: Sequence[int]) -> tuple[int, int]:
    """(utime, stime) in clock ticks, summed over ``pids``."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def cpu_seconds(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``root`` and its descendants."""
    user, system = cpu_ticks(tree(root))
    return user / CLK_TCK, system / CLK_TCK


def rss_kib(root: int) -> int:
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


def http_get(host: str, port: int, path: str, ssl_context: ssl.SSLContext | None = None,
             timeout: float = 5.0) -> bytes:
    """One HTTP/1.0 GET; returns the whole response (used as a readiness probe)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
