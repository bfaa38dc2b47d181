"""Addresses in nginx syntax: ``listen`` targets and upstream ``server`` targets.

An :class:`Address` is either a TCP endpoint (host and port, IPv6 literals written in brackets)
or a Unix socket path (``unix:/path``). Host names are resolved once, when the configuration is
loaded, as nginx does.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass


class AddressError(ValueError):
    """The text is not a valid address; the message is worded like nginx's."""


@dataclass(frozen=True)
class Address:
    """One resolved endpoint."""

    family: int  # socket.AF_INET, AF_INET6 or AF_UNIX
    host: str  # IP text without brackets, or the socket path for AF_UNIX
    port: int  # 0 for AF_UNIX

    @property
    def sockaddr(self) -> tuple[str, int] | str:
        return self.host if self.family == socket.AF_UNIX else (self.host, self.port)

    @property
    def name(self) -> str:
        """The text nginx shows in logs and ``$upstream_addr``: ``1.2.3.4:80``, ``[::1]:80``, ``unix:/p``."""
        if self.family == socket.AF_UNIX:
            return f"unix:{self.host}"
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _port(text: str, what: str, lowest: int = 1) -> int:
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise AddressError(f'invalid port in "{what}"')
    return int(text)


def split_host_port(text: str, default_port: int | None = None,
                    lowest: int = 1) -> tuple[str, int | None]:
    """Split ``host:port`` / ``[v6]:port`` / ``port`` / ``host`` into (host, port or None);
    a port below ``lowest`` is invalid."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f'invalid IPv6 address in "{text}"')
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f'invalid IPv6 address in "{text}"')
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise AddressError(f'invalid address "{text}"')
        return host, _port(rest[1:], text, lowest)
    if text.isdigit():
        return "", _port(text, text, lowest)
    if text.count(":") > 1:
        raise AddressError(f'invalid address "{text}" (write IPv6 addresses in brackets: "[::1]:80")')
    host, sep, port = text.partition(":")
    if not host:
        raise AddressError(f'invalid address "{text}"')
    if not sep:
        return host, default_port
    return host, _port(port, text, lowest)


def resolve(host: str, port: int, text: str) -> list[Address]:
    """Resolve a host (IP literal or name) to addresses, in resolver order, duplicates removed."""
    for fam, cls in ((socket.AF_INET, ipaddress.IPv4Address), (socket.AF_INET6, ipaddress.IPv6Address)):
        try:
            cls(host)
        except ValueError:
            continue
        return [Address(fam, host, port)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressError(f'host not found in "{text}" ({exc})')
    out: list[Address] = []
    for fam, _type, _proto, _canon, sa in infos:
        addr = Address(fam, str(sa[0]), port)
        if addr not in out:
            out.append(addr)
    return out


#: sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included.
UNIX_PATH_MAX = 108


def _unix(path: str, text: str) -> list[Address]:
    if len(os.fsencode(path)) >= UNIX_PATH_MAX:
        raise AddressError(f'too long path in the unix domain socket "{text}" '
                           f"(at most {UNIX_PATH_MAX - 1} bytes)")
    return [Address(socket.AF_UNIX, path, 0)]


def parse_listen(text: str) -> list[Address]:
    """``addr:port``, ``port``, ``*:port``, ``[::]:port``, ``unix:/path`` → addresses to bind.
    Port 0 (unlike nginx) binds a port the kernel picks; the master logs which."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise AddressError(f'no path in "{text}"')
        return _unix(path, text)
    host, port = split_host_port(text, lowest=0)
    if port is None:
        raise AddressError(f'no port in "{text}"')
    if host in ("", "*"):
        return [Address(socket.AF_INET, "0.0.0.0", port)]
    return resolve(host, port, text)


def parse_upstream_server(text: str) -> list[Address]:
    """An upstream ``server`` address; a port is required, as in nginx."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise AddressError(f'no path in upstream "{text}"')
        return _unix(text[5:], text)
    host, port = split_host_port(text)
    if port is None:
        raise AddressError(f'no port in upstream "{text}"')
    if not host:
        raise AddressError(f'no host in upstream "{text}"')
    return resolve(host, port, text)


def resolvable_server(text: str) -> list[Address]:
    """An upstream ``server ... resolve`` address: an IP address as usual; a host name is not
    resolved now (empty list: it is resolved while running). A port is required."""
    if text.startswith("unix:"):
        return parse_upstream_server(text)
    host, port = split_host_port(text)
    if port is None:
        raise AddressError(f'no port in upstream "{text}"')
    if not host:
        raise AddressError(f'no host in upstream "{text}"')
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or any(not 0 < len(label) <= 63 for label in labels):
            raise AddressError(f'invalid host name in upstream "{text}" (DNS allows labels '
                               "of 1 to 63 characters, 253 in all)") from None
        return []
    return resolve(host, port, text)
