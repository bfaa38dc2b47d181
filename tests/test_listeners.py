"""`listen` parameters really reach the socket: bound by the same code the master uses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
from dataclasses import replace

import pytest
from support import connect

from tlsgw.config.load import load_config
from tlsgw.errors import StartupError
from tlsgw.process import listeners


def listen_of(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(f"""\
        servers:
          - listen: {text}
            proxy_pass: 127.0.0.1:1
        """))
    return load_config(str(p)).servers[0].listens[0]


def test_backlog_keepalive_reuseport_buffers(tmp_path):
    ls = listen_of(tmp_path, "127.0.0.1:0 backlog=77 reuseport so_keepalive=30s:5s:4 "
                             "rcvbuf=64k sndbuf=32k")
    sock = listeners.bind(ls)
    port = sock.getsockname()[1]
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
        listeners.close(sock)


def test_so_keepalive_off_and_default(tmp_path):
    sock = listeners.bind(listen_of(tmp_path, "127.0.0.1:0 so_keepalive=off"))
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    listeners.close(sock)
    ls = listen_of(tmp_path, "127.0.0.1:0")
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
    sock = listeners.bind(listen_of(tmp_path, f'"[::]:{port} ipv6only={flag}"'))
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == expected
        if expected == 0:  # a dual-stack socket accepts IPv4 clients too
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            c.close()
    finally:
        listeners.close(sock)


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
        listeners.bind(listen_of(tmp_path, f"127.0.0.1:{port}"))
    busy.close()


def test_stale_unix_socket_is_replaced(tmp_path):
    path = tmp_path / "gw.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves behind
    sock = listeners.bind(listen_of(tmp_path, f"unix:{path}"))
    listeners.close(sock)
    assert not path.exists()


# ---- the master's registry -----------------------------------------------------------------
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_listen_key_is_the_socket_not_the_server(tmp_path):
    ls = listen_of(tmp_path, "127.0.0.1:9000 backlog=100")
    assert listeners.listen_key(ls) == listeners.listen_key(replace(ls, ssl=True, default_server=True))
    assert hash(listeners.listen_key(ls)) == hash(listeners.listen_key(replace(ls, ssl=True)))
    for other in ("127.0.0.1:9001 backlog=100", "127.0.0.1:9000", "127.0.0.1:9000 backlog=100 reuseport",
                  "127.0.0.1:9000 backlog=100 rcvbuf=8k", "127.0.0.1:9000 backlog=100 sndbuf=8k",
                  "127.0.0.1:9000 backlog=100 so_keepalive=on"):
        assert listeners.listen_key(listen_of(tmp_path, other)) != listeners.listen_key(ls), other
    v6 = listen_of(tmp_path, '"[::]:9000"')
    assert listeners.listen_key(v6) != listeners.listen_key(listen_of(tmp_path, '"[::]:9000 ipv6only=off"'))


def test_registry_keeps_binds_and_closes(tmp_path):
    a = listen_of(tmp_path, "127.0.0.1:0")
    b = listen_of(tmp_path, '"[::1]:0"')
    reg = listeners.Registry(slots=2)
    try:
        plan = reg.update([a, b])
        assert sorted(map(str, plan.added)) == sorted(map(str, reg.sockets)) and len(reg.sockets) == 2
        sock_a, sock_b = reg.socket(a, 0), reg.socket(b, 0)
        assert reg.socket(a, 1) is sock_a  # without reuseport every slot shares one socket
        assert reg.bound(a).port != 0 and reg.bound(a).host == "127.0.0.1"
        assert reg.bound(b).name == f"[::1]:{sock_b.getsockname()[1]}"

        c = listen_of(tmp_path, "127.0.0.1:0 backlog=50")  # another key: another socket
        plan = reg.update([a, c])
        assert plan.kept == [(listeners.listen_key(a), None)]
        assert list(plan.removed) == [(listeners.listen_key(b), None)]
        assert reg.socket(a, 0) is sock_a and sock_a.fileno() != -1  # unchanged: kept as is
        assert sock_b.fileno() == -1  # no longer wanted: closed
        assert reg.bound(c).port not in (0, reg.bound(a).port)
        with socket.create_connection(reg.bound(a).sockaddr, timeout=2):
            pass  # the kept socket still listens
    finally:
        reg.close_all()
    assert reg.sockets == {} and sock_a.fileno() == -1


def test_a_failed_bind_leaves_the_registry_unchanged(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    reg = listeners.Registry(slots=3)
    try:
        a = listen_of(tmp_path, "127.0.0.1:0")
        reg.update([a])
        before, fds = dict(reg.sockets), _fds()
        new = [listen_of(tmp_path, '"[::1]:0 reuseport"'), listen_of(tmp_path, f"127.0.0.1:{port}")]
        with pytest.raises(StartupError, match=rf"^bind\(\) to 127.0.0.1:{port} failed \(98: "
                                               r"Address already in use\)"):
            reg.plan([a, *new])
        assert reg.sockets == before and all(s.fileno() != -1 for s in before.values())
        assert _fds() == fds  # the three [::1] sockets bound on the way were closed again
        plan = reg.plan([a, new[0]])  # and abort() undoes a plan that did bind
        assert len(plan.added) == 3 and _fds() == fds + 3
        reg.abort(plan)
        assert _fds() == fds and reg.sockets == before
    finally:
        reg.close_all()
        busy.close()


def test_reuseport_slots_share_the_port_zero_got(tmp_path):
    ls = listen_of(tmp_path, "127.0.0.1:0 reuseport")
    reg = listeners.Registry(slots=3)
    try:
        reg.update([ls])
        socks = [reg.socket(ls, slot) for slot in range(3)]
        assert len({id(s) for s in socks}) == 3  # one socket per worker
        assert {s.getsockname() for s in socks} == {reg.bound(ls).sockaddr}
        assert reg.bound(ls).port != 0
        plan = reg.update([ls])  # a second pass keeps all three
        assert plan.added == {} and len(plan.kept) == 3 and plan.removed == []
    finally:
        reg.close_all()


def test_port_zero_in_check(tmp_path):
    assert listen_of(tmp_path, "127.0.0.1:0").address.port == 0
    assert listen_of(tmp_path, '"[::1]:0"').address.port == 0
    assert listen_of(tmp_path, "0").address.name == "0.0.0.0:0"
    from tlsgw.errors import ConfigErrors

    p = tmp_path / "c.yaml"
    p.write_text("servers:\n  - listen: 127.0.0.1:8000\n    proxy_pass: 127.0.0.1:0\n")
    with pytest.raises(ConfigErrors, match="invalid port"):  # an upstream needs a real port
        load_config(str(p))


def test_gateway_on_port_zero_reports_what_it_bound(gateway, backends):
    """``listen: 127.0.0.1:0`` end to end: the master logs the kernel's port, every reuseport
    worker serves the one port, and the tests connect there instead of racing free_port()."""
    b = backends("echo")
    gw = gateway(f"""
        worker_processes: 2
        error_log: stderr notice
        servers:
          - listen: 127.0.0.1:0
            proxy_pass: {b.address}
          - listen: '[::1]:0 reuseport'
            proxy_pass: {b.address}
        """, workers=2)
    (v4, v4_text), (v6, v6_text) = gw.bound()
    assert (v4_text, v6_text) == ("127.0.0.1:0", "[::1]:0")
    assert v4 == f"127.0.0.1:{gw.port(0)}" and v6 == f"[::1]:{gw.port('[::1]:0')}"
    assert 0 not in (gw.port(0), gw.port(1)) and gw.host(1) == "::1"
    assert f'listening on {v4} (listen "127.0.0.1:0")' in gw.stderr()
    for i in (0, 1):
        for _ in range(4):  # with reuseport, whichever worker's socket the kernel picks
            with connect(gw.port(i), host=gw.host(i)) as s:
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"


def test_changed_socket_options_retune_the_bound_socket(tmp_path):
    """A reload that changes backlog/rcvbuf/sndbuf/so_keepalive at an address keeps its socket
    (no bind() that would find the address in use, no connection refused) and applies them."""
    before = listen_of(tmp_path, "127.0.0.1:0 backlog=20")
    after = listen_of(tmp_path, "127.0.0.1:0 backlog=30 so_keepalive=on rcvbuf=16k")
    reg = listeners.Registry(slots=2)
    try:
        reg.update([before])
        sock = reg.socket(before, 0)
        plan = reg.plan([after])
        assert plan.added == {} and plan.removed == []
        assert plan.retuned == {(listeners.listen_key(after), None): (listeners.listen_key(before), None)}
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0  # not before commit
        reg.commit(plan)
        assert reg.socket(after, 1) is sock and list(reg.sockets) == [(listeners.listen_key(after), None)]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 16 * 1024
        if shutil.which("ss"):  # the new backlog, as the listening socket's Send-Q
            port = sock.getsockname()[1]
            out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
            assert out.stdout.split()[2] == "30", out.stdout

        with pytest.raises(StartupError, match=r'"reuseport" and "ipv6only" of listen "127.0.0.1:0" '
                                               r"cannot change while 127.0.0.1:0 is bound"):
            reg.plan([listen_of(tmp_path, "127.0.0.1:0 backlog=30 reuseport")])
        assert list(reg.sockets) == [(listeners.listen_key(after), None)] and sock.fileno() != -1
    finally:
        reg.close_all()
def test_permission_denied_below_1024_says_why(tmp_path, monkeypatch):
    """As a user without CAP_NET_BIND_SERVICE (simulated: the tests may run as root)."""
    import errno

    from tlsgw.errors import StartupError

    class Unprivileged(socket.socket):
        def bind(self, address):
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(listeners.socket, "socket", Unprivileged)
    with pytest.raises(StartupError) as ei:
        listeners.bind(listen_of(tmp_path, "127.0.0.1:443"))
    assert str(ei.value) == ("bind() to 127.0.0.1:443 failed (13: Permission denied): ports below "
                             "1024 need root or CAP_NET_BIND_SERVICE (systemd: "
                             "AmbientCapabilities=CAP_NET_BIND_SERVICE)")
    with pytest.raises(StartupError) as ei:
        listeners.bind(listen_of(tmp_path, "127.0.0.1:8443"))
    assert str(ei.value) == "bind() to 127.0.0.1:8443 failed (13: Permission denied)"
