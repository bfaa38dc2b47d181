"""Upstream groups: the balancing method and the parameters of an upstream server.

The balancing method is parsed here once, for the YAML keys (``hash``, ``least_conn``,
``random``) and for nginx's directive words (:func:`method_from_nginx`), into a
:class:`Balancing`: the balancer's :class:`~tlsgw.balancer.Method` and the hash key's template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlsgw.balancer import Method
from tlsgw.config import units
from tlsgw.config.schema.base import Directive, Nginx, number, seconds
from tlsgw.config.schema.discovery import RESOLVE
from tlsgw.config.units import UnitError
from tlsgw.variables import Template, TemplateError

#: ``hash ... consistent`` places 160 ketama points per unit of weight; this bounds the ring.
MAX_CONSISTENT_WEIGHT = 10000


@dataclass(frozen=True, slots=True)
class Balancing:
    """The value of a balancing-method directive."""

    method: Method
    key: Template | None = None  # the compiled ``hash`` key


ROUND_ROBIN = Balancing(Method("round_robin"))


def least_conn_method(v: str) -> Balancing:
    if not units.parse_flag(v):
        raise UnitError('the only valid value is "on" (omit the key for round robin)')
    return Balancing(Method("least_conn"))


def random_method(v: str) -> Balancing:
    s = str(v).strip().lower()
    if s in ("on", "true", "yes", ""):
        return Balancing(Method("random"))
    if s in ("two", "two least_conn"):
        return Balancing(Method("random_two"))
    raise UnitError(f'invalid parameter "{v}" (expected "on", "two" or "two least_conn")')


def hash_method(v: str) -> Balancing:
    parts = str(v).split()
    if not parts:
        raise UnitError("a key is required, e.g. hash: $remote_addr consistent")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] != "consistent"):
        raise UnitError(f'invalid parameter "{" ".join(parts[1:])}" (expected "consistent")')
    try:
        key = Template(parts[0], escape="none")
    except TemplateError as exc:
        raise UnitError(str(exc)) from None
    return Balancing(Method("hash_consistent" if len(parts) == 2 else "hash"), key)


def weight(v: str) -> int:
    return units.parse_int(v, minimum=1)


def _peer(arity: str):
    return lambda own: Nginx(own, ("upstream server parameter",), arity)


D = Directive
PEER_PARAMS: tuple[Directive, ...] = (
    D("weight", ("peer",), "weight=NUMBER", "1", weight,
      "Relative share of sessions. With `hash ... consistent`, the primary servers' weights "
      "may add up to at most 10000 (160 ring points per unit of weight, as in nginx).", "- 10.0.0.1:80 weight=5",
      nginx=_peer("value")),
    D("max_conns", ("peer",), "max_conns=NUMBER", "0", number,
      "Limit of simultaneous sessions to the server, per worker process; 0 is no limit.",
      "- 10.0.0.1:80 max_conns=100",
      nginx=_peer("value")),
    D("max_fails", ("peer",), "max_fails=NUMBER", "1", number,
      "After this many failed connection attempts within `fail_timeout`, the server is "
      "considered unavailable for `fail_timeout`. 0 disables the accounting. A failure is a "
      "connect error or timeout (never an error after the connection was established).",
      "- 10.0.0.1:80 max_fails=3",
      nginx=_peer("value")),
    D("fail_timeout", ("peer",), "fail_timeout=TIME", "10s", seconds,
      "The window for counting failures and the time a failed server is left out, in whole "
      "seconds as in nginx (no `ms`).",
      "- 10.0.0.1:80 fail_timeout=30s",
      nginx=_peer("value")),
    D("backup", ("peer",), "backup", None, None,
      "Used only when every primary server is unavailable. Not allowed with `hash` or "
      "`random`.", "- 10.0.0.2:80 backup",
      nginx=_peer("none")),
    D("down", ("peer",), "down", None, None,
      "Marks the server permanently unavailable (it keeps its place on the hash ring, so "
      "other keys do not move).", "- 10.0.0.3:80 down",
      nginx=_peer("none")),
    RESOLVE,
)

DIRECTIVES: list[Directive] = [
    D("hash", ("upstream",), "hash: KEY [consistent]", None, hash_method,
      "Chooses the server from a hash of KEY, text with variables such as `$remote_addr`, "
      "`$remote_port`, `$server_port`. With `consistent`, ketama consistent hashing places "
      "keys exactly where nginx does (same ring, same retry order), so migrating keeps "
      "sticky clients on the same backends. An empty key falls back to round robin. "
      "`backup` servers are not allowed.", "hash: $remote_addr consistent",
      nginx=Nginx("hash", ("upstream",), "one or two")),
    D("least_conn", ("upstream",), "least_conn: on", None, least_conn_method,
      "Chooses the server with the fewest active connections relative to its weight; ties "
      "are broken by weighted round robin. Counts are per worker process, as in nginx "
      "without `zone`.", "least_conn: on",
      nginx=Nginx("least_conn", ("upstream",), "none", no_args="on")),
    D("random", ("upstream",), "random: on | two [least_conn]", None, random_method,
      "Chooses a server at random, weighted; `two` picks two and takes the one with fewer "
      "connections. `backup` servers are not allowed.", "random: two least_conn",
      nginx=Nginx("random", ("upstream",), "none, one or two", no_args="on")),
    D("servers", ("upstream",), "servers: [\"ADDRESS [PARAMETERS]\" | {address: ADDRESS, ...}]",
      None, None, "The servers of the group, each a string in nginx's `server` syntax or a "
      "mapping with `address` and the same parameters. Without `hash`, `least_conn` or "
      "`random`, smooth weighted round robin is used.",
      "servers:\n  - 127.0.0.1:7773 weight=5 max_fails=3 fail_timeout=30s\n"
      "  - unix:/run/b.sock backup\n  - address: \"[::1]:7775\"\n    weight: 2",
      params=PEER_PARAMS, unsupported=("service", "slow_start"),
      nginx=Nginx("server", ("upstream",), "one or more",
                  note="each `server ADDRESS [PARAMETER ...];` line is one entry of `servers:`")),
    *PEER_PARAMS,
]

METHODS = {d.name: d for d in DIRECTIVES if "upstream" in d.contexts and d.name != "servers"}


def method_from_nginx(words: Sequence[str]) -> Balancing:
    """nginx's method directive words (``["hash", "$remote_addr", "consistent"]``,
    ``["least_conn"]``) through the same parsers as the YAML keys."""
    d = METHODS.get(words[0]) if words else None
    if d is None:
        raise UnitError(f'unknown balancing method "{" ".join(words)}"')
    assert d.parse is not None and isinstance(d.nginx, Nginx)
    value = " ".join(words[1:]) or d.nginx.no_args
    if value is None:
        raise UnitError(f'invalid number of arguments in "{d.name}" directive')
    return d.parse(value)
