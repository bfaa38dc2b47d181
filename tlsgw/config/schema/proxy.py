"""Proxying: connecting to upstreams, timeouts, buffering, closing."""

from __future__ import annotations

from tlsgw.config import units
from tlsgw.config.schema.base import Directive, flag, number, positive_time, stream, time
from tlsgw.config.units import UnitError

#: ``proxy_buffer_size`` bound: uvloop keeps a transport's write-buffer limit in a C int, and
#: each session may hold a few times this size per direction.
MAX_BUFFER_SIZE = 1024**3


def buffer_size(v: str) -> int:
    n = units.parse_size(v, maximum=MAX_BUFFER_SIZE)
    if n <= 0:
        raise UnitError(f'invalid size "{units.shown(v)}" (must be greater than 0)')
    return n


D = Directive
DIRECTIVES: list[Directive] = [
    D("proxy_connect_timeout", ("main", "server"), "proxy_connect_timeout: TIME", "60s",
      positive_time, "Time allowed to establish a connection with an upstream server; on "
      "expiry the attempt fails and the next upstream is tried (`proxy_next_upstream`).",
      "proxy_connect_timeout: 1s",
      nginx=stream("one")),
    D("proxy_timeout", ("main", "server"), "proxy_timeout: TIME", "10m", positive_time,
      "Closes a session when neither side has sent anything for this long (idle time "
      "between successive reads or writes). Logged as `connection timed out`; `$status` 200.",
      "proxy_timeout: 20s",
      nginx=stream("one")),
    D("proxy_next_upstream", ("main", "server"), "proxy_next_upstream: on | off", "on",
      flag, "When a connection to an upstream server cannot be established, try "
      "the next server. Once connected, a session is never moved.",
      "proxy_next_upstream: off",
      nginx=stream("flag")),
    D("proxy_next_upstream_tries", ("main", "server"), "proxy_next_upstream_tries: NUMBER", "0",
      number, "Caps the number of attempts (the first one included); 0 means no cap "
      "beyond one attempt per eligible server.", "proxy_next_upstream_tries: 2",
      nginx=stream("one")),
    D("proxy_next_upstream_timeout", ("main", "server"), "proxy_next_upstream_timeout: TIME", "0",
      time, "No new attempt is started once this long has passed since the first "
      "attempt began; 0 means no limit. An attempt in progress is never cut short.",
      "proxy_next_upstream_timeout: 5s",
      nginx=stream("one")),
    D("proxy_buffer_size", ("main", "server"), "proxy_buffer_size: SIZE", "16k", buffer_size,
      "The per-direction buffering bound: data from one side is read while the other side's "
      "unsent data is below this size (reading pauses above it, resumes when it drains), and "
      "client data that arrives before the upstream connection is ready is held up to this size. "
      "At most `1g`.",
      "proxy_buffer_size: 64k",
      differs="nginx reads into one fixed buffer of this size; tlsgw reads what the kernel "
      "has (up to 256k at a time) and uses this size as the high-water mark of the write "
      "queue, so memory per session stays within a few times this size. Sizes above `1g` are "
      "rejected (nginx allocates the buffer, up to its size_t range, per session).",
      nginx=stream("one")),
    D("proxy_half_close", ("main", "server"), "proxy_half_close: on | off", "off",
      flag, "With `on`, when one side closes its sending direction (TCP FIN) the "
      "other side is shut down for writing too and the session continues in the other "
      "direction until both sides have closed. With `off`, the session ends when either side "
      "closes, after pending data is delivered.", "proxy_half_close: on",
      differs="not available on a server with `listen ... ssl` or `proxy_ssl: on` (rejected by "
      "check): tlsgw closes a TLS connection as a whole when either end closes it, where nginx "
      "keeps proxying the other direction.",
      nginx=stream("flag")),
    D("tcp_nodelay", ("main", "server"), "tcp_nodelay: on | off", "on", flag,
      "Sets TCP_NODELAY on client and upstream connections (no Nagle delay).",
      "tcp_nodelay: off",
      nginx=stream("flag")),
]
