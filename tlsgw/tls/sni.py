"""Choosing a server by TLS SNI among servers that share one ``listen ... ssl`` address.

nginx 1.25.5+ semantics: an exact name wins, then the longest wildcard starting with ``*.``,
then the longest wildcard ending with ``.*``; no SNI or no match means the default server (the
first on that address, or the one whose ``listen`` has ``default_server``). The choice switches
the connection to that server's ``SSLContext`` (certificates, client verification, session-id
context) before OpenSSL looks for a session to resume, and, after the handshake, the session
uses that server's proxy settings. The session cache, timeout and ticket keys stay the default
server's (OpenSSL keeps them on the connection's first ``SSL_CTX``), as in nginx.

OpenSSL's ``SSL_set_SSL_CTX`` swaps the certificate but keeps the verify mode, depth and options
of the first context, so those are copied onto the connection too, as nginx does. It also keeps
the first context's protocol range and groups; because the server is chosen before they are
negotiated, those of the chosen server are copied as well (nginx chooses later, so there the
default server's ``ssl_protocols`` and ``ssl_ecdh_curve`` apply to every server).
"""

from __future__ import annotations

import ctypes
import ssl

from tlsgw.config.model import ListenGroup
from tlsgw.tls import hello, native
from tlsgw.tls.context import _ssl_pointer


def _bind() -> ctypes.CDLL:
    """The libssl binding (every prototype is declared in :mod:`tlsgw.tls.native`)."""
    return native.load().ssl


SSL_CTRL_SET_GROUPS_LIST = 92
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_CTRL_GET_MIN_PROTO_VERSION = 130
SSL_CTRL_GET_MAX_PROTO_VERSION = 131


class _Negotiation:
    """What ``SSL_new`` copies from the default server's context into each connection and
    ``SSL_set_SSL_CTX`` does not replace: the protocol range (``ssl_protocols``) and the
    key-exchange groups (``ssl_ecdh_curve``), both negotiated after the server is chosen."""

    def __init__(self, raw: int, curves: str):
        lib = _bind()
        self.min_version = lib.SSL_CTX_ctrl(raw, SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None)
        self.max_version = lib.SSL_CTX_ctrl(raw, SSL_CTRL_GET_MAX_PROTO_VERSION, 0, None)
        # OpenSSL cannot say which groups a context has, nor reset a connection to its
        # built-in list: "auto" here is only allowed where the default server has it too
        # (tlsgw.config.checks.sni_unhonoured says so), and then the connection already has that list
        self.groups = None if curves == "auto" else curves.encode()

    def apply(self, lib: ctypes.CDLL, ptr: int) -> None:
        ok = (lib.SSL_ctrl(ptr, SSL_CTRL_SET_MIN_PROTO_VERSION, self.min_version, None)
              and lib.SSL_ctrl(ptr, SSL_CTRL_SET_MAX_PROTO_VERSION, self.max_version, None))
        if ok and self.groups is not None:
            ok = lib.SSL_ctrl(ptr, SSL_CTRL_SET_GROUPS_LIST, 0, self.groups)
        if not ok:
            raise RuntimeError("cannot set the protocol range or groups of the chosen server")


def match(names: dict[str, int], wild_front: list[tuple[str, int]], wild_back: list[tuple[str, int]],
          host: str) -> int | None:
    host = host.lower().rstrip(".")
    if host in names:
        return names[host]
    for suffix, idx in wild_front:  # longest first: "*.example.com" -> ".example.com"
        if host.endswith(suffix):
            return idx
    for prefix, idx in wild_back:  # longest first: "www.*" -> "www."
        if host.startswith(prefix):
            return idx
    return None


Tables = tuple[dict[str, int], list[tuple[str, int]], list[tuple[str, int]]]


def tables(group: ListenGroup) -> Tables:
    """(exact names, ``*.`` suffixes longest first, ``.*`` prefixes longest first) of the
    group's ``server_name`` values, each with its server's index: what :func:`match` takes."""
    names: dict[str, int] = {}
    front: list[tuple[str, int]] = []
    back: list[tuple[str, int]] = []
    for srv in group.servers:
        for n in srv.server_names:
            if n.startswith("*."):
                front.append((n[1:], srv.index))
            elif n.endswith(".*"):
                back.append((n[:-1], srv.index))
            else:
                names.setdefault(n, srv.index)
    front.sort(key=lambda t: -len(t[0]))
    back.sort(key=lambda t: -len(t[0]))
    return names, front, back


def install_sni(group: ListenGroup, contexts: dict[int, ssl.SSLContext],
                pins: native.Pins) -> None:
    """Choose the server of each connection on this listen group by its SNI.

    *contexts* are the group's servers' contexts by server index; *pins* (the generation's)
    holds the ClientHello callback. The choice is made in the ClientHello callback
    (:mod:`tlsgw.tls.hello`), before OpenSSL looks for a session to resume, so the session-id
    context compared is the chosen server's. Python's ``sni_callback`` runs later and only
    brings the ``SSLObject`` up to date (its ``context``, the server index and the name for
    ``$ssl_server_name``). :func:`uninstall` undoes it."""
    names, front, back = tables(group)
    raws = {i: native.ctx_pointer(ctx) for i, ctx in contexts.items()}  # checked once, here
    curves = {srv.index: srv.s.ssl_ecdh_curve for srv in group.servers}
    negotiation = {i: _Negotiation(raw, curves[i]) for i, raw in raws.items()}
    servers = {raw: (contexts[i], i) for i, raw in raws.items()}
    default_ctx = contexts[group.servers[0].index]
    default_raw = native.ctx_pointer(default_ctx)
    lib = _bind()
    ssl_lib = native.load().ssl

    def choose(ptr: int) -> None:
        if ssl_lib.SSL_get_SSL_CTX(ptr) != default_raw:
            return  # a second ClientHello (after a HelloRetryRequest): chosen already
        name = hello.server_name(ptr)
        idx = None if name is None else match(names, front, back, name)
        if idx is None or raws[idx] == default_raw:
            return
        raw = raws[idx]
        if ssl_lib.SSL_set_SSL_CTX(ptr, raw) != raw:
            raise RuntimeError("SSL_set_SSL_CTX failed")
        # SSL_set_SSL_CTX swaps certificates only: the verification and options go along too,
        # and so do the protocol range and groups (negotiated after this callback)
        lib.SSL_set_verify(ptr, ssl_lib.SSL_CTX_get_verify_mode(raw),
                           lib.SSL_CTX_get_verify_callback(raw))
        lib.SSL_set_verify_depth(ptr, lib.SSL_CTX_get_verify_depth(raw))
        opts = ssl_lib.SSL_CTX_get_options(raw)
        lib.SSL_clear_options(ptr, ssl_lib.SSL_get_options(ptr) & ~opts)
        lib.SSL_set_options(ptr, opts)
        negotiation[idx].apply(lib, ptr)

    if len(group.servers) > 1:
        hello.install(default_raw, choose, pins)
    default_ctx.sni_callback = _Servername(servers)


def uninstall(default_ctx: ssl.SSLContext) -> None:
    """Drop what :func:`install_sni` set on a listener's default context (its ClientHello
    callback goes back with :func:`tlsgw.tls.native.clear_callbacks`)."""
    default_ctx.sni_callback = None


class _Servername:
    """Python's ``sni_callback`` of one listener: the group's contexts by ``SSL_CTX *``."""

    __slots__ = ("servers",)

    def __init__(self, servers: dict[int, tuple[ssl.SSLContext, int]]):
        self.servers = servers

    def __call__(self, sslobj: ssl.SSLObject, server_name: str | None,
                 _ctx: ssl.SSLContext) -> None:
        if server_name is not None:
            sslobj.tlsgw_sni = server_name  # type: ignore[attr-defined]
        ptr = _ssl_pointer(sslobj)
        chosen = self.servers.get(native.load().ssl.SSL_get_SSL_CTX(ptr)) if ptr else None
        if chosen is not None and chosen[0] is not sslobj.context:
            sslobj.context = chosen[0]  # the same SSL_CTX already: only Python's view changes
            sslobj.tlsgw_server = chosen[1]  # type: ignore[attr-defined]
        return None
