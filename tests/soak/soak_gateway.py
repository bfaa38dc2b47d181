"""The processes under soak: ``tlsgw serve`` (master and workers) and the echo backends.

Both are started as subprocesses in their own session (so a stray signal to the load
generator's terminal cannot reach them) and stopped by their pid only. The gateway logs to
files in the run's directory; :class:`AccessLog` reads the access log incrementally so each
phase of the run is accounted on its own lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: One access-log line per session: which listener, which worker, status, bytes, upstream.
LOG_FORMAT = '$server_port $pid $status $bytes_sent $bytes_received "$upstream_addr"'
_LINE = re.compile(r'(\d+) (\d+) (\d+) (\d+) (\d+) "([^"]*)"')
LEVELS = ("warn", "error", "crit", "alert", "emerg")


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass(frozen=True)
class ProcSample:
    name: str
    pid: int
    fds: int
    rss_kib: int


def sample(name: str, pid: int) -> ProcSample:
    """Open descriptors and resident memory of one process, from /proc."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return ProcSample(name, pid, fds, rss)
    except (FileNotFoundError, ProcessLookupError):
        return ProcSample(name, pid, -1, -1)


class Backends:
    """``soak_backend.py``: ``count`` echo servers in one process."""

    def __init__(self, count: int):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "soak_backend.py"), str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            self.stop()
            raise RuntimeError("the echo backends did not start")
        self.addresses = line[1:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Gateway:
    """``python -m tlsgw serve -c DIR/tlsgw.yaml`` with its logs in DIR."""

    def __init__(self, directory: Path, config: str, workers: int):
        self.dir = directory
        self.config = directory / "tlsgw.yaml"
        self.config.write_text(config)
        self.workers = workers
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"
        self.output = directory / "output.log"  # the process's own stdout and stderr
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.stop_seconds = 0.0

    def start(self) -> None:
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tlsgw", "serve", "-c",
                                          str(self.config)], stdout=out, stderr=out, env=env,
                                         cwd=self.dir, start_new_session=True)
        started = re.compile(r"worker process \d+ started")

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tlsgw serve exited with {self.proc.returncode}:\n"
                                   + self.output.read_text(errors="replace")[-2000:])
            text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
            return len(started.findall(text)) >= self.workers

        wait_for(up, 30, "the workers to start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return sorted(int(p) for p in text.split())

    def samples(self) -> list[ProcSample]:
        out = [sample("master", self.pid)]
        out += [sample(f"worker {i}", pid) for i, pid in enumerate(self.worker_pids(), 1)]
        return out

    def worker_fds(self) -> int:
        return sum(max(0, s.fds) for s in self.samples()[1:])

    def settle(self, at_most: int | None = None, quiet: float = 1.0, timeout: float = 60.0) -> bool:
        """Wait until the workers' descriptor count has not changed for ``quiet`` seconds (and
        is at most ``at_most``, if given): sessions closed by the clients have ended. False if
        that did not happen within ``timeout`` (descriptors left behind)."""
        deadline = time.monotonic() + timeout
        last, since = self.worker_fds(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.worker_fds()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet and (at_most is None or now <= at_most):
                return True
        return False

    def error_counts(self) -> tuple[Counter[str], list[str]]:
        """Error-log lines at ``warn`` and above: a count per level and the distinct messages
        (without time, pid and connection number)."""
        counts: Counter[str] = Counter()
        messages: list[str] = []
        text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        for line in text.splitlines():
            m = re.search(r"\[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)", line)
            if m and m.group(1) in LEVELS:
                counts[m.group(1)] += 1
                msg = f"[{m.group(1)}] " + re.sub(r"client: [\d.]+", "client: …", m.group(2))
                if msg not in messages:
                    messages.append(msg)
        output = self.output.read_text(errors="replace")
        if "Traceback" in output:
            counts["traceback"] += output.count("Traceback")
        return counts, messages

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # the master; its workers exit on their own or are orphaned once
            self.proc.wait()
            self.exit_code = None
        self.stop_seconds = time.monotonic() - t0


@dataclass
class Lines:
    """The access-log lines of one phase."""

    count: int = 0
    status: Counter[str] = field(default_factory=Counter)
    workers: Counter[str] = field(default_factory=Counter)
    upstreams: Counter[str] = field(default_factory=Counter)
    bytes_from_clients: int = 0
    bytes_to_clients: int = 0
    unparsed: int = 0


class AccessLog:
    """Reads the gateway's access log from where the previous phase stopped."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def _read(self) -> tuple[list[str], int]:
        """The complete lines after ``offset``, and their length in bytes."""
        if not self.path.exists():
            return [], 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        return data[:end].decode(errors="replace").splitlines(), end

    def take(self, expect: int, timeout: float = 15.0) -> Lines:
        """The next phase's lines, once at least ``expect`` have been written (or ``timeout``)."""
        try:
            wait_for(lambda: len(self._read()[0]) >= expect, timeout, f"{expect} access-log lines")
        except RuntimeError:
            pass  # report what is there: the table shows the shortfall
        lines, size = self._read()
        self.offset += size
        out = Lines()
        for ln in lines:
            m = _LINE.fullmatch(ln)
            if not m:
                out.unparsed += 1
                continue
            out.count += 1
            out.status[m.group(3)] += 1
            out.workers[m.group(2)] += 1
            out.upstreams[m.group(6)] += 1
            out.bytes_to_clients += int(m.group(4))
            out.bytes_from_clients += int(m.group(5))
        return out
