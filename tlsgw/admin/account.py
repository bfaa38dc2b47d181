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

    def slot(self, family: str, *labels: tuple[str, str], width: int = 1) -> int:
        k = (family, labels)
        i = self.cache.get(k)
        if i is None:
            i = self.cache[k] = self.row.slot(key_text(family, labels), width)
        return i

    def add(self, family: str, labels: tuple[tuple[str, str], ...], amount: float = 1) -> None:
        i = self.slot(family, *labels)
        if i >= 0:
            self.values[i] += amount


class ServerAccount:
    """``rt.stats``: the accounting calls of one server's sessions."""

    __slots__ = ("acc", "values", "server", "upstream", "tickets")

    def __init__(self, acc: Account, server: str, upstream: str, tickets: bool):
        self.acc = acc
        self.values = acc.values
        self.server = server
        self.upstream = upstream
        self.tickets = tickets

    def _listener(self, listen_name: str) -> tuple[str, str]:
        return ("listener", self.acc.listener.get(listen_name, listen_name))

    def accepted(self, listen_name: str) -> None:
        acc, lst = self.acc, self._listener(listen_name)
        acc.add("tlsgw_connections_total", (lst,))
        acc.add("tlsgw_connections_active", (lst,))

    def handshake_done(self, listen_name: str, sslobj: Any, seconds: float) -> None:
        acc, lst = self.acc, self._listener(listen_name)
        acc.add("tlsgw_tls_handshakes_total", (lst, ("result", "ok"), ("reason", "")))
        i = acc.slot("tlsgw_tls_handshake_duration_seconds", lst, width=_WIDTH)
        if i >= 0:
            observe(self.values, i, seconds)
        if sslobj is not None and sslobj.session_reused:
            # with ssl_session_tickets on, a client resumes with its ticket (OpenSSL only
            # falls back to the session cache for clients without ticket support, which the
            # server side cannot tell); off, every resumption is from the session cache
            ticket = self.tickets
            acc.add("tlsgw_tls_resumed_total",
                    (lst, ("kind", "ticket" if ticket else "session_id")))

    def handshake_failed(self, listen_name: str, exc: BaseException, seconds: float) -> None:
        acc, lst = self.acc, self._listener(listen_name)
        acc.add("tlsgw_tls_handshakes_total",
                (lst, ("result", "failed"), ("reason", handshake_reason(exc))))
        i = acc.slot("tlsgw_tls_handshake_duration_seconds", lst, width=_WIDTH)
        if i >= 0:
            observe(self.values, i, seconds)

    def connected(self, peer: str, seconds: float) -> None:
        acc = self.acc
        labels = (("upstream", self.upstream), ("peer", peer))
        acc.add("tlsgw_upstream_peer_sessions_active", labels)
        i = acc.slot("tlsgw_upstream_connect_duration_seconds", ("upstream", self.upstream),
                     width=_WIDTH)
        if i >= 0:
            observe(self.values, i, seconds)
        i = acc.slot("tlsgw_upstream_peer_failed_until", *labels)
        if i >= 0:
            self.values[i] = 0.0

    def ended(self, session: Any) -> None:
        """The session is over (``finalize``): everything else, at once."""
        acc = self.acc
        lst = self._listener(session.listen_name)
        srv = ("server", self.server)
        acc.add("tlsgw_connections_active", (lst,), -1)
        acc.add("tlsgw_sessions_total", (srv, ("status", str(session.status))))
        acc.add("tlsgw_bytes_total", (srv, ("direction", "received")), session.bytes_received)
        acc.add("tlsgw_bytes_total", (srv, ("direction", "sent")), session.bytes_sent)
        up = ("upstream", self.upstream)
        attempts = session.attempts
        for n, a in enumerate(attempts):
            peer = ("peer", a.name)
            if a.connect_time is not None and n == len(attempts) - 1 and \
                    session.upstream is not None:
                acc.add("tlsgw_upstream_bytes_total", (up, peer, ("direction", "sent")),
                        a.bytes_sent)
                acc.add("tlsgw_upstream_bytes_total", (up, peer, ("direction", "received")),
                        a.bytes_received)
                acc.add("tlsgw_upstream_peer_sessions_active", (up, peer), -1)
            elif a.failure is not None:
                acc.add("tlsgw_upstream_connect_failures_total",
                        (up, peer, ("reason", a.failure)))
                if a.disabled:
                    until = time.time() + acc.fail_timeout.get((self.upstream, a.name), 10.0)
                    i = acc.slot("tlsgw_upstream_peer_failed_until", up, peer)
                    if i >= 0:
                        self.values[i] = until


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
