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
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write(path: str, pid: int) -> None:
    """Write *pid* to *path* (atomically: a reader never sees half a number); refuse while a
    live process other than *pid* holds it, replace a stale one.

    Raises:
        PidFileError: a live holder, or the file cannot be read or written.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise PidFileError(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    if text.isdigit() and int(text) != pid and _alive(int(text)):
        raise PidFileError(f'pid file "{path}" names process {text}, which is running: '
                           "is tlsgw already running? (stop it, or remove the file if it is "
                           "not tlsgw)")
    try:
        _write_atomically(path, f"{pid}\n")
    except OSError as exc:
        raise PidFileError(f'cannot write pid file "{path}" ({exc.errno}: {exc.strerror})') from None


def remove(path: str, pid: int) -> None:
    """Remove *path* and its reload result if the pid file still names *pid* (a successor may
    have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as f:
            if int(f.read().strip()) != pid:
                return
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.unlink(result_path(path))


def read_pid(path: str | None, config: str = "") -> int:
    """The pid of the live master named by pid file *path* (None: *config* sets no ``pid``).

    Raises:
        PidFileError: no ``pid`` directive, no file, garbage in it, or no such process.
    """
    where = f" in {config}" if config else ""
    if path is None:
        raise PidFileError(f'no pid file configured{where} (add "pid: PATH" to it; the running '
                           "master must have been started with it)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise PidFileError(f'pid file "{path}" does not exist: is tlsgw running?') from None
    except OSError as exc:
        raise PidFileError(f'cannot read pid file "{path}" ({exc.strerror})') from None
    if not text.isdigit() or int(text) <= 0:
        raise PidFileError(f'invalid pid "{text[:20]}" in "{path}"')
    pid = int(text)
    if not _alive(pid):
        raise PidFileError(f'no such process {pid} (pid file "{path}" is stale: tlsgw is not '
                           "running)")
    return pid  # another user's: the real kill says whether we may signal it


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
