"""The PROXY protocol header tlsgw sends upstream (``proxy_protocol: on | v2``), as nginx's
``ngx_stream_proxy_send_proxy_protocol`` does: built from the session's client (after
``set_real_ip_from``) and the address it connected to, written on the upstream connection
before anything else — before the held client bytes and before an upstream TLS handshake."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from tlsgw.proxy import proxyproto
from tlsgw.tls.context import verify_code

if TYPE_CHECKING:
    from tlsgw.proxy.pump import Session


def tls_info(sslobj: Any) -> proxyproto.TLSInfo:
    """What the v2 TLS TLVs say about a TLS client connection (nginx's
    ``ngx_proxy_protocol_v2_eval_ssl``)."""
    cipher = sslobj.cipher()
    alpn = sslobj.selected_alpn_protocol()
    der = sslobj.getpeercert(binary_form=True)
    cn = None
    verify = 1
    if der:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else None
        code = verify_code(sslobj)
        verify = 1 if code is None else code
    return proxyproto.TLSInfo(version=sslobj.version(), cipher=cipher[0] if cipher else None,
                              sni=getattr(sslobj, "tlsgw_sni", None),
                              alpn=alpn.encode() if alpn else None, cn=cn, cert=bool(der),
                              reused=bool(sslobj.session_reused), verify=verify)


def header_for(session: Session, version: int) -> bytes:
    """The header for ``proxy_protocol: on`` (1) or ``v2`` (2)."""
    src, sport = session.remote_addr, session.remote_port
    dst, dport = session.server_addr, session.server_port
    if version == 1:
        return proxyproto.build_v1(src, sport, dst, dport)
    tls = tls_info(session.sslobj) if session.sslobj is not None else None
    return proxyproto.build_v2(src, sport, dst, dport, tls)


class SendFirst(asyncio.Protocol):
    """The upstream connection's protocol for its first moment: writes the header, then hands
    the transport to ``inner`` (the upstream side, or the SSLProtocol of ``proxy_ssl``, whose
    ClientHello then follows the header)."""

    __slots__ = ("inner", "header")

    def __init__(self, inner: Any, header: bytes):
        self.inner, self.header = inner, header

    def connection_made(self, transport: Any) -> None:
        inner, self.inner = self.inner, None
        transport.write(self.header)
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:  # only if it never connected
        pass
