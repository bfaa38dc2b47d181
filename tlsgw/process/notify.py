"""systemd's notify protocol (``sd_notify(3)``): datagrams of ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).

Only the master sends (the units say ``NotifyAccess=main``): ``READY=1`` once every worker
serves, ``RELOADING=1`` with ``MONOTONIC_USEC`` when a reload starts and ``READY=1`` with the
result in ``STATUS=`` when it is done (ok or not: the protocol has no "reload failed"), and
``STOPPING=1`` when a stop starts, after which nothing but ``STATUS=`` is sent. Without
``$NOTIFY_SOCKET`` every call does nothing. A failed send is ignored: the manager's absence
must never stop the gateway.
"""

from __future__ import annotations

import os
import socket
import time

_address: str | bytes | None = None
_sock: socket.socket | None = None
_stopping = False


def setup(environ: dict[str, str] | None = None) -> bool:
    """Read ``$NOTIFY_SOCKET`` (once, in the master before it forks) and remove it from the
    environment so that no child mistakes itself for the main process. True if enabled."""
    global _address, _sock, _stopping
    env = os.environ if environ is None else environ
    value = env.pop("NOTIFY_SOCKET", "")
    close()
    _stopping = False
    if not value or value[0] not in "/@":  # vsock: and others are not supported
        return False
    _address = b"\0" + value[1:].encode() if value[0] == "@" else value
    _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    return True


def enabled() -> bool:
    return _sock is not None


def close() -> None:
    global _address, _sock
    if _sock is not None:
        _sock.close()
    _sock = _address = None


def send(*lines: str) -> bool:
    if _sock is None or _address is None:
        return False
    try:
        _sock.sendto("\n".join(lines).encode() + b"\n", _address)
        return True
    except OSError:
        return False


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line


def ready(status: str = "") -> bool:
    """Start-up or reload finished."""
    if _stopping:
        return False
    return send("READY=1", *([_status(status)] if status else []))


def reloading(status: str = "reloading") -> bool:
    """A reload started; ``MONOTONIC_USEC`` lets ``Type=notify-reload`` match it to its request."""
    if _stopping:
        return False
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(status))


def stopping(status: str = "stopping") -> bool:
    """A stop started; final (no READY/RELOADING after it)."""
    global _stopping
    _stopping = True
    return send("STOPPING=1", _status(status))


def status(text: str) -> bool:
    return send(_status(text))
