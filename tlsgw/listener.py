"""Binding listening sockets in the master, before any worker is forked."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from tlsgw.config.model import Listen
from tlsgw.errors import StartupError


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on (left over from a crash)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def bind(listen: Listen) -> socket.socket:
    """Create, configure, bind and listen; errors are worded like nginx's ``bind()`` errors."""
    addr = listen.address
    sock = socket.socket(addr.family, socket.SOCK_STREAM)
    try:
        if addr.family == socket.AF_UNIX:
            _remove_stale_unix_socket(addr.host)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if addr.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if listen.ipv6only else 0)
        if listen.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if listen.rcvbuf is not None:  # 0 too: the kernel's minimum, as nginx sets it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, listen.rcvbuf)
        if listen.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, listen.sndbuf)
        ka = listen.so_keepalive
        if ka is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if ka else 0)
            if isinstance(ka, tuple):
                for opt, val in zip((socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT),
                                    ka, strict=True):
                    if val is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, opt, val)
        sock.bind(addr.sockaddr)
        sock.listen(listen.backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        code = exc.errno or errno.EINVAL
        raise StartupError(f"bind() to {addr.name} failed ({code}: {os.strerror(code)})"
                           + (" — is another tlsgw or nginx listening there?"
                              if code == errno.EADDRINUSE else "")
                           + (": ports below 1024 need root or CAP_NET_BIND_SERVICE (systemd: "
                              "AmbientCapabilities=CAP_NET_BIND_SERVICE)"
                              if code == errno.EACCES and addr.family != socket.AF_UNIX
                              and 0 < addr.port < 1024 else ""))
    return sock


def close(sock: socket.socket) -> None:
    """Close a listener; a Unix socket's file is removed, as nginx does on exit."""
    path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    sock.close()
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
