"""The PROXY protocol: reading it (``listen ... proxy_protocol``, nginx's stream core and realip
modules) and sending it (``proxy_protocol``, nginx's stream proxy module)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tlsgw.config import units
from tlsgw.config.schema.base import Directive, Nginx, positive_time, stream
from tlsgw.config.units import UnitError

#: ``proxy_protocol`` values, as nginx's ``ngx_stream_proxy_protocol_versions`` enum.
VERSIONS = {"off": 0, "on": 1, "v2": 2}


def version(v: str) -> int:
    """``off`` 0, ``on`` 1 (v1), ``v2`` 2; YAML's true/false are on/off."""
    s = str(v).strip().lower()
    if s in VERSIONS:
        return VERSIONS[s]
    try:
        return 1 if units.parse_flag(s) else 0
    except UnitError:
        raise UnitError(f'invalid value "{units.shown(v)}", it must be "off", "on" or "v2"') from None


@dataclass(frozen=True, slots=True)
class TrustedSource:
    """One ``set_real_ip_from`` entry: an address or CIDR block, or ``unix:`` (``network`` None)."""

    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    def matches(self, addr: str) -> bool:
        """Whether a TCP peer (``$remote_addr`` as the socket gave it) is this source."""
        if self.network is None:
            return addr.startswith("unix:")
        try:
            return ipaddress.ip_address(addr) in self.network
        except ValueError:
            return False


def trusted(v: str) -> tuple[TrustedSource, ...]:
    """``set_real_ip_from``: ``ADDRESS``, ``ADDRESS/BITS`` or ``unix:``, as nginx's
    ``ngx_ptocidr`` reads it (host bits under the mask are dropped)."""
    s = str(v).strip()
    if s == "unix:":
        return (TrustedSource(s, None),)
    try:
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise UnitError(f'"{units.shown(v)}" is not an address, a CIDR block or "unix:"') from None
    return (TrustedSource(s, net),)


D = Directive
DIRECTIVES: list[Directive] = [
    D("proxy_protocol_timeout", ("main", "server"), "proxy_protocol_timeout: TIME", "30s",
      positive_time, "On a `listen ... proxy_protocol` address, how long the client has to send "
      "a whole PROXY protocol header. On expiry the session ends (`client timed out` at *info*, "
      "`$status` 200), as in nginx. For several servers sharing the address, the default "
      "server's value applies (the header comes before TLS SNI).",
      "proxy_protocol_timeout: 5s",
      differs="tlsgw reads a header that arrives in several TCP segments within this time; "
      "nginx needs all of it in its first read (`header is too large` for v2). A v1 line must "
      "end within 107 bytes, as the specification says, and a v2 header within 4096 (nginx's "
      "read buffer).",
      nginx=stream("one")),
    D("set_real_ip_from", ("main", "server"), "set_real_ip_from: ADDRESS | CIDR | unix:", None,
      trusted, "Sources trusted to tell the client's address: when a connection from one of "
      "them carries a PROXY protocol header, `$remote_addr` and `$remote_port` (and so `hash "
      "$remote_addr` placement, the error log's `client:` and an outgoing PROXY header) are the "
      "header's source; `$realip_remote_addr`/`$realip_remote_port` keep the connection's own. "
      "A header from any other address is still required and read (`$proxy_protocol_addr`) but "
      "changes nothing. A YAML list gives several; a server's list replaces the top level's. "
      "For several servers sharing an address, the default server's list applies.",
      "set_real_ip_from: [10.0.0.0/8, \"2001:db8::/32\", \"unix:\"]",
      repeatable=True,
      differs="a host name is not accepted (nginx resolves it at start-up); write its addresses.",
      nginx=stream("one", note="several `set_real_ip_from` lines are one YAML list")),
    D("proxy_protocol", ("main", "server"), "proxy_protocol: off | on | v2", "off", version,
      "Sends a PROXY protocol header to the upstream ahead of everything else (ahead of the "
      "upstream TLS handshake with `proxy_ssl`): `on` sends version 1 (`PROXY TCP4 ...`), "
      "`v2` the binary version 2, which for a TLS client carries its SNI (AUTHORITY), "
      "negotiated ALPN and an SSL TLV (version, client certificate CN, cipher), and a CRC32C. "
      "The source is the client (after `set_real_ip_from`), the destination the address it "
      "connected to.",
      "proxy_protocol: v2",
      differs="`v2` is a tlsgw extension for the nginx versions tlsgw follows (they send v1 "
      "only; nginx 1.31.4 added the same value). What it sends follows nginx 1.31.4's writer "
      "(family promotion, LOCAL for non-IP ends, AUTHORITY, ALPN, SSL, CRC32C last) except "
      "the SSL sub-TLVs SIG_ALG and KEY_ALG (our own certificate's algorithms), left out.",
      nginx=Nginx("proxy_protocol", ("stream", "server"), "one")),
]
