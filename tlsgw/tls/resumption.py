"""nginx's TLS session directives on top of a stdlib :class:`ssl.SSLContext`.

Directives covered (nginx ``stream`` semantics, see the semantics doc §9 and §6):

* ``ssl_session_timeout`` (default 5m) – ``SSL_CTX_set_timeout``: the lifetime of every new session,
  whether it is resumed by session ID or by ticket (TLS 1.2 and 1.3). OpenSSL counts whole seconds.
* ``ssl_session_cache off | none | builtin[:N] | shared:NAME:SIZE`` (default ``none``):

  ===================  ==========================================================================
  ``off``              ``SSL_SESS_CACHE_OFF``: clients are told sessions cannot be reused.
  ``none``             ``SERVER | NO_AUTO_CLEAR | NO_INTERNAL_STORE``, size 1: clients are told
                       sessions may be reused, nothing is stored (tickets still resume).
  ``builtin[:N]``      OpenSSL's per-process cache, N sessions (default 20480; 0 = unbounded).
  ``shared:NAME:SIZE`` a cache in ``MAP_SHARED`` memory created by the master before it forks,
                       reached through ``SSL_CTX_sess_set_new_cb/get_cb/remove_cb``; the builtin
                       cache is disabled unless ``builtin`` is also given.
  ===================  ==========================================================================

* ``ssl_session_tickets on|off`` (default on) – ``SSL_OP_NO_TICKET``. With tickets off, TLS 1.3
  resumption uses OpenSSL's *stateful* tickets, which live in the session cache above.
* ``ssl_session_ticket_key FILE`` (repeatable) – 48-byte (AES-128-CBC) or 80-byte (AES-256-CBC)
  files laid out as nginx does; the first key encrypts, every key decrypts (matched by its 16-byte
  name), a ticket decrypted by a non-first key is renewed, TLS 1.3 tickets are always renewed.

Theory of operation
-------------------
Two phases, because workers are created with ``os.fork()``:

1. **Master, before fork:** :func:`prepare_in_master` takes every server's
   :class:`SessionSettings` and returns a :class:`SessionRuntime`. It

   * checks that the native binding works (:mod:`tlsgw.tls.native`), so a Python whose libssl
     cannot be driven fails at startup, naming the directives;
   * creates (or, through the ``zone`` argument, takes from the zone registry of
     :mod:`tlsgw.runtime.zones`, which keeps it across generations) one
     :class:`SharedSessionStore` per ``shared`` NAME (servers using the same NAME share it;
     different sizes for one NAME are an error, as in nginx) – anonymous ``MAP_SHARED`` memory
     plus a process-shared semaphore, both inherited by forked children;
   * reads and validates ``ssl_session_ticket_key`` files;
   * generates one random 80-byte ticket key for servers without key files. Because it is made
     before the fork, every worker encrypts and decrypts tickets with the same key and a ticket
     issued by one worker resumes on any other (OpenSSL's own keys are per process). The key
     is the process's (:func:`generated_ticket_key`): every generation uses the same one.

2. **Master or worker:** :func:`apply` configures one ``ssl.SSLContext`` (timeout, session-id
   context, cache mode and size, cache callbacks, ticket option and ticket-key callback,
   ``num_tickets``, ``SSL_MODE_RELEASE_BUFFERS``). It may run before the fork (the context and the
   callbacks are inherited) or in each worker after it; both give the same result.

Typical master code (:mod:`tlsgw.runtime.generation` does this for a whole configuration)::

    runtime = resumption.prepare_in_master([srv.session for srv in servers])
    for srv in servers:
        ctx = build_ssl_context(srv)                      # certificates, ciphers, ...
        resumption.apply(ctx, srv.session, runtime,
                         resumption.session_id_context_from_files(srv.certificates))
    for _ in range(workers):
        if os.fork() == 0:
            run_worker(...)                               # loop.create_server(..., ssl=ctx)

:func:`apply` makes each context hold the ticket key ring and the store its callbacks use, so
they live as long as the context does; a generation that takes its callbacks back
(:func:`tlsgw.tls.native.clear_callbacks`) drops its rings' thunks at once
(:meth:`TicketKeyRing.close`).

The shared store
----------------
A fixed-size region: a header, a bucket array (``uint32`` offsets, about one bucket per 256
bytes of cache) and a data area used as a ring of variable-length records (64-byte record header
plus the DER of the session). New sessions are appended at the head; when space runs out the
oldest records at the tail are dropped. Records are appended in time order and share a timeout per
server, so dropping from the tail drops expired sessions first and then the oldest ones, the
order nginx uses. Lookups hash the session ID to a bucket and follow a chain through the records;
removals unlink a record and leave its bytes to be reclaimed when the tail passes. Sessions whose
DER exceeds 8192 bytes or whose ID exceeds 32 bytes are not stored (as in nginx); TLS 1.3 sessions
are not stored while tickets are on (nginx 1.23.2+), because the ticket carries them. Capacity is
about 3,500–4,000 TLS 1.2 sessions per MB, close to nginx's documented 4,000.

Every operation runs under the semaphore with a short timeout. If the holder died (its pid is
recorded in the header) the lock is taken over and the store is wiped (it may be half written);
if a live process holds it too long, the operation is skipped (a miss, never a stall). Every walk
is bounded, and any inconsistency found wipes the store: it is only a cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tlsgw.config import schema, units
from tlsgw.config.schema import SessionCacheSpec
from tlsgw.errors import ConfigError, StartupError
from tlsgw.tls import hello, native
from tlsgw.tls.shared_cache import MIN_SHARED_SIZE, SharedSessionStore

log = logging.getLogger("tlsgw.error")

__all__ = [
    "DEFAULT_BUILTIN_SIZE",
    "SessionRuntime",
    "SessionSettings",
    "SharedSessionStore",
    "TicketKey",
    "apply",
    "load_ticket_key_file",
    "parse_session_cache",
    "parse_size",
    "prepare_in_master",
    "session_id_context",
    "session_id_context_from_files",
]

#: OpenSSL's default internal cache size (SSL_SESSION_CACHE_MAX_SIZE_DEFAULT), used by ``builtin``.
DEFAULT_BUILTIN_SIZE = 1024 * 20
CACHE_MODES = ("off", "none", "builtin", "shared", "builtin+shared")


# ---------------------------------------------------------------------------------------------
# Settings and nginx syntax
# ---------------------------------------------------------------------------------------------
def parse_size(text: str) -> int | None:
    """nginx ``size`` syntax: ``1024``, ``64k``, ``10m``, ``1g``; ``None`` if invalid."""
    try:
        return units.parse_size(text)
    except units.UnitError:
        return None


def parse_session_cache(value: str | Sequence[str]) -> SessionCacheSpec:
    """``ssl_session_cache`` arguments, parsed by the schema's parser (nginx's rules and bounds).

    Raises:
        ConfigError: with nginx's wording (``invalid session cache "…"``,
            ``session cache "…" is too small``).
    """
    try:
        return schema.parse_session_cache(value)
    except units.UnitError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class SessionSettings:
    """Session-related settings of one server (one ``SSLContext``); defaults are nginx's."""

    cache: str = "none"
    """``off`` | ``none`` | ``builtin`` | ``shared`` | ``builtin+shared``."""
    builtin_size: int | None = None
    """Sessions in the builtin cache; ``None`` = OpenSSL's default 20480, 0 = no limit."""
    shared_name: str | None = None
    shared_size: int | None = None
    """Bytes of the shared cache (at least 8 pages)."""
    timeout: float = 300.0
    """``ssl_session_timeout`` in seconds (OpenSSL keeps whole seconds; at least 1)."""
    tickets: bool = True
    ticket_key_files: tuple[str, ...] = ()
    num_tickets: int | None = None
    """TLS 1.3 tickets sent after a full handshake (``SSL_CTX_set_num_tickets``); None = OpenSSL's 2."""
    release_buffers: bool = False
    """``SSL_MODE_RELEASE_BUFFERS``: free a connection's record buffers while it is idle."""

    def __post_init__(self) -> None:
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"invalid session cache mode {self.cache!r}")
        if "shared" in self.cache:
            if not self.shared_name or self.shared_size is None:
                raise ConfigError("a shared session cache needs a name and a size")
            if self.shared_size < MIN_SHARED_SIZE:
                raise ConfigError(f'session cache "shared:{self.shared_name}:{self.shared_size}" is too small')
        if self.builtin_size is not None and self.builtin_size < 0:
            raise ConfigError("builtin session cache size must not be negative")
        if not self.timeout >= 1:
            raise ConfigError("ssl_session_timeout must be at least 1s")
        if self.num_tickets is not None and self.num_tickets < 0:
            raise ConfigError("num_tickets must not be negative")
        object.__setattr__(self, "ticket_key_files", tuple(self.ticket_key_files))

    @classmethod
    def from_directives(
        cls,
        ssl_session_cache: str | Sequence[str] | SessionCacheSpec = "none",
        ssl_session_timeout: float = 300.0,
        ssl_session_tickets: bool = True,
        ssl_session_ticket_key: Sequence[str] = (),
        **extra: object,
    ) -> SessionSettings:
        """Build settings from nginx directive values (``extra``: num_tickets, release_buffers)."""
        spec = (ssl_session_cache if isinstance(ssl_session_cache, SessionCacheSpec)
                else parse_session_cache(ssl_session_cache))
        return cls(
            cache=spec.cache,
            builtin_size=spec.builtin_size,
            shared_name=spec.shared_name,
            shared_size=spec.shared_size,
            timeout=float(ssl_session_timeout),
            tickets=bool(ssl_session_tickets),
            ticket_key_files=tuple(ssl_session_ticket_key),
            **extra,  # type: ignore[arg-type]
        )

    @property
    def timeout_seconds(self) -> int:
        return max(1, round(self.timeout))

    def describe(self) -> str:
        """The directives as nginx would spell them (for error messages)."""
        if self.cache in ("off", "none"):
            cache = self.cache
        else:
            parts = []
            if "builtin" in self.cache:
                parts.append("builtin" if self.builtin_size is None else f"builtin:{self.builtin_size}")
            if "shared" in self.cache:
                parts.append(f"shared:{self.shared_name}:{self.shared_size}")
            cache = " ".join(parts)
        out = [f"ssl_session_cache {cache}", f"ssl_session_timeout {self.timeout_seconds}s",
               f"ssl_session_tickets {'on' if self.tickets else 'off'}"]
        out += [f"ssl_session_ticket_key {p}" for p in self.ticket_key_files]
        return "; ".join(out)


# ---------------------------------------------------------------------------------------------
# Session-id context
# ---------------------------------------------------------------------------------------------
def session_id_context(certificates: Iterable[bytes], client_ca_names: Iterable[bytes] = (),
                       verification: bytes = b"") -> bytes:
    """SHA-1 over ``"STREAM"``, each certificate's SHA-1, each client CA name's SHA-1 and, when
    client certificates are verified, the SHA-1 of the *verification* policy.

    Like nginx, sessions then never cross servers that serve different certificates or trust
    different client CAs, even when they share a ``shared`` cache or ticket keys. Unlike nginx,
    the whole verification policy counts (mode, depth, trusted certificates, CRL): nginx's CA
    names alone let a session made where no certificate was asked for resume on a server with
    the same certificate that requires one but sends no CA names (``ssl_trusted_certificate``).
    """
    h = hashlib.sha1(b"STREAM")
    for der in certificates:
        h.update(hashlib.sha1(der).digest())
    for name in client_ca_names:
        h.update(hashlib.sha1(name).digest())
    if verification:
        h.update(hashlib.sha1(verification).digest())
    return h.digest()


_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def session_id_context_from_files(cert_files: Iterable[str], client_ca_file: str | None = None,
                                  verification: bytes = b"") -> bytes:
    """:func:`session_id_context` from PEM files (the leaf of each ``ssl_certificate`` file, and
    every certificate of ``ssl_client_certificate`` standing for the CA names)."""
    leaves = []
    for path in cert_files:
        with open(path, "rb") as fh:
            blocks = _PEM_CERT_RE.findall(fh.read())
        if blocks:
            leaves.append(ssl.PEM_cert_to_DER_cert(blocks[0].decode("ascii")))
    cas = []
    if client_ca_file:
        with open(client_ca_file, "rb") as fh:
            cas = [ssl.PEM_cert_to_DER_cert(b.decode("ascii")) for b in _PEM_CERT_RE.findall(fh.read())]
    return session_id_context(leaves, cas, verification)


# ---------------------------------------------------------------------------------------------
# Ticket keys
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TicketKey:
    """One ticket key in nginx's layout (48 bytes: AES-128; 80 bytes: AES-256)."""

    name: bytes
    aes_key: bytes
    hmac_key: bytes
    source: str = "<generated>"

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<generated>") -> TicketKey:
        if len(data) == 48:  # name | AES-128 key | 16-byte HMAC key
            return cls(data[0:16], data[16:32], data[32:48], source)
        if len(data) == 80:  # name | 32-byte HMAC key | AES-256 key
            return cls(data[0:16], data[48:80], data[16:48], source)
        raise ConfigError(f'"{source}" must be 48 or 80 bytes')

    @property
    def bits(self) -> int:
        return len(self.aes_key) * 8


def load_ticket_key_file(path: str) -> TicketKey:
    """Read and validate one ``ssl_session_ticket_key`` file (nginx's messages on failure)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(81)
    except OSError as exc:
        raise ConfigError(f'open() "{path}" failed ({exc.strerror or exc})') from None
    if len(data) not in (48, 80):
        raise ConfigError(f'"{path}" must be 48 or 80 bytes')
    return TicketKey.from_bytes(data, path)


class TicketKeyRing:
    """Keys for one server: ``keys[0]`` encrypts, all decrypt. Owns its OpenSSL callback."""

    def __init__(self, keys: Sequence[TicketKey]):
        if not keys:
            raise ValueError("a ticket key ring needs at least one key")
        self.keys = tuple(keys)
        self._by_name: dict[bytes, int] = {}
        for i, k in enumerate(self.keys):
            self._by_name.setdefault(k.name, i)
        self._cb = None
        self._native: list[tuple[int, native.MacParams]] = []
        self.pins = native.Pins()
        self.stats = {"encrypted": 0, "decrypted": 0, "renewed": 0, "unknown": 0, "errors": 0}

    def _prepare(self) -> None:
        n = native.load()
        self._native = [
            (n.aes_128_cbc if k.bits == 128 else n.aes_256_cbc, native.MacParams(k.hmac_key))
            for k in self.keys
        ]

    def callback(self):
        """The ``CFUNCTYPE`` thunk for this ring (created once, held until :meth:`close`)."""
        if self._cb is None:
            self._prepare()
            self._cb = native.TICKET_KEY_CB(self._ticket_key_cb)
            self.pins.add(self._cb, self._native)
        return self._cb

    def close(self) -> None:
        """Drop the thunk, once no context has it any more
        (:func:`tlsgw.tls.native.clear_callbacks`)."""
        self._cb = None
        self._native = []
        self.pins.clear()

    def _ticket_key_cb(self, ssl_ptr, name_ptr, iv_ptr, cctx, hctx, enc) -> int:
        try:
            if enc == 1:
                key = self.keys[0]
                cipher, mac = self._native[0]
                ctypes.memmove(name_ptr, key.name, 16)
                ctypes.memmove(iv_ptr, os.urandom(16), 16)
                if not native.cipher_init(cctx, cipher, key.aes_key, iv_ptr, True):
                    self.stats["errors"] += 1
                    return -1
                if not native.mac_init(hctx, mac):
                    self.stats["errors"] += 1
                    return -1
                self.stats["encrypted"] += 1
                return 1
            index = self._by_name.get(ctypes.string_at(name_ptr, 16))
            if index is None:
                self.stats["unknown"] += 1
                return 0  # unknown key: full handshake, new ticket
            key = self.keys[index]
            cipher, mac = self._native[index]
            if not native.mac_init(hctx, mac) or not native.cipher_init(
                cctx, cipher, key.aes_key, iv_ptr, False
            ):
                self.stats["errors"] += 1
                return -1
            self.stats["decrypted"] += 1
            if index != 0 or native.ssl_version(ssl_ptr) == native.TLS1_3_VERSION:
                self.stats["renewed"] += 1
                return 2  # resume, and issue a fresh ticket under the current key
            return 1
        except BaseException:  # never let an exception unwind into OpenSSL
            self.stats["errors"] += 1
            with contextlib.suppress(BaseException):
                log.exception("session ticket key callback failed")
            return -1


# ---------------------------------------------------------------------------------------------
# Runtime: what the master prepares before forking
# ---------------------------------------------------------------------------------------------
@dataclass
class SessionRuntime:
    """Process-shared state made by :func:`prepare_in_master` and used by :func:`apply`."""

    stores: dict[str, SharedSessionStore] = field(default_factory=dict)
    auto_keys: TicketKeyRing | None = None
    file_keys: dict[tuple[str, ...], TicketKeyRing] = field(default_factory=dict)
    master_pid: int = field(default_factory=os.getpid)
    validate_only: bool = False
    """Made for ``tlsgw check``: shared zones were validated, not allocated."""
    owns_stores: bool = True
    """False when the stores came from a zone registry, which unmaps them itself."""

    def close(self) -> None:
        """Unmap the stores this runtime made (only once no context using them will handshake
        again). The callbacks stay valid: each configured context holds the ring and the store
        its callbacks use (see :func:`apply`), and they go with it."""
        if self.owns_stores:
            for store in self.stores.values():
                store.close()
        self.stores.clear()

    def rings(self) -> list[TicketKeyRing]:
        return [r for r in (self.auto_keys, *self.file_keys.values()) if r is not None]


_DIRECTIVES = "ssl_session_cache/ssl_session_timeout/ssl_session_tickets"
_LONG_MAX = 2**63 - 1  # SSL_CTX_sess_set_cache_size takes a C long


def _require_native(settings: SessionSettings | None = None) -> native.Native:
    try:
        return native.load()
    except native.NativeTLSUnavailable as exc:
        what = settings.describe() if settings else _DIRECTIVES
        raise StartupError(f"{what}: cannot be honoured by this Python's ssl module: {exc}") from None


class SharedZoneError(StartupError):
    """The shared memory of one ``shared:NAME:SIZE`` cache could not be made."""

    def __init__(self, name: str, size: int, exc: OSError):
        code = exc.errno or 0
        super().__init__(f'cannot allocate {size} bytes of shared memory for session cache '
                         f'"shared:{name}" ({code}: {exc.strerror or exc})')
        self.zone = name


_generated: TicketKey | None = None


def generated_ticket_key() -> TicketKey:
    """The process's generated ticket key (servers without key files): made once, before the
    workers are forked (they inherit it), and kept across generations, so tickets issued before
    a reload still resume after it, in every worker."""
    global _generated
    if _generated is None:
        _generated = TicketKey.from_bytes(os.urandom(80))
    return _generated


def prepare_in_master(settings_list: Iterable[SessionSettings], allocate: bool = True,
                      zone: Callable[[str, int], SharedSessionStore] | None = None,
                      ) -> SessionRuntime:
    """Allocate shared caches, load ticket key files and generate default ticket keys.

    Call once per configuration load in the master, *before* forking workers. With
    ``allocate=False`` (``tlsgw check``) everything is validated but no shared memory is made:
    a check must not need the memory it checks. *zone* ``(name, size)`` gives the store of a
    shared cache (a generation passes its zone registry's, which keeps stores across
    generations); without it each store is made here and unmapped by
    :meth:`SessionRuntime.close`.

    Raises:
        SharedZoneError: the memory of a shared cache cannot be mapped.
        ConfigError: a key file is unreadable or not 48/80 bytes; one shared NAME with two sizes.
        StartupError: the running Python's libssl cannot be driven (the message names the settings).
    """
    settings_list = list(settings_list)
    runtime = SessionRuntime(owns_stores=zone is None)
    if not settings_list:
        return runtime
    _require_native(settings_list[0])
    sizes: dict[str, int] = {}
    for s in settings_list:
        if "shared" in s.cache:
            assert s.shared_name is not None and s.shared_size is not None
            prev = sizes.setdefault(s.shared_name, s.shared_size)
            if prev != s.shared_size:
                raise ConfigError(
                    f'the size {s.shared_size} of shared memory zone "{s.shared_name}" '
                    f"conflicts with already declared size {prev}"
                )
        if s.ticket_key_files and s.ticket_key_files not in runtime.file_keys:
            keys = [load_ticket_key_file(p) for p in s.ticket_key_files]
            runtime.file_keys[s.ticket_key_files] = TicketKeyRing(keys)
    runtime.validate_only = not allocate
    for name, size in sizes.items() if allocate else ():
        try:
            runtime.stores[name] = (zone or SharedSessionStore)(name, size)
        except OSError as exc:
            runtime.close()
            raise SharedZoneError(name, size, exc) from None
    runtime.auto_keys = TicketKeyRing([generated_ticket_key()])
    # create the callback thunks now so forked workers inherit them ready-made
    for ring in [runtime.auto_keys, *runtime.file_keys.values()]:
        ring.callback()
    for store in runtime.stores.values():
        store.callbacks()
    return runtime


def apply(ctx: ssl.SSLContext, settings: SessionSettings, runtime: SessionRuntime,
          id_context: bytes) -> None:
    """Configure *ctx* (a server-side ``ssl.SSLContext``) with *settings*.

    Safe in the master before fork (workers inherit the configured context) or in a worker after
    fork with the runtime the master prepared. Calling it again on the same context replaces the
    previous session settings.

    Args:
        id_context: the session-id context (1–32 bytes), normally from
            :func:`session_id_context_from_files`.

    Raises:
        StartupError: the settings cannot be honoured here (names the directives); also when a
            ``shared`` NAME or a key file set was not prepared by :func:`prepare_in_master`.
    """
    _require_native(settings)
    try:
        raw = native.ctx_pointer(ctx)
    except native.NativeTLSUnavailable as exc:
        raise StartupError(f"{settings.describe()}: cannot be honoured by this Python's ssl module: {exc}") from None
    store = None
    if "shared" in settings.cache:
        store = runtime.stores.get(settings.shared_name or "")
        if store is None and not runtime.validate_only:
            raise StartupError(f'shared session cache "{settings.shared_name}" was not prepared '
                               "in the master before fork")
    ring = None
    if settings.tickets:
        ring = runtime.file_keys.get(settings.ticket_key_files) if settings.ticket_key_files else runtime.auto_keys
        if ring is None:
            raise StartupError(f"{settings.describe()}: ticket keys were not prepared in the master")
    try:
        hello.set_id_context(ctx, raw, id_context)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    native.set_timeout(raw, settings.timeout_seconds)

    if settings.cache == "off":
        native.set_cache_mode(raw, native.SSL_SESS_CACHE_OFF)
    elif settings.cache == "none":
        native.set_cache_mode(raw, native.SSL_SESS_CACHE_SERVER | native.SSL_SESS_CACHE_NO_AUTO_CLEAR
                              | native.SSL_SESS_CACHE_NO_INTERNAL_STORE)
        native.set_cache_size(raw, 1)
    else:
        mode = native.SSL_SESS_CACHE_SERVER
        if settings.cache == "shared":
            mode |= native.SSL_SESS_CACHE_NO_INTERNAL
        native.set_cache_mode(raw, mode)
        if "builtin" in settings.cache:
            size = DEFAULT_BUILTIN_SIZE if settings.builtin_size is None else settings.builtin_size
            if size > 0:  # 0 = unbounded; otherwise make OpenSSL 3.0 really keep `size` sessions
                size = min(size + native.builtin_cache_slack(), _LONG_MAX)
            native.set_cache_size(raw, size)
    if store is not None:
        native.set_session_callbacks(raw, *store.callbacks())
    else:
        native.set_session_callbacks(raw, None, None, None)

    if settings.tickets:
        ctx.options &= ~ssl.OP_NO_TICKET
        assert ring is not None
        key = ring.keys[0]
        if ring is runtime.auto_keys and len(ring.keys) == 1 and key.bits == 256:
            # One generated key: OpenSSL's own ticket code does the same as the callback (AES-256-
            # CBC + HMAC-SHA256, the session timeout as ticket lifetime, renewal of TLS 1.3
            # tickets) without a Python call per ticket (~7 us per handshake).
            native.set_ticket_key_cb(raw, None)
            native.set_ticket_keys(raw, key.name + key.hmac_key + key.aes_key)
        else:
            native.set_ticket_key_cb(raw, ring.callback())
    else:
        ctx.options |= ssl.OP_NO_TICKET
        native.set_ticket_key_cb(raw, None)
    if settings.num_tickets is not None:
        native.set_num_tickets(raw, settings.num_tickets)
    native.set_mode(raw, native.SSL_MODE_RELEASE_BUFFERS, settings.release_buffers)
    native.keep_sessions_on_abrupt_close(ctx, raw)
    # what the callbacks installed above call into lives as long as the context (a context
    # that dies clears its remove callback before SSL_CTX_free, see tlsgw.tls.native)
    ctx.tlsgw_resumption = (ring, store)  # type: ignore[attr-defined]
