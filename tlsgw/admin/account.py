"""What a worker accounts in its row of the stats table (:mod:`tlsgw.admin.table`), at four
moments of a session, never per chunk: accepted (the listener's connection counter and gauge,
two additions inline in the data path), TLS handshake done or failed, upstream connected (the
peer's gauge, one addition inline), and ended (sessions by status, bytes, the connect time,
attempts and their failures, the gauges back down: one call).

A worker makes one :class:`Account` per generation it adopts (with ``admin`` only) and gives
each :class:`~tlsgw.runtime.server.ServerRuntime` a :class:`ServerAccount` as ``rt.stats``;
without ``admin`` ``rt.stats`` stays None and the data path's only cost is that test. Value
slots are found once per label set and cached (a dict lookup afterwards).
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from tlsgw.admin.names import server_label
from tlsgw.admin.table import Row, key_text
from tlsgw.proxy import messages

#: histogram buckets (seconds) of the TLS handshake and upstream connect durations
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0)
_WIDTH = len(BUCKETS) + 2  # the buckets, +Inf, the sum (the count is the buckets')

#: the TLS handshake failure reasons (label ``reason``), from the error log's causes
HANDSHAKE_REASONS = ("not_tls", "no_client_certificate", "unknown_ca",
                     "certificate_verify_failed", "no_shared_cipher", "protocol_version",
                     "no_application_protocol", "no_shared_algorithm", "timeout",
                     "client_closed", "other")
_CAUSES = {
    "not TLS": "not_tls", "client sent no certificate": "no_client_certificate",
    "client does not trust our certificate": "unknown_ca",
    "client certificate verification failed": "certificate_verify_failed",
    "no cipher in common": "no_shared_cipher",
    "client supports none of the enabled protocol versions": "protocol_version",
    "client offered no protocol of ssl_alpn": "no_application_protocol",
    "no key exchange or signature algorithm": "no_shared_algorithm",
    "handshake timed out": "timeout",
    "client closed the connection": "client_closed",
}


def handshake_reason(exc: BaseException) -> str:
    cause = messages.handshake_cause(exc)
    for start, reason in _CAUSES.items():
        if cause.startswith(start):
            return reason
    return "other"


_bucket = bisect.bisect_left
_SUM = len(BUCKETS) + 1  # the sum's value after a histogram's first; the count is the buckets'


def observe(values: Any, first: int, seconds: float) -> None:
    """One observation into the histogram whose values start at *first* (its bucket and its
    sum; the collector counts the buckets)."""
    values[first + _bucket(BUCKETS, seconds)] += 1
    values[first + _SUM] += seconds


class _Opened(dict):
    """listen_name -> (connections_total, connections_active); a name the generation's
    listeners did not have gets its slots on first use (never a KeyError on the data path)."""

    def __init__(self, acc: Account):
        super().__init__()
        self.acc = acc

    def __missing__(self, listen_name: str) -> tuple[int, int]:
        return self.acc.listener_slots(listen_name)[:2]


class Account:
    """One worker's accounting for one generation."""

    def __init__(self, row: Row, cfg: Any, server_labels: dict[int, str]):
        self.row = row
        self.values = row.values
        self.cache: dict[tuple, int] = {}
        #: Session.listen_name -> the ``listener`` label (the listen address as written)
        self.listener = {g.listen.log_name: g.listen.text for g in cfg.groups}
        self.fail_timeout = {(u.name, p.name): p.fail_timeout
                             for u in cfg.used_upstreams().values() for p in u.peer_configs()}
        self.server_labels = server_labels
        #: listen_name -> (connections_total, connections_active, handshakes ok, histogram)
        self.listeners: dict[str, tuple[int, int, int, int]] = {}
        #: listen_name -> (connections_total, connections_active), what accept adds to
        self.opened = _Opened(self)
        for name in self.listener:
            self.listener_slots(name)

    def listener_slots(self, listen_name: str) -> tuple[int, int, int, int]:
        got = self.listeners.get(listen_name)
        if got is None:
            lst = ("listener", self.listener.get(listen_name, listen_name))
            got = self.listeners[listen_name] = (
                self.slot("tlsgw_connections_total", lst),
                self.slot("tlsgw_connections_active", lst),
                self.slot("tlsgw_tls_handshakes_total", lst, ("result", "ok"), ("reason", "")),
                self.slot("tlsgw_tls_handshake_duration_seconds", lst, width=_WIDTH))
            self.opened[listen_name] = got[:2]
        return got

    def slot(self, family: str, *labels: tuple[str, str], width: int = 1) -> int:
        k = (family, labels)
        i = self.cache.get(k)
        if i is None:
            i = self.cache[k] = self.row.slot(key_text(family, labels), width)
        return i

    def add(self, family: str, labels: tuple[tuple[str, str], ...], amount: float = 1) -> None:
        self.values[self.slot(family, *labels)] += amount


class ServerAccount:
    """``rt.stats``: the accounting of one server's sessions.

    The data path does as little as it can before a session ends: at accept it adds to two
    values of its listener (:attr:`opened`, looked up by the session's ``listen_name``), at
    upstream connect to one of the peer's (:attr:`connected_at`), both inline, with no call
    (:mod:`tlsgw.proxy.pump`, :mod:`tlsgw.proxy.datagram`); everything else (sessions by
    status, bytes, the connect duration, attempts and their failures, the gauges back down)
    is :meth:`ended`, one call. The slots of the generation's listeners are found when it is
    bound, a peer's when it is first used (DNS discovery adds peers)."""

    __slots__ = ("acc", "values", "server", "upstream", "tickets", "opened", "statuses",
                 "connected_at", "peers", "bytes_in", "bytes_out", "connect_hist")

    def __init__(self, acc: Account, server: str, upstream: str, tickets: bool):
        self.acc = acc
        self.values = acc.values
        self.server = server
        self.upstream = upstream
        self.tickets = tickets
        srv = ("server", server)
        self.bytes_in = acc.slot("tlsgw_bytes_total", srv, ("direction", "received"))
        self.bytes_out = acc.slot("tlsgw_bytes_total", srv, ("direction", "sent"))
        self.connect_hist = acc.slot("tlsgw_upstream_connect_duration_seconds",
                                     ("upstream", upstream), width=_WIDTH)
        #: listen_name -> (connections_total, connections_active): every listener of the
        #: generation, shared by its servers (an SNI choice ends on another server's account)
        self.opened = acc.opened
        self.statuses: dict[int, int] = {}
        #: peer name -> its sessions_active value (what connect adds to)
        self.connected_at: dict[str, int] = {}
        #: peer name -> (bytes sent, bytes received, sessions_active, failed-until, sessions)
        self.peers: dict[str, tuple[int, int, int, int, int]] = {}

    def listener(self, listen_name: str) -> tuple[int, int, int, int]:
        """(connections_total, connections_active, handshakes ok, handshake histogram)."""
        return self.acc.listener_slots(listen_name)

    def peer(self, name: str) -> tuple[int, int, int, int, int]:
        got = self.peers.get(name)
        if got is None:
            acc = self.acc
            labels = (("upstream", self.upstream), ("peer", name))
            got = self.peers[name] = (
                acc.slot("tlsgw_upstream_bytes_total", *labels, ("direction", "sent")),
                acc.slot("tlsgw_upstream_bytes_total", *labels, ("direction", "received")),
                acc.slot("tlsgw_upstream_peer_sessions_active", *labels),
                acc.slot("tlsgw_upstream_peer_failed_until", *labels),
                acc.slot("tlsgw_upstream_peer_sessions_total", *labels))
            self.connected_at[name] = got[2]
        return got

    def connected_slot(self, name: str) -> int:
        """The value an upstream connect to peer *name* adds to (the data path reads
        :attr:`connected_at` first; this is its first time for the peer)."""
        return self.peer(name)[2]

    def handshake_done(self, listen_name: str, sslobj: Any, seconds: float) -> None:
        _, _, ok, hist = self.listener(listen_name)
        self.values[ok] += 1
        observe(self.values, hist, seconds)
        if sslobj is not None and sslobj.session_reused:
            # with ssl_session_tickets on, a client resumes with its ticket (OpenSSL only
            # falls back to the session cache for clients without ticket support, which the
            # server side cannot tell); off, every resumption is from the session cache
            acc = self.acc
            acc.add("tlsgw_tls_resumed_total",
                    (("listener", acc.listener.get(listen_name, listen_name)),
                     ("kind", "ticket" if self.tickets else "session_id")))

    def handshake_failed(self, listen_name: str, exc: BaseException, seconds: float) -> None:
        acc = self.acc
        acc.add("tlsgw_tls_handshakes_total",
                (("listener", acc.listener.get(listen_name, listen_name)),
                 ("result", "failed"), ("reason", handshake_reason(exc))))
        observe(self.values, self.listener(listen_name)[3], seconds)

    def ended(self, session: Any) -> None:
        """The session is over (``finalize``): everything else, at once. A session the data
        path counted as connected is one whose last attempt has a ``connect_time``."""
        values = self.values
        values[self.opened[session.listen_name][1]] -= 1
        status = session.status
        i = self.statuses.get(status)
        if i is None:
            i = self.statuses[status] = self.acc.slot(
                "tlsgw_sessions_total", ("server", self.server), ("status", str(status)))
        values[i] += 1
        values[self.bytes_in] += session.bytes_received
        values[self.bytes_out] += session.bytes_sent
        attempts = session.attempts
        if not attempts:
            return
        last = attempts[-1]
        seconds = last.connect_time
        if seconds is not None:
            sent, received, active, until, total = (self.peers.get(last.name)
                                                     or self.peer(last.name))
            values[sent] += last.bytes_sent
            values[received] += last.bytes_received
            values[active] -= 1
            values[total] += 1
            values[until] = 0.0  # it took a session: not failed (max_fails) any more
            hist = self.connect_hist  # observe(), inline
            values[hist + _bucket(BUCKETS, seconds)] += 1
            values[hist + _SUM] += seconds
            if len(attempts) == 1:
                return
        for a in attempts:
            if a.failure is not None:
                self.failed(a)

    def failed(self, a: Any) -> None:
        acc = self.acc
        acc.add("tlsgw_upstream_connect_failures_total",
                (("upstream", self.upstream), ("peer", a.name), ("reason", a.failure)))
        if a.disabled:
            self.values[self.peer(a.name)[3]] = \
                time.time() + acc.fail_timeout.get((self.upstream, a.name), 10.0)


def bind(generation: Any, row: Row) -> Account:
    """Give every runtime of *generation* its :class:`ServerAccount` in *row* (the adopting
    worker's). The row is adopted once per process (gauges of a dead predecessor zeroed)."""
    if not row.adopted:
        row.adopt()
    cfg = generation.cfg
    labels = {srv.index: server_label(srv, cfg) for srv in cfg.servers}
    acc = Account(row, cfg, labels)
    for srv in cfg.servers:
        generation.runtimes[srv.index].stats = ServerAccount(
            acc, labels[srv.index], srv.upstream.name, srv.s.ssl_session_tickets)
    return acc
