"""The access phase: ``allow``/``deny`` rules (nginx's ``ngx_stream_access_module``).

The rules are compiled once per listener, when its factory is built, into three ordered lists
by family, as nginx keeps them: IPv4 ``(network, mask, allow)``, IPv6 the same, ``unix:``
``allow``; ``all`` is appended to all three. The client's family picks the list (an
IPv4-mapped IPv6 client is checked against the IPv4 list) and the first match decides; no match
allows. A ``deny`` ends the session before the TLS handshake: ``access forbidden by rule while
initializing session`` at *error*, ``$status`` 403. The address checked is the session's ``remote_addr``, which realip
has replaced by then on a ``proxy_protocol`` address (the post-accept phase runs first).

A listener whose default server has no rule never sees this module (:func:`access` returns
None).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tlsgw.config.schema.limits import AccessRule
from tlsgw.proxy import gate
from tlsgw.proxy.record import Status

if TYPE_CHECKING:
    from tlsgw.proxy.phases import Listener

_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_MAPPED = (0xFFFF << 32, ((1 << 128) - 1) ^ ((1 << 32) - 1))  # ::ffff:0:0/96


class Rules:
    """Compiled rules; :meth:`allows` is the check."""

    __slots__ = ("v4", "v6", "unix")

    def __init__(self, rules: Sequence[AccessRule]):
        self.v4: list[tuple[int, int, bool]] = []
        self.v6: list[tuple[int, int, bool]] = []
        self.unix: list[bool] = []
        for r in rules:
            if r.unix:
                self.unix.append(r.allow)
            elif r.network is None:  # all
                self.v4.append((0, 0, r.allow))
                self.v6.append((0, 0, r.allow))
                self.unix.append(r.allow)
            else:
                net = r.network
                target = self.v4 if net.version == 4 else self.v6
                target.append((int(net.network_address), int(net.netmask), r.allow))

    def allows(self, addr: str) -> bool:
        """Whether a client at ``addr`` (``$remote_addr``) may go on."""
        if addr.startswith("unix:"):
            return self.unix[0] if self.unix else True
        if ":" in addr:
            try:
                n = int.from_bytes(_inet_pton(_AF_INET6, addr), "big")
            except OSError:
                return True
            if n & _MAPPED[1] == _MAPPED[0]:  # ::ffff:a.b.c.d: the IPv4 list
                rules, n = self.v4, n & 0xFFFFFFFF
            else:
                rules = self.v6
        else:
            try:
                n = int.from_bytes(_inet_pton(_AF_INET, addr), "big")
            except OSError:
                return True
            rules = self.v4
        for net, mask, allow in rules:
            if n & mask == net:
                return allow
        return True


def checker(rules: Rules) -> Callable[[Any], bool]:
    allows = rules.allows

    def check(session: Any) -> bool:
        if allows(session.remote_addr):
            return True
        session.error("error", "access forbidden by rule while initializing session", proxy=False)
        session.finalize(Status.FORBIDDEN)
        return False

    return check


def access(listener: Listener, inner: Callable[[], Any]) -> Callable[[], Any] | None:
    """The access phase of :mod:`tlsgw.proxy.phases`, for a listener whose default server has
    ``access`` rules (None otherwise)."""
    rules = listener.default.access
    if not rules:
        return None
    return gate.wrap(inner, checker(Rules(rules)))
