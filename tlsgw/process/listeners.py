"""The master's listening sockets: bound before any worker is forked, kept in a registry.

:class:`Registry` holds every listening socket keyed by ``(ListenKey, slot)``: the
:func:`listen_key` of a ``listen`` entry is its address plus the options that make a socket
"the same" (``backlog``, ``rcvbuf``, ``sndbuf``, ``reuseport``, ``so_keepalive``,
``ipv6only``; not ``ssl`` or ``default_server``, which are not socket properties), and the slot
is the worker's number with ``reuseport`` (one socket per worker) or ``None`` (one socket that
every worker shares). Making the sockets a configuration wants is two steps, so a reload can
bind first and change nothing until it is sure: :meth:`Registry.plan` binds what is missing —
all of it or nothing, with nginx's ``bind()`` messages — and :meth:`Registry.commit` installs
it and closes what is no longer wanted (:meth:`Registry.abort` closes what a plan bound). An
address whose ``backlog``, ``rcvbuf``, ``sndbuf`` or ``so_keepalive`` changes keeps its socket,
retuned at commit, as nginx does on reload.

Port 0 binds an ephemeral port; with ``reuseport`` the other slots bind the port the first
slot got, so every slot's socket shares it. :meth:`Registry.bound` is the actual address.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from tlsgw.config.addresses import Address
from tlsgw.config.model import Listen
from tlsgw.errors import StartupError

#: (address, backlog, rcvbuf, sndbuf, reuseport, so_keepalive, ipv6only, udp)
ListenKey = tuple[Address, int, int | None, int | None, bool,
                  bool | tuple[int | None, int | None, int | None] | None, bool, bool]
#: a socket in the registry: its listen key and the worker slot (None: shared by every worker)
SocketKey = tuple[ListenKey, int | None]
#: IP_PKTINFO (Linux's value; the socket module names it from Python 3.13 on)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def listen_key(listen: Listen) -> ListenKey:
    """What makes two ``listen`` entries one socket (hashable; ``so_keepalive`` is a bool, a
    tuple or None)."""
    return (listen.address, listen.backlog, listen.rcvbuf, listen.sndbuf, listen.reuseport,
            listen.so_keepalive, listen.ipv6only, listen.udp)


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


def _tune(sock: socket.socket, listen: Listen) -> None:
    """The options a socket can take before or after it is bound (a retuned one, see
    :meth:`Registry.plan`); ``None`` leaves the socket as it is."""
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


def bind(listen: Listen, address: Address | None = None) -> socket.socket:
    """Create, configure, bind and listen; errors are worded like nginx's ``bind()`` errors.
    ``address`` replaces ``listen.address`` (a reuseport slot binding the port slot 0 got)."""
    addr = address or listen.address
    sock = socket.socket(addr.family, socket.SOCK_DGRAM if listen.udp else socket.SOCK_STREAM)
    try:
        if addr.family == socket.AF_UNIX:
            _remove_stale_unix_socket(addr.host)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if addr.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if listen.ipv6only else 0)
        if listen.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _tune(sock, listen)
        if listen.udp and addr.host in ("0.0.0.0", "::"):  # the local address of each datagram
            if addr.family == socket.AF_INET6:  # IPv4 ones too on a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(addr.sockaddr)
        if not listen.udp:
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


def bound_address(sock: socket.socket) -> Address:
    """The address a socket is bound to (the kernel's port for port 0)."""
    if sock.family == socket.AF_UNIX:
        return Address(socket.AF_UNIX, sock.getsockname(), 0)
    host, port = sock.getsockname()[:2]
    return Address(sock.family, host, port)


@dataclass
class Plan:
    """What :meth:`Registry.plan` found: sockets it bound (not yet in the registry), keys kept,
    keys no longer wanted (closed by :meth:`Registry.commit`)."""

    added: dict[SocketKey, socket.socket] = field(default_factory=dict)
    kept: list[SocketKey] = field(default_factory=list)
    #: new key -> the registry's key of the socket it takes over (same address and slot, other
    #: backlog/rcvbuf/sndbuf/so_keepalive: applied to that socket by commit, as nginx does)
    retuned: dict[SocketKey, SocketKey] = field(default_factory=dict)
    removed: list[SocketKey] = field(default_factory=list)
    listens: dict[ListenKey, Listen] = field(default_factory=dict)  # the first entry per key
    settled: bool = False  # committed or aborted: what it says stays as a record


class Registry:
    """Listening sockets of the master, keyed by ``(listen_key, slot)``; see the module text."""

    def __init__(self, slots: int):
        self.slots = slots
        self.sockets: dict[SocketKey, socket.socket] = {}
        self.listens: dict[ListenKey, Listen] = {}  # as committed: the first entry per key

    def socket_keys(self, listen: Listen) -> list[SocketKey]:
        key = listen_key(listen)
        return [(key, slot) for slot in range(self.slots)] if listen.reuseport else [(key, None)]

    def plan(self, listens: Iterable[Listen]) -> Plan:
        """Bind every socket ``listens`` needs that the registry lacks; on the first failure
        close what this call bound and raise (the registry is never changed here)."""
        plan = Plan()
        wanted: list[SocketKey] = []
        for listen in listens:
            plan.listens.setdefault(listen_key(listen), listen)
        try:
            for listen in plan.listens.values():
                first: Address | None = None  # slot 0's address: the port others share
                for sk in self.socket_keys(listen):
                    wanted.append(sk)
                    sock = self.sockets.get(sk)
                    old = None if sock is not None else self._same_address(sk, plan, listen)
                    if old is not None:
                        plan.retuned[sk] = old
                        sock = self.sockets[old]
                    elif sock is None:
                        sock = bind(listen, first)
                        plan.added[sk] = sock
                    else:
                        plan.kept.append(sk)
                    if first is None and listen.address.family != socket.AF_UNIX:
                        first = replace(listen.address, port=sock.getsockname()[1])
        except StartupError:
            self.abort(plan)
            raise
        keep = {*wanted, *plan.retuned.values()}
        plan.removed = [sk for sk in self.sockets if sk not in keep]
        return plan

    def _same_address(self, sk: SocketKey, plan: Plan, listen: Listen) -> SocketKey | None:
        """The registry's socket at ``sk``'s address and slot that ``sk`` may take over: one
        that differs only in what :func:`_tune` and ``listen()`` change on a bound socket. A
        different ``reuseport`` or ``ipv6only`` there cannot be applied without a restart."""
        key, slot = sk
        for old in self.sockets:
            old_key, old_slot = old
            if old_key[0] != key[0] or old_key[7] != key[7] or old_key in plan.listens:
                # another address or socket type, or wanted
                continue
            if (old_key[4], old_key[6]) != (key[4], key[6]):  # reuseport, ipv6only
                raise StartupError(f'"reuseport" and "ipv6only" of listen "{listen.text}" cannot '
                                   f"change while {key[0].name} is bound; restart tlsgw to apply")
            if old_slot == slot:
                return old
        return None

    def commit(self, plan: Plan) -> None:
        """Install what ``plan`` bound and close what it no longer wants."""
        assert not plan.settled
        plan.settled = True
        for sk in plan.removed:
            close(self.sockets.pop(sk))
        for sk, old in plan.retuned.items():
            sock = self.sockets.pop(old)
            _tune(sock, plan.listens[sk[0]])
            if not sk[0][7]:  # not udp
                sock.listen(sk[0][1])  # the backlog
            self.sockets[sk] = sock
        self.sockets.update(plan.added)
        self.listens = dict(plan.listens)

    def abort(self, plan: Plan) -> None:
        """Close what ``plan`` bound; the registry stays as it was."""
        if not plan.settled:
            plan.settled = True
            for sock in plan.added.values():
                close(sock)

    def update(self, listens: Iterable[Listen]) -> Plan:
        """:meth:`plan` then :meth:`commit` (the master's start; a reload commits later)."""
        plan = self.plan(listens)
        self.commit(plan)
        return plan

    def socket(self, listen: Listen, slot: int) -> socket.socket:
        """The socket worker ``slot`` serves ``listen`` on."""
        return self.sockets[(listen_key(listen), slot if listen.reuseport else None)]

    def bound(self, listen: Listen) -> Address:
        """The address ``listen`` is bound to (slot 0's socket with ``reuseport``)."""
        return bound_address(self.socket(listen, 0))

    def close_all(self) -> None:
        for sock in self.sockets.values():
            close(sock)
        self.sockets = {}
