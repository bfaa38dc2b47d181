"""Active health checks, in nginx Plus's words: ``health_check`` (with its parameters),
``health_check_timeout`` and the top-level ``match`` entries (``send``/``expect``).

The probes run once per upstream server in a helper process; what the workers see of them is
one byte per server in a shared zone (see :mod:`tlsgw.health`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlsgw.config import units
from tlsgw.config.schema.base import Directive, Nginx, positive_time, stream
from tlsgw.config.units import UnitError

#: nginx Plus's ``health_check`` parameters tlsgw rejects as not supported yet
NOT_YET = {"mandatory": "", "persistent": ""}


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """The value of ``health_check``."""

    interval: float = 5.0
    jitter: float = 0.0
    fails: int = 1
    passes: int = 1
    port: int = 0  # 0: the server's own port
    match: str | None = None
    udp: bool = False  # probe with a datagram (tlsgw.health.probes)


@dataclass(frozen=True, slots=True)
class Match:
    """One ``match`` entry: what a probe sends and what the response must contain."""

    name: str
    send: bytes = b""
    expect: bytes | None = None  # a literal the response must contain
    regex: re.Pattern[bytes] | None = None  # or a regular expression it must match
    line: int = 0


def _positive_int(name: str, v: str) -> int:
    n = units.parse_int(v)
    if n < 1:
        raise UnitError(f'invalid parameter "{name}={v}" (must be 1 or more)')
    return n


def health_check(v: str) -> HealthCheck:
    words = str(v).split()
    if words in ([], ["on"]):
        return HealthCheck()
    kw: dict[str, object] = {}
    for w in words:
        name, eq, value = w.partition("=")
        if w == "udp":
            kw["udp"] = True
            continue
        if name in NOT_YET and not eq:
            why = NOT_YET[name]
            raise UnitError(f'the "{name}" parameter is not supported yet'
                            + (f" ({why})" if why else ""))
        if not eq or not value:
            raise UnitError(f'invalid parameter "{w}"')
        if name == "interval":
            kw[name] = positive_time(value)
        elif name == "jitter":
            kw[name] = units.parse_time(value)
        elif name in ("fails", "passes"):
            kw[name] = _positive_int(name, value)
        elif name == "port":
            port = units.parse_int(value)
            if not 1 <= port <= 65535:
                raise UnitError(f'invalid port "{value}"')
            kw[name] = port
        elif name == "match":
            kw[name] = value
        else:
            raise UnitError(f'invalid parameter "{w}"')
    return HealthCheck(**kw)  # type: ignore[arg-type]


def expect(v: str) -> tuple[bytes | None, re.Pattern[bytes] | None]:
    """``expect``: a literal, or ``~ REGEX`` (Python's syntax, searched in the response)."""
    s = str(v)
    if s.startswith("~"):
        try:
            return None, re.compile(s[1:].strip().encode())
        except re.error as exc:
            raise UnitError(f'invalid regular expression "{s[1:].strip()}" ({exc})') from None
    if not s:
        raise UnitError("an empty expect string matches anything: omit expect instead")
    return s.encode(), None


D = Directive
DIRECTIVES: list[Directive] = [
    D("health_check", ("server",),
      "health_check: on | [interval=TIME] [jitter=TIME] [fails=NUMBER] [passes=NUMBER] "
      "[port=NUMBER] [match=NAME] [udp]", None, health_check,
      "Probes every server of the server's upstream, once per server whatever the number of "
      "workers, from a helper process: every `interval` (default 5s, plus up to `jitter`, "
      "default 0, at random) a TCP connection is made (to `port` if given) and, with "
      "`proxy_ssl`, a TLS handshake verified exactly as the proxied sessions' are; with "
      "`match=NAME`, its `send` is sent and the response must satisfy its `expect`, all within "
      "`health_check_timeout`. After `fails` failed probes in a row (default 1) the server is "
      "down, after `passes` good ones (default 1) it is up again; servers start up, and a "
      "reload keeps the state of the servers that still exist (same upstream and address). A down "
      "server gets no new sessions and is skipped exactly as a server failed by `max_fails` "
      "is (a server must pass both); open sessions are left alone. Each change is logged, e.g. "
      "`upstream server 127.0.0.1:6002 of \"chat\" is down (timed out reading the response; "
      "1 up, 1 down)`. If several servers check one upstream, the first one's settings apply. "
      "With `udp` the probe is a datagram from a connected UDP socket: the match's `send` "
      "(without a match, `nginx health check`, as nginx Plus sends), then a reply datagram "
      "must satisfy `expect`; an ICMP port unreachable (`connection refused`) fails it, and "
      "without `expect` the probe passes unless one comes within `health_check_timeout`.",
      "health_check: interval=2s fails=2 passes=2 match=pong",
      differs="nginx Plus only; the `mandatory` and `persistent` parameters are not "
              "supported yet, and no `zone` is needed in the upstream.",
      nginx=Nginx("health_check", ("server",), "any")),
    D("health_check_timeout", ("main", "server"), "health_check_timeout: TIME", "5s",
      positive_time, "Time a health-check probe may take: connecting, the TLS handshake, "
      "sending and reading the expected response.", "health_check_timeout: 1s",
      nginx=stream("one")),
    D("match", ("main",), "match: {NAME: {send: TEXT, expect: TEXT | \"~ REGEX\"}, ...}", None,
      None, "Named tests for `health_check match=NAME`: `send` is sent once connected (YAML "
      "double quotes give `\\r\\n`), and the response must contain the `expect` text, or "
      "match the regular expression after `~ ` (Python syntax, searched). Either key may be "
      "omitted: without `expect`, a probe passes once `send` is sent.",
      "match:\n  pong: {send: \"PING\\r\\n\", expect: \"~ ^PONG\"}",
      nginx=Nginx("match", ("stream",), "block with one",
                  note="each `match NAME { send ...; expect ...; }` block is one entry of "
                       "`match:`")),
]
