"""DNS discovery in a worker: the upstream servers written ``HOST:PORT resolve``.

Each worker resolves for itself, on its own event loop, one task per (upstream, server): nginx
gives each name to one worker and shares the peers through the upstream's zone, but tlsgw
keeps balancer state per worker (no shared peer zone), so every worker queries the name and
builds its own peer list. The task never runs on the data path: it sleeps until the answer's
TTL (or the resolver's ``valid=``) has passed plus one second, as nginx's timer does, queries
the name servers with dnspython, and only when the set of addresses changed calls the worker
back (:meth:`Worker.membership_changed`), which builds a new ``balancer.Upstream`` for that
upstream with the existing code and swaps it into the runtimes in one assignment each. Open
sessions keep the peers they started with.

Failure handling is nginx's (``ngx_stream_upstream_zone_resolve_handler``): NXDOMAIN (or an
answer without addresses) means zero addresses, so the name's peers leave the group; any other
failure (timeout, SERVFAIL, REFUSED, ...) keeps the last addresses, is logged at ``error`` as
``NAME could not be resolved (CODE: TEXT)`` and is retried after ``max(resolver_timeout, 1s)``.

Nothing here exists in a worker whose configuration has no ``resolve`` server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from tlsgw.config.addresses import Address, split_host_port
from tlsgw.config.model import UpstreamConfig
from tlsgw.config.schema.discovery import Resolver

#: nginx's NGX_RESOLVE_TIMEDOUT (NGX_ETIMEDOUT)
TIMEDOUT = 110
NXDOMAIN = 3

#: ngx_resolver_strerror's texts
STRERROR = {1: "Format error", 2: "Server failure", 3: "Host not found", 4: "Unimplemented",
            5: "Operation refused", TIMEDOUT: "Operation timed out"}

#: a query goes to the next name server after this long without an answer (nginx resends
#: every 5 seconds too), within ``resolver_timeout``
RESEND = 5.0


class ResolveError(Exception):
    """The name could not be resolved: the code nginx logs (an rcode, or 110)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {STRERROR.get(self.code, 'Unknown error')}"


@dataclass(frozen=True, slots=True)
class Answer:
    addresses: tuple[str, ...]  # IP texts; empty: NXDOMAIN or no address of the asked types
    ttl: float


async def _query(resolver: Resolver, name: str, rdtype: dns.rdatatype.RdataType,
                 deadline: float, start: int) -> Answer:
    """One record type from the name servers, in turn from ``start``, until ``deadline``."""
    query = dns.message.make_query(name, rdtype)
    servers = resolver.servers
    i = start
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ResolveError(TIMEDOUT)
        host, port = servers[i % len(servers)]
        i += 1
        wait = min(left, RESEND)
        try:
            response = await dns.asyncquery.udp(query, host, timeout=wait, port=port)
            if response.flags & dns.flags.TC:
                response = await dns.asyncquery.tcp(query, host, timeout=wait, port=port)
        except dns.exception.Timeout:
            continue
        except (OSError, dns.exception.DNSException):
            # refused (ICMP port unreachable), a reply that does not parse: try the next one
            # after a pause, as nginx goes on until resolver_timeout
            await asyncio.sleep(min(max(deadline - time.monotonic(), 0), 0.2))
            continue
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return Answer((), _negative_ttl(response))
        if rcode != dns.rcode.NOERROR:
            raise ResolveError(int(rcode))
        found: list[str] = []
        ttl: float | None = None
        for rrset in response.answer:
            ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            if rrset.rdtype == rdtype:
                found.extend(r.address for r in rrset)
        if not found:
            return Answer((), _negative_ttl(response))
        return Answer(tuple(found), ttl or 0)


def _negative_ttl(response: dns.message.Message) -> float:
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(rrset.ttl, rrset[0].minimum)
    return 0


async def lookup(resolver: Resolver, name: str, timeout: float, start: int = 0) -> Answer:
    """The addresses of ``name`` (A and/or AAAA, as ``ipv4=``/``ipv6=`` say), in one answer.

    Raises:
        ResolveError: no usable answer within ``timeout`` or an error rcode.
    """
    deadline = time.monotonic() + timeout
    types = [t for t, on in ((dns.rdatatype.A, resolver.ipv4),
                             (dns.rdatatype.AAAA, resolver.ipv6)) if on]
    answers = await asyncio.gather(*(_query(resolver, name, t, deadline, start) for t in types),
                                   return_exceptions=True)
    for a in answers:
        if isinstance(a, BaseException):
            raise a
    got = [a for a in answers if isinstance(a, Answer)]
    addresses = tuple(dict.fromkeys(ip for a in got for ip in a.addresses))
    ttls = [a.ttl for a in got if a.addresses] or [a.ttl for a in got]
    return Answer(addresses, min(ttls))


def _sorted(addresses: tuple[str, ...], port: int) -> tuple[Address, ...]:
    """The peers of one name, IPv4 first, each family in numeric order: the same list in every
    worker and every instance, whatever order the name server answered in."""
    ips = sorted((ipaddress.ip_address(a) for a in addresses), key=lambda ip: (ip.version, ip))
    return tuple(Address(socket.AF_INET if ip.version == 4 else socket.AF_INET6, str(ip), port)
                 for ip in ips)


class Discovery:
    """The resolving tasks of one worker and what they found, by upstream and server text."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: Callable[..., None],
                 changed: Callable[[str], None]):
        self.loop = loop
        self.log = log  # ErrorLog.log(level, message)
        self.changed = changed  # called with the upstream's name when its addresses changed
        self.upstreams: dict[str, UpstreamConfig] = {}
        #: upstream name -> server text -> its current addresses
        self.resolved: dict[str, dict[str, tuple[Address, ...]]] = {}
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def adopt(self, upstreams: dict[str, UpstreamConfig]) -> None:
        """Resolve the ``resolve`` servers of *upstreams* (a reload's too): new names get a
        task, names gone lose theirs; a name kept keeps its addresses and its timer."""
        self.upstreams = upstreams
        wanted = {(u.name, s.text) for u in upstreams.values() if u.resolves
                  for s in u.servers if s.resolve}
        for key in list(self.tasks):
            if key not in wanted:
                self.tasks.pop(key).cancel()
                self.resolved.get(key[0], {}).pop(key[1], None)
        for number, key in enumerate(sorted(wanted - set(self.tasks))):
            self.tasks[key] = self.loop.create_task(self.run(*key, number))

    def addresses(self, upstream: str) -> dict[str, tuple[Address, ...]] | None:
        return self.resolved.get(upstream)

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def run(self, upstream: str, text: str, number: int) -> None:
        host, port = split_host_port(text)
        assert port is not None
        turn = number  # spread the names over the name servers
        while True:
            up = self.upstreams[upstream]
            assert up.resolver is not None
            try:
                answer = await lookup(up.resolver, host, up.resolver_timeout, turn)
            except ResolveError as exc:
                self.log("error", f"{host} could not be resolved ({exc})")
                await asyncio.sleep(max(up.resolver_timeout, 1.0))
                continue
            except Exception as exc:  # a bug must not end discovery for this name
                self.log("crit", f"resolving {host} failed: {exc!r}")
                await asyncio.sleep(max(up.resolver_timeout, 1.0))
                continue
            turn += 1
            if not answer.addresses:
                self.log("error", f"{host} could not be resolved ({ResolveError(NXDOMAIN)})")
            self.update(upstream, text, _sorted(answer.addresses, port))
            valid = up.resolver.valid if up.resolver.valid is not None else answer.ttl
            await asyncio.sleep(valid + 1)

    def update(self, upstream: str, text: str, addresses: tuple[Address, ...]) -> None:
        current = self.resolved.setdefault(upstream, {})
        before = current.get(text, ())
        if addresses == before and text in current:
            return
        current[text] = addresses
        added = [a.name for a in addresses if a not in before]
        removed = [a.name for a in before if a not in addresses]
        now = ", ".join(a.name for a in addresses) or "no address"
        change = "; ".join(part for part in (
            "added " + ", ".join(added) if added else "",
            "removed " + ", ".join(removed) if removed else "") if part)
        self.log("notice", f'upstream "{upstream}": {text} resolved to {now}'
                 + (f" ({change})" if change else ""))
        self.changed(upstream)
