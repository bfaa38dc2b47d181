"""What a worker accounts in its row of the stats table (:mod:`tlsgw.admin.table`), called by
the data path at four moments of a session, never per chunk: accepted (connection counters and
gauge), TLS handshake done or failed, upstream connected (the peer's gauge, the connect time),
and ended (sessions by status, bytes, attempts and their failures, the gauges back down).

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
_WIDTH = len(BUCKETS) + 3  # the buckets, +Inf, the sum, the count

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


def observe(values: Any, first: int, seconds: float) -> None:
    """One observation into the histogram whose values start at *first*."""
    values[first + bisect.bisect_left(BUCKETS, seconds)] += 1
    values[first + len(BUCKETS) + 1] += seconds
    values[first + len(BUCKETS) + 2] += 1


class Account:
    """One worker's accounting for one generation."""

    def __init__(self, row: Row, cfg: Any, server_labels: dict[int, str]):
        self.row = row
        self.values = row.values
        self.cache: dict[tuple, int] = {}
        #: Session.listen_name -> the ``listener`` label (the listen address as written)
        self.listener = {g.listen.log_name: g.listen.text for g in cfg.groups}
        self.fail_timeout = {(u.name, p.name): p.fail_timeout for u in cfg.upstreams.values()
                             for p in u.peer_configs()}
        self.server_labels = server_labels
        self.listeners: dict[str, tuple[int, int, int, int]] = {}  # see ServerAccount

    def slot(self, family: str, *labels: tuple[str, str], width: int = 1) -> int:
        k = (family, labels)
        i = self.cache.get(k)
        if i is None:
            i = self.cache[k] = self.row.slot(key_text(family, labels), width)
        return i

    def add(self, family: str, labels: tuple[tuple[str, str], ...], amount: float = 1) -> None:
        self.values[self.slot(family, *labels)] += amount


class ServerAccount:
    """``rt.stats``: the accounting calls of one server's sessions. The value slots of a
    listener, a status and a peer are found once and kept in plain dicts: a call is a few
    dict reads and float additions."""

    __slots__ = ("acc", "values", "server", "upstream", "tickets", "listeners", "statuses",
                 "peers", "bytes_in", "bytes_out", "connect_hist")

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
        self.listeners = acc.listeners  # listen_name -> (total, active, handshakes ok, hist)
        self.statuses: dict[int, int] = {}
        self.peers: dict[str, tuple[int, int, int, int]] = {}  # sent, received, active, until

    def listener(self, listen_name: str) -> tuple[int, int, int, int]:
        got = self.listeners.get(listen_name)
        if got is None:
            acc = self.acc
            lst = ("listener", acc.listener.get(listen_name, listen_name))
            got = self.listeners[listen_name] = (
                acc.slot("tlsgw_connections_total", lst),
                acc.slot("tlsgw_connections_active", lst),
                acc.slot("tlsgw_tls_handshakes_total", lst, ("result", "ok"), ("reason", "")),
                acc.slot("tlsgw_tls_handshake_duration_seconds", lst, width=_WIDTH))
        return got

    def peer(self, name: str) -> tuple[int, int, int, int]:
        got = self.peers.get(name)
        if got is None:
            acc = self.acc
            labels = (("upstream", self.upstream), ("peer", name))
            got = self.peers[name] = (
                acc.slot("tlsgw_upstream_bytes_total", *labels, ("direction", "sent")),
                acc.slot("tlsgw_upstream_bytes_total", *labels, ("direction", "received")),
                acc.slot("tlsgw_upstream_peer_sessions_active", *labels),
                acc.slot("tlsgw_upstream_peer_failed_until", *labels))
        return got

    def accepted(self, listen_name: str) -> None:
        total, active, _, _ = self.listener(listen_name)
        values = self.values
        values[total] += 1
        values[active] += 1

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

    def connected(self, peer: str, seconds: float) -> None:
        _, _, active, until = self.peer(peer)
        values = self.values
        values[active] += 1
        values[until] = 0.0
        observe(values, self.connect_hist, seconds)

    def ended(self, session: Any) -> None:
        """The session is over (``finalize``): everything else, at once."""
        values = self.values
        values[self.listener(session.listen_name)[1]] -= 1
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
        if last.connect_time is not None and session.upstream is not None:
            sent, received, active, _ = self.peer(last.name)
            values[sent] += last.bytes_sent
            values[received] += last.bytes_received
            values[active] -= 1
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
