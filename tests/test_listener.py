"""`listen` parameters really reach the socket: bound by the same code the master uses."""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap

import pytest
from support import free_port

from tlsgw import listener
from tlsgw.config.load import load_config


def listen_of(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(f"""\
        servers:
          - listen: {text}
            proxy_pass: 127.0.0.1:1
        """))
    return load_config(str(p)).servers[0].listens[0]


def test_backlog_keepalive_reuseport_buffers(tmp_path):
    port = free_port()
    ls = listen_of(tmp_path, f"127.0.0.1:{port} backlog=77 reuseport so_keepalive=30s:5s:4 "
                             "rcvbuf=64k sndbuf=32k")
    sock = listener.bind(ls)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 64 * 1024  # kernel doubles
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 32 * 1024
        # the kernel reports a listening socket's backlog as its Send-Q
        if shutil.which("ss"):  # iproute2
            out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
            assert out.stdout.split()[2] == "77", out.stdout
        # accepted connections inherit SO_KEEPALIVE from the listener on Linux
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = sock.accept()
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        a.close()
        c.close()
    finally:
        listener.close(sock)


def test_so_keepalive_off_and_default(tmp_path):
    sock = listener.bind(listen_of(tmp_path, f"127.0.0.1:{free_port()} so_keepalive=off"))
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    listener.close(sock)
    ls = listen_of(tmp_path, f"127.0.0.1:{free_port()}")
    assert ls.so_keepalive is None and ls.backlog == 511 and not ls.reuseport


def _wildcard_free_port() -> int:
    """A port free for a dual-stack ``[::]`` bind. ``free_port("::1")`` may return a port that
    an IPv4 socket holds (a connection in TIME-WAIT after a busy test), which then makes
    ``[::]:PORT ipv6only=off`` fail with "Address already in use"."""
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flag, expected", [("on", 1), ("off", 0)])
def test_ipv6only(tmp_path, flag, expected):
    port = _wildcard_free_port()
    sock = listener.bind(listen_of(tmp_path, f'"[::]:{port} ipv6only={flag}"'))
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == expected
        if expected == 0:  # a dual-stack socket accepts IPv4 clients too
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            c.close()
    finally:
        listener.close(sock)


def test_ipv6only_is_rejected_on_other_addresses(tmp_path):
    from tlsgw.errors import ConfigErrors

    with pytest.raises(ConfigErrors, match="ipv6only applies only"):
        listen_of(tmp_path, "127.0.0.1:9000 ipv6only=on")


def test_port_in_use_message(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    from tlsgw.errors import StartupError

    with pytest.raises(StartupError, match=rf"bind\(\) to 127.0.0.1:{port} failed \(98: Address already in use\)"):
        listener.bind(listen_of(tmp_path, f"127.0.0.1:{port}"))
    busy.close()


def test_stale_unix_socket_is_replaced(tmp_path):
    path = tmp_path / "gw.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves behind
    sock = listener.bind(listen_of(tmp_path, f"unix:{path}"))
    listener.close(sock)
    assert not path.exists()


def test_permission_denied_below_1024_says_why(tmp_path, monkeypatch):
    """As a user without CAP_NET_BIND_SERVICE (simulated: the tests may run as root)."""
    import errno

    from tlsgw.errors import StartupError

    class Unprivileged(socket.socket):
        def bind(self, address):
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(listener.socket, "socket", Unprivileged)
    with pytest.raises(StartupError) as ei:
        listener.bind(listen_of(tmp_path, "127.0.0.1:443"))
    assert str(ei.value) == ("bind() to 127.0.0.1:443 failed (13: Permission denied): ports below "
                             "1024 need root or CAP_NET_BIND_SERVICE (systemd: "
                             "AmbientCapabilities=CAP_NET_BIND_SERVICE)")
    with pytest.raises(StartupError) as ei:
        listener.bind(listen_of(tmp_path, "127.0.0.1:8443"))
    assert str(ei.value) == "bind() to 127.0.0.1:8443 failed (13: Permission denied)"
