"""The master's pid file (``pid``) and, next to it, the outcome of its last reload.

The master writes ``PATH`` when it starts and removes it when it exits (only if it still names
this master). After every reload attempt it writes ``PATH.reload`` (:func:`write_result`): a
first line ``ATTEMPT ok|failed``, then the lines the error log got for that reload. ``tlsgw
reload`` reads the attempt number before it signals and waits for the next one
(:func:`read_result`). :func:`read_pid` is what every control command uses to find the master.
"""

from __future__ import annotations

import contextlib
import os

from tlsgw.errors import TlsgwError


class PidFileError(TlsgwError):
    """No pid file, an unreadable one, or no such process."""


def result_path(path: str) -> str:
    return path + ".reload"


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write(path: str, pid: int) -> None:
    """Write *pid* to *path* (atomically: a reader never sees half a number)."""
    _write_atomically(path, f"{pid}\n")


def remove(path: str, pid: int) -> None:
    """Remove *path* and its reload result if the pid file still names *pid*."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as f:
            if int(f.read().strip()) != pid:
                return
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.unlink(result_path(path))


def read_pid(path: str | None, config: str = "") -> int:
    """The pid of the running master named by pid file *path*.

    Raises:
        PidFileError: no ``pid`` directive, no file, garbage in it, or no such process.
    """
    where = f" in {config}" if config else ""
    if path is None:
        raise PidFileError(f'no pid file is set{where}: add "pid: PATH" (the master writes it '
                           "when it starts), or signal the master process yourself")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise PidFileError(f'open() "{path}" failed (2: No such file or directory): is tlsgw '
                           "running with this configuration?") from None
    except OSError as exc:
        raise PidFileError(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    try:
        pid = int(text)
        if pid <= 0:
            raise ValueError
    except ValueError:
        raise PidFileError(f'invalid PID number "{text}" in "{path}"') from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise PidFileError(f'no process {pid} (from "{path}"): tlsgw is not running; the pid '
                           "file is left over") from None
    except PermissionError:
        pass  # it exists; signalling it will say whether we may
    return pid


def write_result(path: str, attempt: int, ok: bool, lines: list[str]) -> None:
    _write_atomically(result_path(path),
                      f"{attempt} {'ok' if ok else 'failed'}\n" + "".join(f"{x}\n" for x in lines))


def read_result(path: str) -> tuple[int, bool, list[str]]:
    """``(attempt, ok, lines)`` of the last reload; ``(0, False, [])`` if none was written."""
    try:
        with open(result_path(path), encoding="utf-8") as f:
            head, *lines = f.read().splitlines()
        number, outcome = head.split()
        return int(number), outcome == "ok", lines
    except (OSError, ValueError):
        return 0, False, []
