"""The ``shared:NAME:SIZE`` session cache: one store in ``MAP_SHARED`` memory for all workers.

The master creates it before forking, so every worker maps the same pages; OpenSSL reaches it
through the ``SSL_CTX_sess_set_new_cb/get_cb/remove_cb`` callbacks that
:func:`tlsgw.tls.resumption.apply` installs. The layout, locking and eviction (expired first, then
the oldest, as nginx does) are described on :class:`SharedSessionStore`; the module
:mod:`tlsgw.tls.resumption` explains how it fits with the other session directives.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import multiprocessing
import os
import struct
import time
import zlib

from tlsgw.errors import ConfigError
from tlsgw.tls import native

log = logging.getLogger("tlsgw.error")

#: nginx refuses shared caches smaller than 8 pages.
PAGE_SIZE = mmap.PAGESIZE
MIN_SHARED_SIZE = 8 * PAGE_SIZE
#: nginx does not cache sessions whose DER is larger than this.
MAX_SESSION_DER = 8192

_MAGIC = b"TLSGWSC1"
# magic, nbuckets, (reserved), data_size, head, tail, wrap_at, count, owner_pid, 8 counters
_HDR = struct.Struct("<8sIIQQQQQq8Q")
_HDR_SIZE = 128
H_HEAD, H_TAIL, H_WRAP, H_COUNT, H_OWNER, H_COUNTERS = 4, 5, 6, 7, 8, 9
_OWNER_OFF = 56
_COUNTERS = ("stored", "hits", "misses", "expired", "evicted", "removed", "skipped", "lock_timeouts")
# total_len, flags, expire, next(+1), der_len, id_len, id  (64 bytes)
_REC = struct.Struct("<IIqIIB32s7x")
_FLAGS_OFF, _NEXT_OFF = 4, 16
_REC_LIVE = 1
_LOCK_TIMEOUT = 0.05
_LOCK_STUCK = 2.0


def _align8(n: int) -> int:
    return (n + 7) & ~7


class _Corrupt(Exception):
    pass


class SharedSessionStore:
    """A session cache in anonymous shared memory, usable by the process that made it and every
    process forked from it afterwards. All methods are safe to call concurrently from several
    processes; they never block for more than about 50 ms."""

    def __init__(self, name: str, size: int):
        if size < MIN_SHARED_SIZE:
            raise ConfigError(f'session cache "shared:{name}:{size}" is too small')
        self.name = name
        self.size = size
        self.mem = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_ANONYMOUS", 0x20))
        nb = 1
        while nb * 256 < size:
            nb *= 2
        self.nbuckets = nb
        self.buckets_off = _HDR_SIZE
        self.data_off = _align8(_HDR_SIZE + 4 * nb)
        self.data_size = size - self.data_off
        self.lock = multiprocessing.get_context("fork").Lock()
        self._callbacks: tuple | None = None
        self.pins = native.Pins()
        self._last_warning = 0.0
        self._busy_since: float | None = None
        self._wipe()

    # --- header helpers ------------------------------------------------------------------------
    def _hdr(self) -> list:
        return list(_HDR.unpack_from(self.mem, 0))

    def _put_hdr(self, h: list) -> None:
        _HDR.pack_into(self.mem, 0, *h)

    def _wipe(self) -> None:
        self.mem[: self.data_off] = bytes(self.data_off)
        self._put_hdr([_MAGIC, self.nbuckets, 0, self.data_size, 0, 0, 0, 0, 0, *([0] * 8)])

    def _bump(self, h: list, counter: str, n: int = 1) -> None:
        h[H_COUNTERS + _COUNTERS.index(counter)] += n

    # --- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        got = self.lock.acquire(timeout=_LOCK_TIMEOUT)
        if not got:
            owner = struct.unpack_from("<q", self.mem, _OWNER_OFF)[0]
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            # take over from a holder that died, or (owner not recorded: killed between acquire
            # and recording its pid) from one that has kept the lock for seconds
            if (owner and not _alive(owner)) or (not owner and now - self._busy_since > _LOCK_STUCK):
                with contextlib.suppress(ValueError):
                    self.lock.release()
                got = self.lock.acquire(timeout=_LOCK_TIMEOUT)
                if got:
                    self._wipe()  # it may have died half way through an update
        if not got:
            yield None
            return
        self._busy_since = None
        try:
            struct.pack_into("<q", self.mem, _OWNER_OFF, os.getpid())
            h = self._hdr()
            if h[0] != _MAGIC:
                self._wipe()
                h = self._hdr()
            yield h
        finally:
            with contextlib.suppress(Exception):
                struct.pack_into("<q", self.mem, _OWNER_OFF, 0)
            self.lock.release()

    # --- record helpers -------------------------------------------------------------------------
    def _bucket(self, sid: bytes) -> int:
        return self.buckets_off + 4 * (zlib.crc32(sid) & (self.nbuckets - 1))

    def _rec(self, off: int) -> tuple:
        if off < 0 or off + _REC.size > self.data_size or off % 8:
            raise _Corrupt(off)
        rec = _REC.unpack_from(self.mem, self.data_off + off)
        if rec[0] < _REC.size or off + rec[0] > self.data_size:
            raise _Corrupt(off)
        return rec

    def _unlink(self, off: int, sid: bytes) -> None:
        """Remove the record at *off* from its bucket chain and mark it dead."""
        slot = self._bucket(sid)
        prev = None
        cur = struct.unpack_from("<I", self.mem, slot)[0]
        for _ in range(self.data_size // _REC.size + 1):
            if cur == 0:
                break
            rec = self._rec(cur - 1)
            if cur - 1 == off:
                if prev is None:
                    struct.pack_into("<I", self.mem, slot, rec[3])
                else:
                    struct.pack_into("<I", self.mem, self.data_off + prev + _NEXT_OFF, rec[3])
                break
            prev, cur = cur - 1, rec[3]
        struct.pack_into("<I", self.mem, self.data_off + off + _FLAGS_OFF, 0)  # dead

    def _find(self, sid: bytes) -> int | None:
        cur = struct.unpack_from("<I", self.mem, self._bucket(sid))[0]
        for _ in range(self.data_size // _REC.size + 1):
            if cur == 0:
                return None
            rec = self._rec(cur - 1)
            if rec[1] & _REC_LIVE and rec[5] == len(sid) and rec[6][: rec[5]] == sid:
                return cur - 1
            cur = rec[3]
        raise _Corrupt("bucket chain loop")

    def _drop_tail(self, h: list) -> None:
        """Drop the record at the tail (h: header list, updated in place)."""
        tail = h[H_TAIL]
        rec = self._rec(tail)
        if rec[1] & _REC_LIVE:
            self._unlink(tail, rec[6][: rec[5]])
        tail += rec[0]
        h[H_COUNT] -= 1
        if h[H_COUNT] <= 0:
            h[H_HEAD] = h[H_TAIL] = h[H_WRAP] = h[H_COUNT] = 0
            return
        if h[H_WRAP] and tail >= h[H_WRAP]:  # reached the wrap point: continue at the start
            tail, h[H_WRAP] = 0, 0
        h[H_TAIL] = tail

    def _reserve(self, h: list, length: int, now: float) -> int:
        # 1. expired (or dead) records at the tail go first
        for _ in range(h[H_COUNT]):
            rec = self._rec(h[H_TAIL])
            if rec[1] & _REC_LIVE and rec[2] > now:
                break
            if rec[1] & _REC_LIVE:
                self._bump(h, "expired")
            self._drop_tail(h)
            if h[H_COUNT] == 0:
                break
        # 2. then the oldest, until the new record fits
        for _ in range(h[H_COUNT] + 2):
            head, tail, count = h[H_HEAD], h[H_TAIL], h[H_COUNT]
            if count == 0:
                h[H_HEAD] = h[H_TAIL] = h[H_WRAP] = 0
                return 0
            if head > tail:  # live records are [tail, head): free space after head
                if head + length <= self.data_size:
                    return head
                h[H_WRAP], h[H_HEAD] = head, 0  # [head, end) unused until the tail passes
                continue
            # wrapped: live records are [tail, wrap) + [0, head); free space is [head, tail)
            if head + length <= tail:
                return head
            if self._rec(tail)[1] & _REC_LIVE:
                self._bump(h, "evicted")
            self._drop_tail(h)
        raise _Corrupt("no room after evicting everything")

    # --- public operations --------------------------------------------------------------------
    def put(self, sid: bytes, der: bytes, expire: float, now: float | None = None) -> bool:
        """Store a session; returns False if it was skipped (too big, lock busy)."""
        if not sid or len(sid) > native.SSL_MAX_SSL_SESSION_ID_LENGTH or len(der) > MAX_SESSION_DER:
            with self._locked() as h:
                if h is not None:
                    self._bump(h, "skipped")
                    self._put_hdr(h)
            return False
        now = time.time() if now is None else now
        length = _align8(_REC.size + len(der))
        with self._locked() as h:
            if h is None:
                self._lock_timeout()
                return False
            try:
                old = self._find(sid)
                if old is not None:
                    self._unlink(old, sid)
                off = self._reserve(h, length, now)
                slot = self._bucket(sid)
                head_of_chain = struct.unpack_from("<I", self.mem, slot)[0]
                base = self.data_off + off
                _REC.pack_into(self.mem, base, length, _REC_LIVE, int(expire), head_of_chain,
                               len(der), len(sid), sid)
                self.mem[base + _REC.size: base + _REC.size + len(der)] = der
                struct.pack_into("<I", self.mem, slot, off + 1)
                h[H_HEAD] = off + length
                h[H_COUNT] += 1
                self._bump(h, "stored")
                self._put_hdr(h)
                return True
            except _Corrupt:
                self._corrupt()
                return False

    def get(self, sid: bytes, now: float | None = None) -> bytes | None:
        """The DER of a live session, or None (expired sessions are removed on sight)."""
        now = time.time() if now is None else now
        with self._locked() as h:
            if h is None:
                self._lock_timeout()
                return None
            try:
                off = self._find(sid)
                if off is not None:
                    rec = self._rec(off)
                    if rec[2] > now:
                        self._bump(h, "hits")
                        self._put_hdr(h)
                        start = self.data_off + off + _REC.size
                        return bytes(self.mem[start: start + rec[4]])
                    self._unlink(off, sid)
                    self._bump(h, "expired")
                self._bump(h, "misses")
                self._put_hdr(h)
                return None
            except _Corrupt:
                self._corrupt()
                return None

    def remove(self, sid: bytes) -> None:
        with self._locked() as h:
            if h is None:
                self._lock_timeout()
                return
            try:
                off = self._find(sid)
                if off is not None:
                    self._unlink(off, sid)
                    self._bump(h, "removed")
                    self._put_hdr(h)
            except _Corrupt:
                self._corrupt()

    def stats(self) -> dict[str, int]:
        """Counters (shared by all processes) plus ``count`` (records in the ring, live or not)
        and ``live`` (sessions reachable by lookups)."""
        with self._locked() as h:
            if h is None:
                return {}
            out = dict(zip(_COUNTERS, h[H_COUNTERS:], strict=True))
            out["count"] = h[H_COUNT]
            live, off = 0, h[H_TAIL]
            with contextlib.suppress(_Corrupt):
                for _ in range(h[H_COUNT]):
                    rec = self._rec(off)
                    live += rec[1] & _REC_LIVE
                    off += rec[0]
                    if h[H_WRAP] and off >= h[H_WRAP]:
                        off = 0
            out["live"] = live
            return out

    def clear(self) -> None:
        with self._locked() as h:
            if h is not None:
                self._wipe()

    def close(self) -> None:
        """Unmap the store. Its callbacks stay valid (a lookup is then a miss) and go with the
        store object, which every context using them holds."""
        with contextlib.suppress(Exception):
            self.mem.close()

    def _corrupt(self) -> None:
        log.error('SSL session shared cache "%s" was inconsistent and has been cleared', self.name)
        self._wipe()

    def _lock_timeout(self) -> None:
        with contextlib.suppress(Exception):
            now = time.monotonic()
            if now - self._last_warning >= 1.0:
                self._last_warning = now
                log.warning('SSL session shared cache "%s" is busy, operation skipped', self.name)

    # --- OpenSSL callbacks ---------------------------------------------------------------------
    def callbacks(self) -> tuple:
        """``(new_cb, get_cb, remove_cb)`` thunks for this store (created once, held by it)."""
        if self._callbacks is None:
            self._callbacks = (
                native.NEW_SESSION_CB(self._new_cb),
                native.GET_SESSION_CB(self._get_cb),
                native.REMOVE_SESSION_CB(self._remove_cb),
            )
            self.pins.add(self._callbacks)
        return self._callbacks

    def _new_cb(self, ssl_ptr, sess) -> int:
        try:
            if (native.session_protocol(sess) == native.TLS1_3_VERSION
                    and native.ssl_tickets_enabled(ssl_ptr)):
                return 0  # the ticket carries the session (nginx 1.23.2+)
            sid = native.session_id(sess)
            der = native.session_to_der(sess)
            if der:
                self.put(sid, der, native.session_expiry(sess))
        except BaseException:
            with contextlib.suppress(BaseException):
                log.exception("shared session cache: store failed")
        return 0  # we keep no reference to sess

    def _get_cb(self, ssl_ptr, id_ptr, id_len, copy_ptr):
        try:
            copy_ptr[0] = 0  # the returned session's reference is handed to OpenSSL
            if id_len <= 0 or id_len > native.SSL_MAX_SSL_SESSION_ID_LENGTH:
                return None
            der = self.get(ctypes.string_at(id_ptr, id_len))
            if der is None:
                return None
            return native.session_from_der(der)
        except BaseException:
            with contextlib.suppress(BaseException):
                log.exception("shared session cache: lookup failed")
            return None

    def _remove_cb(self, ctx_ptr, sess) -> None:
        try:
            # (a context being freed flushes its builtin cache: native clears this callback
            # first, so the shared copies stay)
            sid = native.session_id(sess)
            if sid:
                self.remove(sid)
        except BaseException:
            with contextlib.suppress(BaseException):
                log.exception("shared session cache: remove failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
