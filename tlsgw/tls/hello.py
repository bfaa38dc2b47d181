"""The ClientHello callback: a connection's server and session-id context are settled before
OpenSSL looks for a session to resume.

OpenSSL resumes a session (TLS 1.2 session ID or ticket, TLS 1.3 PSK) only if the session's
session-id context equals the connection's; tlsgw derives that context from a server's
certificates and client-verification settings, so a session never resumes on a server with
other certificates or another verification policy. OpenSSL makes that comparison while it
processes the ClientHello, after the ClientHello callback and *before* the servername callback.
Two things therefore have to happen in the ClientHello callback:

* **SNI.** Every connection of a listener starts on its default server's ``SSL_CTX``. A server
  chosen later, by the servername callback (Python's ``sni_callback``), is chosen after the
  session was looked up with the default server's context: the default server's sessions would
  resume on every server of the listener, skipping its certificate and its client verification.
  :mod:`tlsgw.tls.sni` chooses the server here, from the ClientHello's ``server_name``.
* **CPython 3.13** sets its own session-id context (``"Python"``) on every server-side
  connection (``SSL_set_session_id_context`` when the ``SSL`` is made; 3.12 and older set it
  once on the ``SSL_CTX``, where tlsgw's replaced it). On 3.13 every session would carry the
  same context and resume on any server of the process. The callback puts the context of the
  connection's ``SSL_CTX`` back, on every Python alike.

The callback costs well under a microsecond per handshake. If it cannot do its job the
handshake fails (``internal_error``) rather than go on with a context that may let sessions
cross.
"""

from __future__ import annotations

import contextlib
import ssl
import weakref
from collections.abc import Callable

from tlsgw.tls import native

#: the session-id context of each configured ``SSL_CTX *`` (see :func:`set_id_context`)
_id_contexts: dict[int, bytes] = {}


def set_id_context(ctx: ssl.SSLContext, raw: int, sid_ctx: bytes) -> None:
    """Give *ctx* (whose ``SSL_CTX *`` is *raw*) the session-id context *sid_ctx*, and make
    its connections keep it: the first call installs the plain ClientHello callback, which
    :func:`install` later replaces on a listener that chooses its server by SNI."""
    native.set_session_id_context(raw, sid_ctx)
    if raw not in _id_contexts:
        weakref.finalize(ctx, _id_contexts.pop, raw, None)
        native.set_client_hello_cb(raw, _PLAIN)
    _id_contexts[raw] = sid_ctx


def restore(ssl_ptr: int) -> bool:
    """Set the connection's session-id context to that of its (current) ``SSL_CTX``."""
    lib = native.load().ssl
    sid = _id_contexts.get(lib.SSL_get_SSL_CTX(ssl_ptr))
    return sid is not None and lib.SSL_set_session_id_context(ssl_ptr, sid, len(sid)) == 1


def server_name(ssl_ptr: int) -> str | None:
    """The host name in the ClientHello's ``server_name`` extension (see :func:`parse_server_name`)."""
    return parse_server_name(native.client_hello_ext(ssl_ptr, native.TLSEXT_TYPE_SERVER_NAME))


def parse_server_name(body: bytes | None) -> str | None:
    """The host name of a ``server_name`` extension body (RFC 6066 section 3), or ``None`` when
    there is none or it is malformed (OpenSSL then refuses the ClientHello itself, right after
    the callback)."""
    if not body or len(body) < 5 or int.from_bytes(body[:2]) != len(body) - 2:
        return None
    if body[2] != 0:  # name_type host_name
        return None
    size = int.from_bytes(body[3:5])
    name = body[5:5 + size]
    if len(name) != size or not name or b"\0" in name:
        return None
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        return None


def _fail(alert) -> int:  # type: ignore[no-untyped-def]
    with contextlib.suppress(BaseException):
        alert[0] = native.SSL_AD_INTERNAL_ERROR
    return native.SSL_CLIENT_HELLO_ERROR


def _plain(ssl_ptr, alert, _arg) -> int:  # type: ignore[no-untyped-def]
    try:
        if restore(ssl_ptr):
            return native.SSL_CLIENT_HELLO_SUCCESS
    except BaseException:  # never unwind into OpenSSL
        pass
    return _fail(alert)


_PLAIN = native.CLIENT_HELLO_CB(_plain)
native.PROCESS.add(_PLAIN)


def install(raw: int, choose: Callable[[int], None], pins: native.Pins) -> None:
    """Run ``choose(ssl_ptr)`` at every ClientHello on *raw* (it may switch the connection to
    another ``SSL_CTX``), then set the session-id context of the context chosen. *pins* (the
    generation's) holds the callback."""

    def on_hello(ssl_ptr, alert, _arg) -> int:  # type: ignore[no-untyped-def]
        try:
            choose(ssl_ptr)
            if restore(ssl_ptr):
                return native.SSL_CLIENT_HELLO_SUCCESS
        except BaseException:  # never unwind into OpenSSL
            pass
        return _fail(alert)

    cb = native.CLIENT_HELLO_CB(on_hello)
    pins.add(cb, choose)
    native.set_client_hello_cb(raw, cb)
