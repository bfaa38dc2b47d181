"""UDP proxying (``listen ... udp``): nginx's ``proxy_requests`` and ``proxy_responses``, and
tlsgw's cap on the sessions of one UDP listener (:mod:`tlsgw.proxy.datagram`)."""

from __future__ import annotations

from tlsgw.config import units
from tlsgw.config.schema.base import NO_NGINX, Directive, stream

#: ``udp_max_sessions`` bound: each session holds one connected upstream socket (a file
#: descriptor), so the per-process descriptor limit is the real ceiling.
MAX_UDP_SESSIONS = 1_000_000


def count(v: str) -> int:
    """A datagram count: 0 or more, at most 2147483647 (nginx's ``ngx_conf_set_num_slot``)."""
    return units.parse_int(v, maximum=units.INT_MAX)


def sessions(v: str) -> int:
    return units.parse_int(v, minimum=1, maximum=MAX_UDP_SESSIONS)


D = Directive
DIRECTIVES: list[Directive] = [
    D("proxy_requests", ("main", "server"), "proxy_requests: NUMBER", "0", count,
      "UDP: after this many client datagrams the client is unbound from its session; the next "
      "datagram from the same address and port starts a new session (with a new choice of "
      "upstream server), while the old one lives on until its replies are in or it times out. "
      "`0` never unbinds. `proxy_requests: 1` balances every datagram on its own.",
      "proxy_requests: 1",
      nginx=stream("one")),
    D("proxy_responses", ("main", "server"), "proxy_responses: NUMBER", None, count,
      "UDP: how many datagrams the upstream server sends back for each client datagram. Once "
      "that many replies per request have been relayed the session ends (`udp done`, `$status` "
      "200); a session still short of them at `proxy_timeout` is logged `upstream timed out` "
      "(`$status` 502) and counts as a failure of the server. `0`: no reply is expected, the "
      "session ends as soon as the datagram is sent. Unset: unlimited, the session ends only "
      "at `proxy_timeout` (`udp timed out`, `$status` 200).",
      "proxy_responses: 1",
      nginx=stream("one")),
    D("udp_max_sessions", ("main", "server"), "udp_max_sessions: NUMBER", "4096", sessions,
      "UDP: the most sessions one UDP listener keeps open in one worker (each holds one "
      "connected socket to its upstream server and at most `proxy_buffer_size` bytes of "
      "datagrams waiting to be sent). A datagram from a new client beyond it is dropped and "
      "counted; a `warn` line says so, at most once a second. It is also held below the "
      "process's open-file limit. The value of the listener's default server applies.",
      "udp_max_sessions: 10000",
      differs="nginx has no such cap: its UDP sessions are bounded only by "
      "`worker_connections`.",
      nginx=NO_NGINX),
]
