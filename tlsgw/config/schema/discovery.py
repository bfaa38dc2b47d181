"""DNS discovery, nginx 1.27.3+'s words: ``resolver``, ``resolver_timeout`` (top level or in an
upstream) and the upstream server parameter ``resolve`` (declared with the other server
parameters, in :mod:`.upstream`).

A server written as a host name with ``resolve`` is not resolved when the file is loaded: each
worker queries the ``resolver``'s name servers while running (:mod:`tlsgw.process.discovery`)
and its addresses join or leave the upstream without a reload.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tlsgw.config import units
from tlsgw.config.addresses import AddressError, split_host_port
from tlsgw.config.schema.base import Directive, Nginx, positive_time
from tlsgw.config.units import UnitError


@dataclass(frozen=True, slots=True)
class Resolver:
    """The value of ``resolver``: name servers (IP, port) and the answer handling."""

    servers: tuple[tuple[str, int], ...]
    valid: float | None = None  # None: the answers' TTL
    ipv4: bool = True
    ipv6: bool = True


def _on_off(word: str) -> bool:
    value = word.partition("=")[2]
    if value not in ("on", "off"):
        raise UnitError(f"invalid parameter: {word}")
    return value == "on"


def resolver(v: str) -> Resolver:
    """``ADDRESS[:PORT] ... [valid=TIME] [ipv4=on|off] [ipv6=on|off]``; port 53 by default.

    Name servers are IP addresses (IPv6 in brackets): a name server written as a host name
    would need a resolver of its own.
    """
    servers: list[tuple[str, int]] = []
    valid: float | None = None
    ipv4 = ipv6 = True
    for w in str(v).split():
        if w.startswith("valid="):
            try:
                valid = units.parse_seconds(w[6:]) or None  # 0: the TTL, as in nginx
            except UnitError:
                raise UnitError(f"invalid parameter: {w}") from None
        elif w.startswith("ipv4="):
            ipv4 = _on_off(w)
        elif w.startswith("ipv6="):
            ipv6 = _on_off(w)
        elif w.startswith("status_zone="):
            raise UnitError(f'the "status_zone" parameter (nginx Plus) is not supported: {w}')
        else:
            try:
                host, port = split_host_port(w, default_port=53)
                ipaddress.ip_address(host)
            except (AddressError, ValueError) as exc:
                why = str(exc) if isinstance(exc, AddressError) else "not an IP address"
                raise UnitError(f'{why} in resolver "{w}"') from None
            assert port is not None
            servers.append((host, port))
    if not ipv4 and not ipv6:
        raise UnitError('"ipv4" and "ipv6" cannot both be "off"')
    if not servers:
        raise UnitError("no name servers defined")
    return Resolver(tuple(servers), valid, ipv4, ipv6)


D = Directive
RESOLVE = D("resolve", ("peer",), "resolve", None, None,
            "The server's host name is resolved while running, through the `resolver` of its "
            "upstream (or the top level's), instead of once at start-up: every worker queries "
            "the name again when the answer's TTL (or the resolver's `valid=`) has passed, plus "
            "one second, and the addresses found join the upstream and the ones gone leave it, "
            "without a reload (sessions already open stay). A name that does not exist "
            "(NXDOMAIN) or has no address leaves the group empty; any other failure (timeout, "
            "SERVFAIL, refused) keeps the last addresses, is logged at `error` as nginx does "
            "(`backend.example could not be resolved (110: Operation timed out)`) and is "
            "retried after `resolver_timeout`. Until the first answer the server has no "
            "address. With `hash ... consistent`, the ring holds the server *as written*: its "
            "addresses share its points and the keys that reach it are spread over them by "
            "weighted round robin, so a change of addresses moves no key to or from another "
            "server. An IP address with `resolve` is a static server. Not allowed in an "
            "upstream under `health_check` yet.",
            "- backend.example.com:8080 resolve",
            differs="no `zone` is needed; `service=` (SRV records) is not supported yet.",
            nginx=Nginx("resolve", ("upstream server parameter",), "none"))

DIRECTIVES: list[Directive] = [
    D("resolver", ("main", "upstream"),
      "resolver: ADDRESS[:PORT] ... [valid=TIME] [ipv4=on|off] [ipv6=on|off]", None, resolver,
      "Name servers for the upstream servers marked `resolve` (port 53 unless given; several "
      "are tried in turn). `valid` overrides the answers' TTL; `ipv4=off` / `ipv6=off` leave "
      "out A / AAAA records (both are queried by default). At the top level it serves every "
      "upstream without a `resolver` of its own.",
      "resolver: 10.0.0.2 [fd00::2]:5353 valid=10s ipv6=off",
      differs="only IP addresses name a name server (nginx also resolves a host name there "
              "once, at start-up); `status_zone` (nginx Plus) is not supported.",
      nginx=Nginx("resolver", ("stream", "server", "upstream"), "one or more")),
    D("resolver_timeout", ("main", "upstream"), "resolver_timeout: TIME", "30s", positive_time,
      "Time one resolution may take, retries over the name servers included; after a failure "
      "the name is queried again after this time (at least 1s).", "resolver_timeout: 5s",
      nginx=Nginx("resolver_timeout", ("stream", "server", "upstream"), "one")),
]
