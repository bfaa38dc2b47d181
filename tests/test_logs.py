"""The log sinks in-process: reopening (logrotate's contract) and the one error-log path."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgw import logs


def nginx_line(level: str, message: str) -> str:
    """The regex of one error-log line (``message`` is a regex too)."""
    return rf"^\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d \[{level}\] \d+#\d+: {message}$"


@pytest.fixture
def error_log(tmp_path: Path) -> Iterator[tuple[logs.ErrorLog, Path]]:
    """A file error log installed as this process's current one (undone afterwards)."""
    path = tmp_path / "error.log"
    log = logs.ErrorLog(logs.LogSink(str(path)), "info")
    logs.install(log)
    yield log, path
    logs.install(None)


def test_reopen_sends_the_next_lines_to_a_new_file(tmp_path):
    path = tmp_path / "a.log"
    sink = logs.LogSink(str(path))
    for i in range(100):
        sink.write(f"before {i}\n")
    sink.flush()
    path.rename(tmp_path / "a.log.1")
    sink.reopen()
    for i in range(100):
        sink.write(f"after {i}\n")
    sink.flush()
    assert (tmp_path / "a.log.1").read_text() == "".join(f"before {i}\n" for i in range(100))
    assert path.read_text() == "".join(f"after {i}\n" for i in range(100))


def test_reopen_creates_the_file_before_any_line(tmp_path):
    path = tmp_path / "a.log"
    sink = logs.LogSink(str(path))
    path.rename(tmp_path / "a.log.1")
    sink.reopen()
    sink.flush()
    assert path.exists() and path.read_text() == ""


def test_lines_written_during_rotations_are_never_lost_or_split(tmp_path):
    """A writer keeps logging while the file is renamed and reopened 20 times: every line is in
    exactly one file, whole, in order; each line logged after a reopen() is in a newer file."""
    path = tmp_path / "a.log"
    sink = logs.LogSink(str(path))
    n = 20_000
    rotated: list[int] = []  # the number of lines written when each reopen() returned
    written = 0
    done = threading.Event()

    def rotate() -> None:
        for k in range(20):
            while written < (k + 1) * n // 21 and not done.is_set():
                done.wait(0.001)
            path.rename(tmp_path / f"a.log.{k:02d}")
            sink.reopen()
            rotated.append(written)

    t = threading.Thread(target=rotate)
    t.start()
    for written in range(1, n + 1):  # noqa: B007 (the rotating thread reads it)
        sink.write(f"line {written:06d} " + "x" * 50 + "\n")
        if written % 500 == 0:
            sink.flush()  # keep the queue below MAX_PENDING: this test is about rotation
    done.set()
    t.join()
    sink.flush()
    files = [*sorted(tmp_path.glob("a.log.*")), path]
    assert len(files) == 21
    contents = [f.read_text().splitlines() for f in files]
    every = [line for lines in contents for line in lines]
    assert every == [f"line {i:06d} " + "x" * 50 for i in range(1, n + 1)]
    first_of = [int(lines[0].split()[1]) if lines else None for lines in contents]
    for k, mark in enumerate(rotated):  # a line queued after the k-th reopen is not in file k
        last_in_old = int(contents[k][-1].split()[1]) if contents[k] else 0
        assert last_in_old <= mark, (k, mark, last_in_old, first_of)


def test_a_failed_reopen_keeps_the_old_file_and_says_why(tmp_path):
    path = tmp_path / "a.log"
    sink = logs.LogSink(str(path))
    sink.write("one\n")
    sink.flush()
    path.rename(tmp_path / "a.log.1")
    path.mkdir()  # the path cannot be opened as a file now
    sink.reopen()
    sink.write("two\n")
    sink.flush()
    text = (tmp_path / "a.log.1").read_text().splitlines()
    assert text[0] == "one" and text[-1] == "two"
    assert re.match(nginx_line("alert", message=re.escape(
        f'open() "{path}" failed (21: Is a directory) while reopening logs')), text[1])


def test_stdlib_records_of_the_shared_cache_reach_error_log_in_nginx_format(error_log, capfd):
    from tlsgw.tls.shared_cache import MIN_SHARED_SIZE, SharedSessionStore

    log, path = error_log
    store = SharedSessionStore("SSL", MIN_SHARED_SIZE)
    assert store.lock.acquire(timeout=1)  # another process holds the lock
    try:
        assert store.get(b"x" * 32) is None
    finally:
        store.lock.release()
    store._get_cb(None, None, 32, None)  # OpenSSL called it with what cannot be used
    log.sink.flush()
    lines = path.read_text().splitlines()
    assert re.match(nginx_line("warn", message=re.escape(
        'SSL session shared cache "SSL" is busy, operation skipped')), lines[0]), lines
    assert re.match(nginx_line("error", message=re.escape(
        "shared session cache: lookup failed: TypeError(") + ".* at tlsgw/tls/shared_cache.py:"
        r"\d+ in _get_cb"), lines[1]), lines
    assert capfd.readouterr().err == ""  # nothing on stderr


def test_error_log_threshold_applies_to_stdlib_records(error_log):
    import logging

    log, path = error_log
    logging.getLogger("tlsgw.error").debug("below the threshold")
    logging.getLogger("tlsgw.error").info("at the threshold", extra={"conn": 7})
    logging.getLogger("asyncio").critical("asyncio says")
    log.sink.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert re.match(nginx_line("info", message=r"\*7 at the threshold"), lines[0])
    assert re.match(nginx_line("crit", message="asyncio says"), lines[1])
