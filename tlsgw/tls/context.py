"""``ssl.SSLContext`` objects built from nginx's ``ssl_*`` and ``proxy_ssl_*`` directives.

Everything here runs in the master (for ``check`` and before workers are forked), so a
certificate, key or setting that cannot be honoured stops start-up with a message that names the
directive, never a silent default. What the ``ssl`` module cannot express (verify depth, group
lists, ``optional_no_ca``) goes through :mod:`tlsgw.tls.native` on the very libssl the ``ssl``
module uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import ipaddress
import os
import ssl
import weakref
from collections.abc import Sequence
from types import SimpleNamespace

from tlsgw.tls import native

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
SSL_VERIFY_PEER = 0x01
SSL_CTRL_SET_GROUPS_LIST = 92


class TLSConfigError(Exception):
    """A TLS setting that cannot be honoured; ``directive`` names the culprit."""

    def __init__(self, directive: str, message: str):
        super().__init__(message)
        self.directive = directive


# ---- native helpers ------------------------------------------------------------------------------
def _lib() -> ctypes.CDLL:
    """The libssl binding (every prototype is declared in :mod:`tlsgw.tls.native`)."""
    return native.load().ssl


#: nginx's ngx_ssl_verify_error_optional(): the errors ``optional_no_ca`` lets through, all
#: meaning "the issuer is not trusted here"; anything else (expired, revoked, bad signature,
#: chain too long) still fails, as in nginx.
_NO_CA_ERRORS = frozenset({
    2,   # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
})


def _no_ca_verify(ok: int, store: int | None) -> int:
    if ok:
        return 1
    return 1 if _lib().X509_STORE_CTX_get_error(store) in _NO_CA_ERRORS else 0


_NO_CA_VERIFY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)(_no_ca_verify)
native.PROCESS.add(_NO_CA_VERIFY)


def _set_verify_depth(ctx: ssl.SSLContext, depth: int) -> None:
    _lib().SSL_CTX_set_verify_depth(native.ctx_pointer(ctx), depth)


def _set_client_ca_names(ctx: ssl.SSLContext, path: str) -> None:
    """Send the subjects of ``ssl_client_certificate`` in the CertificateRequest, as nginx does
    (``ssl`` has no API for it: ``load_verify_locations`` only trusts them)."""
    lib = _lib()
    names = lib.SSL_load_client_CA_file(os.fsencode(path))
    if not names:
        native.load().ssl.ERR_clear_error()
        raise TLSConfigError("ssl_client_certificate", f'no certificate in "{path}"')
    lib.SSL_CTX_set_client_CA_list(native.ctx_pointer(ctx), names)  # the context owns it now


#: int alpn_select_cb(SSL *, const unsigned char **out, unsigned char *outlen,
#:                    const unsigned char *in, unsigned int inlen, void *arg)
_ALPN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                            ctypes.POINTER(ctypes.c_ubyte), ctypes.c_void_p, ctypes.c_uint,
                            ctypes.c_void_p)
SSL_TLSEXT_ERR_OK = 0
SSL_TLSEXT_ERR_ALERT_FATAL = 2
OPENSSL_NPN_NEGOTIATED = 1


def _set_alpn(ctx: ssl.SSLContext, protocols: Sequence[str], pins: native.Pins) -> None:
    """``ssl_alpn``: choose the first of ours the client offers; none in common is a fatal
    ``no_application_protocol`` alert, as in nginx (CPython's own callback would go on without
    ALPN). A client that sends no ALPN extension is not affected."""
    wire = b""
    for proto in protocols:
        raw = proto.encode()
        if not 0 < len(raw) < 256:
            raise TLSConfigError("ssl_alpn", f'invalid protocol "{proto}"')
        wire += bytes([len(raw)]) + raw
    ours = ctypes.create_string_buffer(wire, len(wire))
    lib = _lib()
    select = lib.SSL_select_next_proto

    def choose(_ssl, out, outlen, offered, offered_len, _arg):  # type: ignore[no-untyped-def]
        if select(out, outlen, ctypes.addressof(ours), len(wire), offered,
                  offered_len) != OPENSSL_NPN_NEGOTIATED:
            return SSL_TLSEXT_ERR_ALERT_FATAL
        return SSL_TLSEXT_ERR_OK

    cb = _ALPN_CB(choose)
    pins.add(cb, ours)  # OpenSSL keeps both addresses for the context's lifetime
    lib.SSL_CTX_set_alpn_select_cb(native.ctx_pointer(ctx), ctypes.cast(cb, ctypes.c_void_p), None)


def _set_groups(ctx: ssl.SSLContext, groups: str, directive: str) -> None:
    raw = native.ctx_pointer(ctx)
    lib = native.load().ssl
    if lib.SSL_CTX_ctrl(raw, SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) != 1:
        native.load().ssl.ERR_clear_error()
        raise TLSConfigError(directive, f'unknown curve or group in "{groups}"')


def _ssl_pointer(sslobj: ssl.SSLObject) -> int:
    """``SSL *`` of an SSLObject: PySSLSocket is {PyObject_HEAD; PyObject *Socket; SSL *ssl; ...}."""
    inner = sslobj._sslobj  # type: ignore[attr-defined]
    return ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)).value or 0


_raw_ctx: weakref.WeakKeyDictionary[ssl.SSLContext, int] = weakref.WeakKeyDictionary()


def verify_code(sslobj: ssl.SSLObject) -> int | None:
    """OpenSSL's ``SSL_get_verify_result`` of the connection (0: verified), None if unknown."""
    lib = _lib()
    ptr = _ssl_pointer(sslobj)
    ctx = sslobj.context
    raw = _raw_ctx.get(ctx)
    if raw is None:  # check each context once (by the context, not its id: ids are reused)
        raw = _raw_ctx[ctx] = native.ctx_pointer(ctx)
    if not ptr or native.load().ssl.SSL_get_SSL_CTX(ptr) != raw:
        return None
    return int(lib.SSL_get_verify_result(ptr))


def verify_result(sslobj: ssl.SSLObject) -> str:
    """``$ssl_client_verify`` for ``optional_no_ca``: SUCCESS, FAILED:reason or NONE."""
    if sslobj.getpeercert(binary_form=True) is None:
        return "NONE"
    code = verify_code(sslobj)
    if code is None:
        return "FAILED:unknown"
    if code == 0:
        return "SUCCESS"
    return "FAILED:" + (_lib().X509_verify_cert_error_string(code) or b"?").decode()


# ---- files ---------------------------------------------------------------------------------------
def _need_file(path: str, directive: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSConfigError(directive, f'cannot load "{path}": {exc.strerror}') from None


def _passwords(path: str | None, directive: str) -> list[bytes]:
    if not path:
        return []
    _need_file(path, directive)
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.rstrip(b"\r\n")]


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str, passwords: list[bytes],
               cert_directive: str, key_directive: str, password_directive: str,
               password_file: str | None = None) -> None:
    _need_file(cert, cert_directive)
    _need_file(key, key_directive)
    with open(key, "rb") as fh:
        encrypted = b"ENCRYPTED" in fh.read(4096)
    if encrypted and not passwords:
        raise TLSConfigError(key_directive, f'"{key}" is encrypted and no passphrase is given: add '
                             f'"{password_directive}" (a file with the passphrase)')
    candidates: list[bytes | None] = list(passwords) if encrypted else [None]
    last: Exception | None = None
    for pw in candidates:
        try:
            # a callable password is always passed, so OpenSSL never prompts on a terminal
            ctx.load_cert_chain(cert, key, password=(lambda pw=pw: pw or b""))
            return
        except ssl.SSLError as exc:
            last = exc
    text = str(last)
    if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
        raise TLSConfigError(key_directive, f'the private key "{key}" does not belong to the '
                             f'certificate "{cert}"')
    if encrypted:
        raise TLSConfigError(password_directive, f'no passphrase in "{password_file}" '
                             f'({password_directive}) decrypts "{key}"')
    if "PEM" in text or "NO_START_LINE" in text or "no start line" in text:
        raise TLSConfigError(cert_directive, f'"{cert}" or "{key}" is not a PEM certificate/key '
                             f"({text})")
    raise TLSConfigError(cert_directive, f'cannot load "{cert}" with "{key}": {text}')


def certificate_warnings(paths: Sequence[str]) -> list[str]:
    """Warnings for certificates that are expired or not yet valid (``check`` shows them)."""
    from cryptography import x509

    out = []
    now = datetime.datetime.now(datetime.UTC)
    for path in paths:
        try:
            with open(path, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ValueError):
            continue
        if cert.not_valid_after_utc < now:
            out.append(f'certificate "{path}" expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC')
        elif cert.not_valid_before_utc > now:
            out.append(f'certificate "{path}" is not valid before '
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return out


def _versions(ctx: ssl.SSLContext, protocols: Sequence[str]) -> None:
    ctx.minimum_version = _VERSIONS[protocols[0]]
    ctx.maximum_version = _VERSIONS[protocols[-1]]


def _ciphers(ctx: ssl.SSLContext, ciphers: str, directive: str) -> None:
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TLSConfigError(directive, f'no cipher matches "{ciphers}"') from None


def has_suites_before_tls12(ciphers: str) -> bool:
    """Whether the cipher list has a suite that TLS 1.1 and older can use (the default list,
    Mozilla's intermediate, has TLS 1.2 suites only). An invalid list counts as having some:
    it is reported as invalid elsewhere."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        return True
    return any(c["protocol"] not in ("TLSv1.2", "TLSv1.3") for c in ctx.get_ciphers())


# ---- contexts ------------------------------------------------------------------------------------
def server_context(s: SimpleNamespace, pins: native.Pins | None = None) -> ssl.SSLContext:
    """A server-side context from a server's settings (session settings are applied later).

    The callbacks it needs are held by *pins* (the generation's), or, without it, by the
    context itself (``ctx.tlsgw_pins``)."""
    certs, keys = s.ssl_certificate or (), s.ssl_certificate_key or ()
    if not certs:
        raise TLSConfigError("listen", 'no "ssl_certificate" is defined for the "listen ... ssl" '
                             "directive")
    if len(keys) != len(certs):
        raise TLSConfigError("ssl_certificate_key", f"{len(certs)} ssl_certificate but {len(keys)} "
                             "ssl_certificate_key: give one key per certificate, in the same order")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # nginx's defaults: no server cipher preference unless asked; Python turns it on.
    if s.ssl_prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _versions(ctx, s.ssl_protocols)
    _ciphers(ctx, s.ssl_ciphers, "ssl_ciphers")
    if s.ssl_ecdh_curve != "auto":
        _set_groups(ctx, s.ssl_ecdh_curve, "ssl_ecdh_curve")
    passwords = _passwords(s.ssl_password_file, "ssl_password_file")
    for cert, key in zip(certs, keys, strict=True):
        _load_pair(ctx, cert, key, passwords, "ssl_certificate", "ssl_certificate_key",
                   "ssl_password_file", s.ssl_password_file)
    mode = s.ssl_verify_client
    if mode != "off":
        if mode != "optional_no_ca" and not (s.ssl_client_certificate or s.ssl_trusted_certificate):
            raise TLSConfigError("ssl_verify_client", 'no "ssl_client_certificate" or '
                                 '"ssl_trusted_certificate" for "ssl_verify_client"')
        for directive in ("ssl_client_certificate", "ssl_trusted_certificate"):
            path = getattr(s, directive)
            if path:
                _need_file(path, directive)
                try:
                    ctx.load_verify_locations(cafile=path)
                except ssl.SSLError as exc:
                    raise TLSConfigError(directive, f'cannot load "{path}": {exc}') from None
                if directive == "ssl_client_certificate":
                    _set_client_ca_names(ctx, path)
        ctx.verify_mode = ssl.CERT_REQUIRED if mode == "on" else ssl.CERT_OPTIONAL
        if mode == "optional_no_ca":
            _lib().SSL_CTX_set_verify(native.ctx_pointer(ctx), SSL_VERIFY_PEER,
                                      ctypes.cast(_NO_CA_VERIFY, ctypes.c_void_p))
        _set_verify_depth(ctx, s.ssl_verify_depth)
        if s.ssl_crl:
            _need_file(s.ssl_crl, "ssl_crl")
            try:
                ctx.load_verify_locations(cafile=s.ssl_crl)
            except ssl.SSLError as exc:
                raise TLSConfigError("ssl_crl", f'cannot load "{s.ssl_crl}": {exc}') from None
            # on the context's store, as nginx does, not on its verify parameters: those are
            # copied into each connection from the listener's default server, so an SNI-chosen
            # server's ssl_crl would be ignored
            store = _lib().SSL_CTX_get_cert_store(native.ctx_pointer(ctx))
            _lib().X509_STORE_set_flags(store, ssl.VERIFY_CRL_CHECK_CHAIN)
    if s.ssl_alpn:
        if pins is None:
            pins = ctx.tlsgw_pins = native.Pins()  # type: ignore[attr-defined]
        _set_alpn(ctx, s.ssl_alpn, pins)
    return ctx


def session_id_context(s: SimpleNamespace) -> bytes:
    """The session-id context of a server: its certificates, its client CA names and, when it
    verifies client certificates, its whole verification policy (see
    :func:`tlsgw.tls.resumption.session_id_context`)."""
    from tlsgw.tls import resumption

    policy = b""
    if s.ssl_verify_client != "off":
        parts = [f"ssl_verify_client {s.ssl_verify_client}; ssl_verify_depth {s.ssl_verify_depth}"
                 .encode()]
        for path in (s.ssl_client_certificate, s.ssl_trusted_certificate, s.ssl_crl):
            with open(path, "rb") if path else contextlib.nullcontext(None) as fh:
                parts.append(b"" if fh is None else hashlib.sha256(fh.read()).digest())
        policy = b"\0".join(parts)
    return resumption.session_id_context_from_files(s.ssl_certificate or (), s.ssl_client_certificate,
                                                  policy)


def proxy_name(s: SimpleNamespace, proxy_pass: str) -> str:
    """``proxy_ssl_name``, defaulting to the host part of ``proxy_pass`` as nginx does; a
    ``:port`` in either is dropped, as nginx does."""
    target = s.proxy_ssl_name or proxy_pass
    if target.startswith("unix:") and not s.proxy_ssl_name:
        return "localhost"
    if target.startswith("["):
        return target[1:target.index("]")]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


def sends_sni(s: SimpleNamespace, name: str) -> bool:
    if s.proxy_ssl_server_name is not None:
        return bool(s.proxy_ssl_server_name)
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        return True


def client_context(s: SimpleNamespace) -> ssl.SSLContext:
    """The context for connections to upstream servers (``proxy_ssl on``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _versions(ctx, s.proxy_ssl_protocols)
    _ciphers(ctx, s.proxy_ssl_ciphers, "proxy_ssl_ciphers")
    if s.proxy_ssl_verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if s.proxy_ssl_trusted_certificate:
            _need_file(s.proxy_ssl_trusted_certificate, "proxy_ssl_trusted_certificate")
            try:
                ctx.load_verify_locations(cafile=s.proxy_ssl_trusted_certificate)
            except ssl.SSLError as exc:
                raise TLSConfigError("proxy_ssl_trusted_certificate", f"cannot load "
                                     f'"{s.proxy_ssl_trusted_certificate}": {exc}') from None
        else:
            ctx.load_default_certs()
        _set_verify_depth(ctx, s.proxy_ssl_verify_depth)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.proxy_ssl_certificate or s.proxy_ssl_certificate_key:
        if not (s.proxy_ssl_certificate and s.proxy_ssl_certificate_key):
            raise TLSConfigError("proxy_ssl_certificate", '"proxy_ssl_certificate" and '
                                 '"proxy_ssl_certificate_key" go together')
        _load_pair(ctx, s.proxy_ssl_certificate, s.proxy_ssl_certificate_key,
                   _passwords(s.proxy_ssl_password_file, "proxy_ssl_password_file"),
                   "proxy_ssl_certificate", "proxy_ssl_certificate_key", "proxy_ssl_password_file",
                   s.proxy_ssl_password_file)
    return ctx
