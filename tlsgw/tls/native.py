"""ctypes binding to the libssl that CPython's ``_ssl`` module runs on.

Theory of operation
-------------------
Python's :mod:`ssl` has no API for the session timeout, the session cache mode and size, the
session-id context, session cache callbacks, ticket-key callbacks or the ClientHello callback. Everything else about a
listener (certificates, ciphers, ALPN, verification) stays in a normal :class:`ssl.SSLContext`, so
uvloop keeps using its fast native path (``loop.create_server(..., ssl=ctx)``). This module reaches
the ``SSL_CTX *`` inside such a context and calls libssl directly on it.

Three things must hold, and each is checked before any call is made:

1. **Same library.** The functions must come from the *same* loaded copy of libssl/libcrypto as
   ``_ssl`` (the OpenSSL statically built into the ``cryptography`` wheel, used by pyOpenSSL, is a
   different copy whose objects must never be mixed with ours). :func:`load` lists the libssl
   files mapped into this process (``/proc/self/maps``), re-opens each with ``RTLD_NOLOAD`` (so it
   gets the already loaded instance, never a new one), resolves libcrypto symbols *through* that
   libssl handle (its own dependency), and accepts a candidate only if the ``SSL_METHOD *`` of a
   freshly made ``ssl.SSLContext(PROTOCOL_TLS_SERVER)`` is the very pointer the candidate's
   ``TLS_server_method()`` returns. A different copy cannot pass that test.
2. **Right struct offset.** CPython's ``PySSLContext`` is ``PyObject_HEAD`` followed by
   ``SSL_CTX *ctx``; the offset is ``object.__basicsize__``. :func:`ctx_pointer` reads that word,
   makes sure the memory it points to is readable (a probe through ``/proc/self/mem``, which
   fails with an error instead of crashing), then checks ``SSL_CTX_get_ssl_method``,
   ``SSL_CTX_get_options`` and ``SSL_CTX_get_verify_mode`` against what Python reports for the
   same context. Any mismatch raises :class:`NativeTLSUnavailable`; nothing is written to a
   pointer that failed a check.
3. **OpenSSL 1.1.1 or newer** (TLS 1.3 tickets, ``SSL_CTX_set_num_tickets``). On OpenSSL 3 the
   ticket callback uses ``SSL_CTX_set_tlsext_ticket_key_evp_cb`` (``EVP_MAC_CTX``); on 1.1.1 the
   ``HMAC_CTX`` flavour through ``SSL_CTX_callback_ctrl``.

Callbacks handed to OpenSSL are ctypes ``CFUNCTYPE`` thunks. A thunk that is garbage collected
while OpenSSL still holds its address crashes the process at the next handshake, so each one is
held by a :class:`Pins` that belongs to what the callback serves: a configuration generation
(:mod:`tlsgw.runtime.generation`), a ticket key ring, a shared cache, or, for the few thunks
made once per module, :data:`PROCESS`. Whoever drops a :class:`Pins` first takes the addresses
back from OpenSSL (:func:`clear_callbacks`); and when a Python context is destroyed its
remove-session callback is cleared before ``SSL_CTX_free`` flushes its cache
(:func:`keep_sessions_on_abrupt_close`), so no callback runs after its owner is gone.

Every ctypes prototype tlsgw uses is declared here, once, in :func:`_bind`.

Failures raise :class:`NativeTLSUnavailable` (a :class:`~tlsgw.errors.StartupError`); callers name
the configuration setting that could not be honoured.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import ssl
import threading
import weakref
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint,
    c_uint64,
    c_ulong,
    c_void_p,
)
from dataclasses import dataclass

from tlsgw.errors import StartupError

# --- OpenSSL constants (stable ABI values from ssl.h / tls1.h / params.h) -------------------------
SSL_CTRL_SESS_NUMBER = 20
SSL_CTRL_MODE = 33
SSL_CTRL_SET_SESS_CACHE_SIZE = 42
SSL_CTRL_GET_SESS_CACHE_SIZE = 43
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
SSL_CTRL_CLEAR_MODE = 78

SSL_SESS_CACHE_OFF = 0x0000
SSL_SESS_CACHE_CLIENT = 0x0001
SSL_SESS_CACHE_SERVER = 0x0002
SSL_SESS_CACHE_NO_AUTO_CLEAR = 0x0080
SSL_SESS_CACHE_NO_INTERNAL_LOOKUP = 0x0100
SSL_SESS_CACHE_NO_INTERNAL_STORE = 0x0200
SSL_SESS_CACHE_NO_INTERNAL = SSL_SESS_CACHE_NO_INTERNAL_LOOKUP | SSL_SESS_CACHE_NO_INTERNAL_STORE

SSL_MODE_RELEASE_BUFFERS = 0x00000010
SSL_OP_NO_TICKET = 0x00004000
SSL_SENT_SHUTDOWN = 1
CRYPTO_EX_INDEX_SSL = 0
SSL_MAX_SID_CTX_LENGTH = 32
SSL_MAX_SSL_SESSION_ID_LENGTH = 32
TLS1_2_VERSION = 0x0303
TLS1_3_VERSION = 0x0304

OSSL_PARAM_UTF8_STRING = 4
OSSL_PARAM_OCTET_STRING = 5
OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value

MIN_OPENSSL = 0x10101000  # 1.1.1

# --- callback prototypes --------------------------------------------------------------------------
#: int new_session_cb(SSL *ssl, SSL_SESSION *sess)
NEW_SESSION_CB = CFUNCTYPE(c_int, c_void_p, c_void_p)
#: SSL_SESSION *get_session_cb(SSL *ssl, const unsigned char *id, int len, int *copy)
GET_SESSION_CB = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_int, POINTER(c_int))
#: void remove_session_cb(SSL_CTX *ctx, SSL_SESSION *sess)
REMOVE_SESSION_CB = CFUNCTYPE(None, c_void_p, c_void_p)
#: void free_func(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
EX_FREE_CB = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p, c_int, c_long, c_void_p)
#: int client_hello_cb(SSL *s, int *alert, void *arg)
CLIENT_HELLO_CB = CFUNCTYPE(c_int, c_void_p, POINTER(c_int), c_void_p)
SSL_CLIENT_HELLO_SUCCESS = 1
SSL_CLIENT_HELLO_ERROR = 0
TLSEXT_TYPE_SERVER_NAME = 0
SSL_AD_INTERNAL_ERROR = 80
#: int ticket_key_cb(SSL *s, unsigned char name[16], unsigned char *iv,
#:                   EVP_CIPHER_CTX *cctx, EVP_MAC_CTX or HMAC_CTX *hctx, int enc)
TICKET_KEY_CB = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int)


class OSSL_PARAM(Structure):  # noqa: N801 - OpenSSL's name
    _fields_ = [
        ("key", c_char_p),
        ("data_type", c_uint),
        ("data", c_void_p),
        ("data_size", c_size_t),
        ("return_size", c_size_t),
    ]


class NativeTLSUnavailable(StartupError):
    """The running Python's libssl cannot be driven safely (not found, wrong copy, bad layout)."""


class Pins:
    """Objects whose addresses OpenSSL holds (ctypes thunks, the buffers they read), kept alive
    for as long as their owner lives. The owner clears OpenSSL's references before it drops
    its pins (:func:`clear_callbacks`)."""

    __slots__ = ("_objs", "__weakref__")

    def __init__(self) -> None:
        self._objs: list[object] = []
        _all_pins.add(self)

    def add(self, *objs: object) -> None:
        self._objs.extend(objs)

    def clear(self) -> None:
        self._objs.clear()

    def __len__(self) -> int:
        return len(self._objs)


_all_pins: weakref.WeakSet[Pins] = weakref.WeakSet()
#: thunks made once per process, at import (a constant number of them)
PROCESS = Pins()


def pinned() -> int:
    """How many objects all live :class:`Pins` hold (the release test watches it)."""
    return sum(len(p) for p in list(_all_pins))


@dataclass
class Native:
    """The resolved library: ``ssl`` and ``crypto`` are ctypes handles with prototypes set."""

    ssl: ctypes.CDLL
    path: str | None
    version_num: int
    version_text: str
    ticket_api: str  # "evp" (OpenSSL 3) or "hmac" (1.1.1)
    methods: frozenset[int]
    aes_128_cbc: int
    aes_256_cbc: int
    sha256: int


_native: Native | None = None
_native_error: str | None = None
_load_lock = threading.Lock()


def _mapped_libssl_paths() -> list[str]:
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    base = os.path.basename(path)
                    if base.startswith("libssl") and ".so" in base and path not in paths:
                        paths.append(path)
    except OSError:
        pass
    return paths


def _declare(lib: ctypes.CDLL, name: str, restype, argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes


def _bind(lib: ctypes.CDLL) -> str:
    """Set prototypes; returns the ticket callback flavour. Raises AttributeError if a symbol is missing."""
    v = c_void_p
    _declare(lib, "OpenSSL_version_num", c_ulong, [])
    _declare(lib, "OpenSSL_version", c_char_p, [c_int])
    for m in ("TLS_method", "TLS_server_method", "TLS_client_method"):
        _declare(lib, m, v, [])
    _declare(lib, "SSL_CTX_get_ssl_method", v, [v])
    _declare(lib, "SSL_CTX_get_options", c_uint64, [v])
    _declare(lib, "SSL_CTX_get_verify_mode", c_int, [v])
    _declare(lib, "SSL_CTX_ctrl", c_long, [v, c_int, c_long, v])
    _declare(lib, "SSL_CTX_callback_ctrl", c_long, [v, c_int, v])
    _declare(lib, "SSL_CTX_set_timeout", c_long, [v, c_long])
    _declare(lib, "SSL_CTX_get_timeout", c_long, [v])
    _declare(lib, "SSL_CTX_set_session_id_context", c_int, [v, c_char_p, c_uint])
    _declare(lib, "SSL_set_session_id_context", c_int, [v, c_char_p, c_uint])
    _declare(lib, "SSL_CTX_set_client_hello_cb", None, [v, v, v])
    _declare(lib, "SSL_client_hello_get0_ext", c_int, [v, c_uint, POINTER(c_void_p),
                                                       POINTER(c_size_t)])
    _declare(lib, "SSL_set_SSL_CTX", v, [v, v])
    _declare(lib, "SSL_CTX_sess_set_new_cb", None, [v, v])
    _declare(lib, "SSL_CTX_sess_set_get_cb", None, [v, v])
    _declare(lib, "SSL_CTX_sess_set_remove_cb", None, [v, v])
    _declare(lib, "SSL_CTX_set_num_tickets", c_int, [v, c_size_t])
    _declare(lib, "SSL_CTX_get_num_tickets", c_size_t, [v])
    _declare(lib, "SSL_CTX_flush_sessions", None, [v, c_long])
    _declare(lib, "i2d_SSL_SESSION", c_int, [v, POINTER(c_void_p)])
    _declare(lib, "d2i_SSL_SESSION", v, [v, POINTER(c_void_p), c_long])
    _declare(lib, "SSL_SESSION_get_id", v, [v, POINTER(c_uint)])
    _declare(lib, "SSL_SESSION_get_time", c_long, [v])
    _declare(lib, "SSL_SESSION_get_timeout", c_long, [v])
    _declare(lib, "SSL_SESSION_get_protocol_version", c_int, [v])
    _declare(lib, "SSL_SESSION_free", None, [v])
    _declare(lib, "SSL_SESSION_new", v, [])
    _declare(lib, "SSL_SESSION_set1_id", c_int, [v, c_char_p, c_uint])
    _declare(lib, "SSL_CTX_add_session", c_int, [v, v])
    _declare(lib, "SSL_get_options", c_uint64, [v])
    _declare(lib, "SSL_get_SSL_CTX", v, [v])
    _declare(lib, "SSL_get_shutdown", c_int, [v])
    _declare(lib, "SSL_set_shutdown", None, [v, c_int])
    _declare(lib, "CRYPTO_get_ex_new_index", c_int, [c_int, c_long, v, v, v, v])
    _declare(lib, "CRYPTO_free_ex_index", c_int, [c_int, c_int])
    _declare(lib, "SSL_version", c_int, [v])
    _declare(lib, "ERR_clear_error", None, [])
    _declare(lib, "SSL_ctrl", c_long, [v, c_int, c_long, v])
    # verification, client CA names, ALPN (tlsgw.tls.context)
    _declare(lib, "SSL_CTX_set_verify_depth", None, [v, c_int])
    _declare(lib, "SSL_CTX_set_verify", None, [v, c_int, v])
    _declare(lib, "SSL_get_verify_result", c_long, [v])
    _declare(lib, "X509_verify_cert_error_string", c_char_p, [c_long])
    _declare(lib, "X509_STORE_CTX_get_error", c_int, [v])
    _declare(lib, "SSL_CTX_get_cert_store", v, [v])
    _declare(lib, "X509_STORE_set_flags", c_int, [v, c_ulong])
    _declare(lib, "SSL_load_client_CA_file", v, [c_char_p])
    _declare(lib, "SSL_CTX_set_client_CA_list", None, [v, v])
    _declare(lib, "SSL_CTX_set_alpn_select_cb", None, [v, v, v])
    _declare(lib, "SSL_select_next_proto", c_int, [POINTER(v), POINTER(ctypes.c_ubyte), v, c_uint,
                                                   v, c_uint])
    # what an SNI choice copies onto a connection (tlsgw.tls.sni)
    _declare(lib, "SSL_set_verify", None, [v, c_int, v])
    _declare(lib, "SSL_CTX_get_verify_callback", v, [v])
    _declare(lib, "SSL_CTX_get_verify_depth", c_int, [v])
    _declare(lib, "SSL_set_verify_depth", None, [v, c_int])
    _declare(lib, "SSL_set_options", c_uint64, [v, c_uint64])
    _declare(lib, "SSL_clear_options", c_uint64, [v, c_uint64])
    # libcrypto, resolved through libssl's own dependency chain
    _declare(lib, "EVP_aes_128_cbc", v, [])
    _declare(lib, "EVP_aes_256_cbc", v, [])
    _declare(lib, "EVP_sha256", v, [])
    _declare(lib, "EVP_EncryptInit_ex", c_int, [v, v, v, c_char_p, v])
    _declare(lib, "EVP_DecryptInit_ex", c_int, [v, v, v, c_char_p, v])
    flavour = "hmac"
    try:
        _declare(lib, "SSL_CTX_set_tlsext_ticket_key_evp_cb", c_int, [v, v])
        _declare(lib, "EVP_MAC_CTX_set_params", c_int, [v, v])
        flavour = "evp"
    except AttributeError:
        pass
    try:  # deprecated in 3.0 but present; the only HMAC API on 1.1.1
        _declare(lib, "HMAC_Init_ex", c_int, [v, c_char_p, c_int, v, v])
    except AttributeError:
        if flavour == "hmac":
            raise
    return flavour


def _try_candidate(path: str | None) -> Native:
    if path is None:
        lib = ctypes.CDLL(None)
    else:
        # RTLD_NOLOAD: only ever attach to the copy that is already mapped (the one _ssl uses).
        lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_NOLOAD)
    flavour = _bind(lib)
    num = int(lib.OpenSSL_version_num())
    text = (lib.OpenSSL_version(0) or b"").decode("ascii", "replace")
    if num != ssl.OPENSSL_VERSION_NUMBER:
        raise NativeTLSUnavailable(
            f"{path}: version {text} differs from the ssl module's {ssl.OPENSSL_VERSION}"
        )
    if num < MIN_OPENSSL:
        raise NativeTLSUnavailable(f"OpenSSL 1.1.1 or newer is required, running {text}")
    methods = frozenset(
        int(getattr(lib, m)() or 0) for m in ("TLS_method", "TLS_server_method", "TLS_client_method")
    )
    native = Native(
        ssl=lib,
        path=path,
        version_num=num,
        version_text=text,
        ticket_api=flavour,
        methods=methods,
        aes_128_cbc=int(lib.EVP_aes_128_cbc()),
        aes_256_cbc=int(lib.EVP_aes_256_cbc()),
        sha256=int(lib.EVP_sha256()),
    )
    # Identity proof: a brand-new server context must carry *this* library's TLS_server_method().
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    raw = _read_ctx_word(probe)
    if int(lib.SSL_CTX_get_ssl_method(raw) or 0) != int(lib.TLS_server_method()):
        raise NativeTLSUnavailable(f"{path}: is not the libssl copy used by the ssl module")
    _check_ctx(native, probe, raw)
    return native


def load() -> Native:
    """Find, verify and bind libssl once per process; raises :class:`NativeTLSUnavailable`."""
    global _native, _native_error
    if _native is not None:
        return _native
    with _load_lock:
        if _native is not None:
            return _native
        if _native_error is not None:
            raise NativeTLSUnavailable(_native_error)
        problems: list[str] = []
        candidates: list[str | None] = [*_mapped_libssl_paths(), None]
        for path in candidates:
            try:
                _native = _try_candidate(path)
                return _native
            except (OSError, AttributeError, NativeTLSUnavailable) as exc:
                problems.append(f"{path or '<main program>'}: {exc}")
        _native_error = "libssl used by Python's ssl module not usable: " + "; ".join(problems)
        raise NativeTLSUnavailable(_native_error)


# --- SSL_CTX * extraction --------------------------------------------------------------------------
_HEAD = object.__basicsize__  # sizeof(PyObject_HEAD); PySSLContext.ctx follows it


def _probe_readable(addr: int, size: int) -> None:
    """Raise unless [addr, addr+size) is mapped readable; never dereferences the address."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return  # no procfs: rely on the method/options checks alone
    try:
        data = os.pread(fd, size, addr)
    except OSError as exc:
        raise NativeTLSUnavailable(f"SSL_CTX pointer 0x{addr:x} is not readable ({exc})") from None
    finally:
        os.close(fd)
    if len(data) != size:
        raise NativeTLSUnavailable(f"SSL_CTX pointer 0x{addr:x} is not readable")


def _read_ctx_word(ctx: ssl.SSLContext) -> int:
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"expected ssl.SSLContext, got {type(ctx).__name__}")
    if type(ctx).__basicsize__ < _HEAD + ctypes.sizeof(c_void_p):
        raise NativeTLSUnavailable("unexpected ssl.SSLContext object layout")
    raw = c_void_p.from_address(id(ctx) + _HEAD).value
    if not raw or raw % ctypes.alignment(c_void_p):
        raise NativeTLSUnavailable("ssl.SSLContext does not hold an SSL_CTX pointer where expected")
    _probe_readable(raw, 256)
    return raw


def _check_ctx(native: Native, ctx: ssl.SSLContext, raw: int) -> None:
    lib = native.ssl
    if int(lib.SSL_CTX_get_ssl_method(raw) or 0) not in native.methods:
        raise NativeTLSUnavailable("SSL_CTX layout check failed (method)")
    if int(lib.SSL_CTX_get_options(raw)) != int(ctx.options):
        raise NativeTLSUnavailable("SSL_CTX layout check failed (options)")
    # SSL_VERIFY_NONE/PEER/PEER|FAIL_IF_NO_PEER_CERT <-> CERT_NONE/OPTIONAL/REQUIRED
    py_mode = {0: 0, 1: 1, 3: 2}.get(int(lib.SSL_CTX_get_verify_mode(raw)) & 0x3)
    if py_mode != int(ctx.verify_mode):
        raise NativeTLSUnavailable("SSL_CTX layout check failed (verify mode)")


def ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The verified ``SSL_CTX *`` of *ctx* (an int). Raises :class:`NativeTLSUnavailable`."""
    native = load()
    raw = _read_ctx_word(ctx)
    _check_ctx(native, ctx, raw)
    return raw


# --- thin wrappers ---------------------------------------------------------------------------------
def set_timeout(raw: int, seconds: int) -> None:
    load().ssl.SSL_CTX_set_timeout(raw, seconds)


def get_timeout(raw: int) -> int:
    return int(load().ssl.SSL_CTX_get_timeout(raw))


def set_cache_mode(raw: int, mode: int) -> None:
    load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)


def get_cache_mode(raw: int) -> int:
    return int(load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_GET_SESS_CACHE_MODE, 0, None))


def set_cache_size(raw: int, size: int) -> None:
    load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)


def get_cache_size(raw: int) -> int:
    return int(load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None))


def cached_sessions(raw: int) -> int:
    """Number of sessions in the OpenSSL internal (builtin) cache."""
    return int(load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_SESS_NUMBER, 0, None))


def get_mode(raw: int) -> int:
    return int(load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_MODE, 0, None))


def set_mode(raw: int, bits: int, on: bool) -> None:
    load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_MODE if on else SSL_CTRL_CLEAR_MODE, bits, None)


_cache_slack: int | None = None


def builtin_cache_slack() -> int:
    """How many sessions fewer than its configured size OpenSSL's internal cache holds.

    OpenSSL 3.0.x (since the 2022 change that frees room *before* adding a session) evicts while
    ``count >= size`` after the new session is already counted, so a cache of size N keeps N-1
    sessions. Measured once, without any handshake, by adding three sessions to a scratch
    context whose cache size is 2; callers add the result to the size they set so that
    ``builtin:N`` holds N sessions.
    """
    global _cache_slack
    if _cache_slack is None:
        lib = load().ssl
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        raw = ctx_pointer(probe)
        set_cache_size(raw, 2)
        for i in range(3):
            sess = lib.SSL_SESSION_new()
            if not sess:
                raise NativeTLSUnavailable("SSL_SESSION_new failed")
            try:
                lib.SSL_SESSION_set1_id(sess, bytes([i + 1]) * 32, 32)
                lib.SSL_CTX_add_session(raw, sess)
            finally:
                lib.SSL_SESSION_free(sess)  # the cache holds its own reference
        _cache_slack = max(0, 2 - cached_sessions(raw))
        del probe
    return _cache_slack


def set_session_id_context(raw: int, sid_ctx: bytes) -> None:
    if not 0 < len(sid_ctx) <= SSL_MAX_SID_CTX_LENGTH:
        raise ValueError(f"session id context must be 1..{SSL_MAX_SID_CTX_LENGTH} bytes")
    if load().ssl.SSL_CTX_set_session_id_context(raw, sid_ctx, len(sid_ctx)) != 1:
        load().ssl.ERR_clear_error()
        raise NativeTLSUnavailable("SSL_CTX_set_session_id_context failed")


def set_client_hello_cb(raw: int, cb) -> None:
    """Install (or, with ``None``, clear) the ClientHello callback of a context."""
    load().ssl.SSL_CTX_set_client_hello_cb(raw, _fp(cb), None)


def client_hello_ext(ssl_ptr: int, ext_type: int) -> bytes | None:
    """The body of one extension of the ClientHello being processed (inside the ClientHello
    callback only), or ``None`` if the client did not send it."""
    data, size = c_void_p(), c_size_t()
    if load().ssl.SSL_client_hello_get0_ext(ssl_ptr, ext_type, ctypes.byref(data),
                                            ctypes.byref(size)) != 1:
        return None
    return ctypes.string_at(data.value, size.value) if data.value else b""


def _fp(cb: object | None) -> int | None:
    return None if cb is None else ctypes.cast(cb, c_void_p).value


def set_session_callbacks(raw: int, new_cb, get_cb, remove_cb) -> None:
    """Install (or, with ``None``, clear) the external session cache callbacks."""
    lib = load().ssl
    lib.SSL_CTX_sess_set_new_cb(raw, _fp(new_cb))
    lib.SSL_CTX_sess_set_get_cb(raw, _fp(get_cb))
    lib.SSL_CTX_sess_set_remove_cb(raw, _fp(remove_cb))


def set_ticket_key_cb(raw: int, cb) -> None:
    """Install (or clear) the ticket key callback in the flavour this OpenSSL uses."""
    native = load()
    if native.ticket_api == "evp":
        ok = native.ssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(raw, _fp(cb))
    else:
        ok = native.ssl.SSL_CTX_callback_ctrl(raw, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, _fp(cb))
    if not ok:
        raise NativeTLSUnavailable("could not install the session ticket key callback")


SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


def set_ticket_keys(raw: int, keys: bytes) -> None:
    """OpenSSL's built-in ticket key: name(16) | HMAC key(32) | AES-256 key(32), nginx's layout."""
    if len(keys) != 80:
        raise ValueError("ticket keys must be 80 bytes")
    buf = ctypes.create_string_buffer(keys, 80)
    if load().ssl.SSL_CTX_ctrl(raw, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80, buf) != 1:
        raise NativeTLSUnavailable("SSL_CTX_set_tlsext_ticket_keys failed")


def set_num_tickets(raw: int, n: int) -> None:
    if load().ssl.SSL_CTX_set_num_tickets(raw, n) != 1:
        raise NativeTLSUnavailable("SSL_CTX_set_num_tickets failed")


def get_num_tickets(raw: int) -> int:
    return int(load().ssl.SSL_CTX_get_num_tickets(raw))


def session_to_der(sess: int) -> bytes:
    lib = load().ssl
    n = lib.i2d_SSL_SESSION(sess, None)
    if n <= 0:
        return b""
    buf = ctypes.create_string_buffer(n)
    p = c_void_p(ctypes.addressof(buf))
    if lib.i2d_SSL_SESSION(sess, ctypes.byref(p)) != n:
        return b""
    return buf.raw


def session_from_der(der: bytes) -> int | None:
    """A new ``SSL_SESSION *`` (reference owned by the caller) or ``None``."""
    lib = load().ssl
    buf = ctypes.create_string_buffer(der, len(der))
    p = c_void_p(ctypes.addressof(buf))
    sess = lib.d2i_SSL_SESSION(None, ctypes.byref(p), len(der))
    if not sess:
        lib.ERR_clear_error()
        return None
    return int(sess)


def session_free(sess: int) -> None:
    load().ssl.SSL_SESSION_free(sess)


def session_id(sess: int) -> bytes:
    n = c_uint(0)
    p = load().ssl.SSL_SESSION_get_id(sess, ctypes.byref(n))
    return ctypes.string_at(p, n.value) if p and n.value else b""


def session_expiry(sess: int) -> int:
    """Absolute expiry time (Unix seconds) of a session: its creation time plus its timeout."""
    lib = load().ssl
    return int(lib.SSL_SESSION_get_time(sess)) + int(lib.SSL_SESSION_get_timeout(sess))


def session_protocol(sess: int) -> int:
    return int(load().ssl.SSL_SESSION_get_protocol_version(sess))


def ssl_tickets_enabled(ssl_ptr: int) -> bool:
    return not (int(load().ssl.SSL_get_options(ssl_ptr)) & SSL_OP_NO_TICKET)


def ssl_version(ssl_ptr: int) -> int:
    return int(load().ssl.SSL_version(ssl_ptr))


def cipher_init(cctx: int, cipher: int, key: bytes, iv: int, encrypt: bool) -> bool:
    lib = load().ssl
    fn = lib.EVP_EncryptInit_ex if encrypt else lib.EVP_DecryptInit_ex
    return fn(cctx, cipher, None, key, iv) == 1


class MacParams:
    """A prebuilt ``OSSL_PARAM[]`` setting an HMAC-SHA256 key (kept alive by its owner)."""

    def __init__(self, hmac_key: bytes):
        self._key = ctypes.create_string_buffer(hmac_key, len(hmac_key))
        self._digest = ctypes.create_string_buffer(b"SHA256")
        arr = (OSSL_PARAM * 3)()
        arr[0] = OSSL_PARAM(b"key", OSSL_PARAM_OCTET_STRING, ctypes.addressof(self._key),
                            len(hmac_key), OSSL_PARAM_UNMODIFIED)
        arr[1] = OSSL_PARAM(b"digest", OSSL_PARAM_UTF8_STRING, ctypes.addressof(self._digest),
                            6, OSSL_PARAM_UNMODIFIED)
        arr[2] = OSSL_PARAM(None, 0, None, 0, 0)
        self.array = arr
        self.hmac_key = hmac_key


def mac_init(hctx: int, params: MacParams) -> bool:
    native = load()
    if native.ticket_api == "evp":
        return native.ssl.EVP_MAC_CTX_set_params(hctx, ctypes.addressof(params.array)) == 1
    return native.ssl.HMAC_Init_ex(
        hctx, params.hmac_key, len(params.hmac_key), native.sha256, None
    ) == 1


def clear_callbacks(raw: int) -> None:
    """Take back from a server context every callback address tlsgw gave it (session cache,
    ticket keys, ClientHello, ALPN), so that the thunks' owner can drop them."""
    lib = load().ssl
    set_session_callbacks(raw, None, None, None)
    set_ticket_key_cb(raw, None)
    lib.SSL_CTX_set_client_hello_cb(raw, None, None)
    lib.SSL_CTX_set_alpn_select_cb(raw, None, None)


# --- keeping sessions of connections that end without close_notify ----------------------------
_keep_ctxs: set[int] = set()
_ex_index: int | None = None
_ex_lock = threading.Lock()


def _on_ssl_free(parent, _ptr, _ad, _idx, _argl, _argp) -> None:
    # Runs inside SSL_free() for every SSL object of this libssl, *before* OpenSSL's
    # ssl_clear_bad_session(), which drops the session from the cache unless close_notify was
    # sent. Marking it sent (as nginx's ngx_ssl_shutdown does for every connection) keeps the
    # session of a client that just closed its TCP connection.
    try:
        if parent and _native is not None:
            lib = _native.ssl
            if lib.SSL_get_SSL_CTX(parent) in _keep_ctxs:
                lib.SSL_set_shutdown(parent, lib.SSL_get_shutdown(parent) | SSL_SENT_SHUTDOWN)
    except BaseException:  # never unwind into OpenSSL
        pass


_EX_FREE = EX_FREE_CB(_on_ssl_free)
PROCESS.add(_EX_FREE)


def _unregister_ex_index() -> None:
    global _ex_index
    with _ex_lock:
        if _ex_index is not None and _native is not None:
            _native.ssl.CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL, _ex_index)
            _ex_index = None


def keep_sessions_on_abrupt_close(ctx: ssl.SSLContext, raw: int) -> None:
    """Make connections of *ctx* keep their session when they end without a close_notify.

    OpenSSL removes the session of an ``SSL`` freed before it sent close_notify; nginx avoids that
    by setting ``SSL_SENT_SHUTDOWN`` before every ``SSL_free``. uvloop frees the ``SSL`` when
    the peer just closes TCP, so without this hook a client that closes abruptly (most do) loses
    its cached session. The hook is an ``SSL`` ex_data free callback (called early in
    ``SSL_free``), limited to the contexts registered here.
    """
    global _ex_index
    lib = load().ssl
    with _ex_lock:
        if _ex_index is None:
            idx = lib.CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, None, None, None,
                                              ctypes.cast(_EX_FREE, c_void_p).value)
            if idx < 0:
                raise NativeTLSUnavailable("CRYPTO_get_ex_new_index failed")
            _ex_index = idx
            atexit.register(_unregister_ex_index)
        if raw not in _keep_ctxs:
            _keep_ctxs.add(raw)
            weakref.finalize(ctx, _context_closing, raw)


def _context_closing(raw: int) -> None:
    # weakref callbacks run before the context's SSL_CTX_free(), which flushes the builtin
    # cache through the remove callback: that must neither empty a cache other workers share
    # nor reach a thunk whose owner may be gone by then
    _keep_ctxs.discard(raw)
    if _native is not None:
        _native.ssl.SSL_CTX_sess_set_remove_cb(raw, None)
