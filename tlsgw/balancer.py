"""Upstream peer selection that reproduces nginx's ``stream`` balancers choice for choice.

Pure logic: no sockets, no asyncio, no logging. The data path owns one :class:`Upstream` per
``upstream`` group and worker, opens a :class:`Picker` per client session and drives it::

    picker = upstream.picker(key=b"10.0.0.7", max_tries=cfg.proxy_next_upstream_tries)
    while True:
        peer = picker.get()
        if peer is None:                      # log "no live upstreams", status 502
            break
        if connect(peer.config.address):      # TCP connect + upstream TLS handshake
            picker.connected(peer)
            ...proxy...
            picker.free(peer, failed=False)
            break
        if picker.free(peer, failed=True):   # True: log "upstream server temporarily disabled"
            ...
        if picker.tries == 0 or not next_upstream:
            break                             # status 502

Theory of operation
===================

Everything below was derived from how nginx 1.22.1 behaves (and checked against the real binary
by ``tests/nginx_vectors/gen_vectors.py``); the code is an independent implementation.

Peer lists
    ``server`` entries become one peer per resolved address, in configuration order. Non-backup
    peers form the *primary* list, ``backup`` peers a second list that exists only when at least
    one backup is configured. A list is *single* when the primary list has exactly one address and
    there is no backup list. ``down`` peers are never chosen but still count in the list's total
    weight (so they keep their share of hash space) and do not count in ``tries``.

Eligibility
    A peer is skipped when it was already tried in this session (a per-session set of list
    positions), is ``down``, is *failed* (``max_fails`` > 0, ``fails >= max_fails`` and no more
    than ``fail_timeout`` seconds since ``checked``) or is at ``max_conns``. Time is whole
    seconds, as nginx's cached ``ngx_time()``.

Runtime states (the admin endpoint's drain / disable / enable)
    A ``draining`` or ``disabled`` peer is skipped exactly like a ``down`` one (it keeps its
    share of hash space and its ketama points, so only its own keys move, to where they would
    go if it were down, and they come back when it is enabled). The attempts a session may
    make (``tries``, counted when the upstream was built) are not lowered, so a session whose
    last usable server failed ends with "no live upstreams" (502 either way). HAProxy keeps persistent (stick-table) traffic on a
    draining server; tlsgw has no persistence beyond hashing, and a hash is placement, not
    persistence, so a draining server gets no new session whatever the method.

Smooth weighted round robin
    Each eligible peer's ``current_weight`` grows by its ``effective_weight``; the largest
    (earliest on ties) wins and gives back the sum of what was added. ``effective_weight`` starts
    at ``weight``, loses ``weight // max_fails`` on every failure and regains 1 each time the
    peer takes part in a pass, so a flaky peer is phased back in gradually. Weights 5/1/1 yield
    ``a a b a c a a``. When the primary list has nothing eligible the session switches to the
    backup list for good, with an empty tried set; when that fails too the answer is "busy"
    (``None``). A single peer is handed out unless ``down`` or full, without touching the tried
    set or ``checked``.

Failure accounting
    Every attempt is released once with :meth:`Picker.free`. A failure bumps ``fails``,
    stamps ``accessed`` and ``checked`` with now and lowers ``effective_weight``; once ``fails``
    reaches ``max_fails`` the peer sits out until ``fail_timeout`` has passed since ``checked``.
    Picking a peer whose ``checked`` is older than ``fail_timeout`` restamps ``checked``, so a
    disabled peer gets one probe per window. A success (``connected`` or a non-failed ``free``)
    clears ``fails`` only if ``accessed < checked``, i.e. only when the peer was picked again
    after its last failure *and* at least ``fail_timeout`` later; below ``max_fails`` failures
    simply accumulate. A single peer never accumulates failures, and releasing it ends the
    session's tries: nginx never retries the same lone address.

``tries``
    A session may make as many attempts as there are non-``down`` addresses (primary plus
    backup), capped by ``proxy_next_upstream_tries`` when that is set; each ``free`` spends one.

``hash KEY`` (Cache::Memcached compatible)
    Round *r* hashes ``str(r) + key`` (just ``key`` for *r* = 0) with CRC-32, keeps bits 16..30
    and adds them to a running sum; ``sum % total_weight`` indexes the weighted peer list. An
    ineligible pick moves to the next round; the round counter, the sum and the count of
    skipped picks live for the whole session, so retries continue the same sequence. After more
    than 20 skipped picks, or with an empty key or a single peer, plain round robin takes over
    with the same tried set.

``hash KEY consistent`` (ketama, Cache::Memcached::Fast compatible)
    Each primary address contributes ``160 * weight`` points: CRC-32 of
    ``host NUL port prev`` where *prev* is the previous point of the same address as 4
    little-endian bytes (zero at first) and host/port are split from the ``server`` text as
    written (``unix:`` servers have no port). Points are sorted, duplicates collapsed (first
    kept), and each point names a ``server`` text. A session starts at the first point at or
    above CRC-32(key) and picks, by smooth WRR, among the eligible addresses of that point's
    server; if none is left it walks to the next point, each step counting as a skipped pick.
    The position is kept across retries. The same 20-skip / empty key / single fallbacks apply.

``least_conn``
    The eligible peer with the lowest ``conns / weight`` wins (compared by cross
    multiplication); ties are broken by a smooth WRR pass over the tied peers starting at the
    first of them. Backups work as in round robin.

``random`` / ``random two``
    A pick is ``rng() % total_weight`` located in the cumulative weight ranges. ``random``
    redraws until an eligible untried peer comes up. ``random two`` draws two distinct eligible
    peers and keeps the one with fewer ``conns / weight``, the second on ties. Every draw but
    the one completing the pair counts as a skipped pick (the accepted first one too); past 20
    the session falls back to round robin, as do single-peer groups.

Concurrency
    None needed: a worker runs one event loop and every call here completes synchronously,
    just as nginx's per-worker peer state is only touched by its own worker.
"""

from __future__ import annotations

import bisect
import math
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ADMIN_STATES",
    "DISABLED",
    "DRAINING",
    "ENABLED",
    "KETAMA_POINTS_PER_WEIGHT",
    "MAX_HASH_TRIES",
    "METHOD_KINDS",
    "Method",
    "Peer",
    "PeerConfig",
    "Picker",
    "Upstream",
    "ketama_points",
    "ketama_split",
    "validate",
]

#: Points per unit of weight on the ketama ring; nginx's constant, needed for identical rings.
KETAMA_POINTS_PER_WEIGHT = 160

#: Skipped picks a hash/random method tolerates per session before falling back to round robin.
MAX_HASH_TRIES = 20

#: Runtime (admin) states of a peer, HAProxy's: ``enabled`` (ready), ``draining`` (no new
#: sessions, open ones go on) and ``disabled`` (maintenance: no new sessions, shown as down).
ENABLED, DRAINING, DISABLED = "enabled", "draining", "disabled"
ADMIN_STATES = (ENABLED, DRAINING, DISABLED)

#: Method kinds understood by :class:`Method`.
METHOD_KINDS = frozenset(
    {"round_robin", "hash", "hash_consistent", "least_conn", "random", "random_two"}
)

# Kinds whose nginx directive accepts ``backup`` servers.
_BACKUP_KINDS = frozenset({"round_robin", "least_conn"})

# "Never" for ``checked``/``accessed``: far enough in the past that the first pick restamps
# ``checked`` whatever the clock's origin, as it does in nginx where the clock is the epoch.
_NEVER = -(1 << 62)


@dataclass
class PeerConfig:
    """One address of one ``server`` line, as the configuration layer resolved it."""

    server: str
    """The ``server`` text exactly as written (``"127.0.0.1:7773"``, ``"unix:/tmp/b.sock"``).
    Ketama hashes this text, not the address, so it must not be normalised."""
    name: str
    """The address text for logs and ``$upstream_addr`` (``"[::1]:7775"``)."""
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    """Seconds. nginx parses it as whole seconds; fractions are compared as given."""
    max_conns: int = 0
    """0 means unlimited. Counted per worker, like nginx without ``zone``."""
    backup: bool = False
    down: bool = False
    address: object = None
    """Opaque to the balancer (the caller's resolved sockaddr); carried through for the caller."""


@dataclass(frozen=True)
class Method:
    """A balancing method. The hash key itself is evaluated by the caller per session."""

    kind: str
    """One of :data:`METHOD_KINDS`. ``random two least_conn`` is ``random_two``."""

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"unknown balancing method {self.kind!r}")

    @property
    def supports_backup(self) -> bool:
        """Whether nginx's directive for this method accepts ``backup`` servers."""
        return self.kind in _BACKUP_KINDS

    @property
    def uses_key(self) -> bool:
        return self.kind in ("hash", "hash_consistent")


def validate(method: Method, peers: Sequence[PeerConfig], upstream_name: str = "") -> list[str]:
    """Problems nginx would reject this upstream for, worded as nginx words them.

    ``backup`` with ``hash``/``random`` is not a problem here but a warning (:func:`warnings`):
    nginx rejects it only when the method directive comes before the ``server`` lines, and
    otherwise accepts the backups, which are then reachable only through the round-robin
    fallback. YAML has no directive order, so tlsgw accepts them with nginx's second behaviour.
    """
    problems: list[str] = []
    for p in peers:
        if p.weight < 1:
            problems.append(f'invalid parameter "weight={p.weight}"')
        if p.max_fails < 0:
            problems.append(f'invalid parameter "max_fails={p.max_fails}"')
        if p.max_conns < 0:
            problems.append(f'invalid parameter "max_conns={p.max_conns}"')
        if p.fail_timeout < 0:
            problems.append(f'invalid parameter "fail_timeout={p.fail_timeout}"')
    if not any(not p.backup for p in peers):
        problems.append(f'no servers in upstream "{upstream_name}"')
    # One message per distinct problem keeps ``check`` output readable for big groups.
    return list(dict.fromkeys(problems))


def warnings(method: Method, peers: Sequence[PeerConfig]) -> list[str]:
    """Accepted but surprising combinations, for ``tlsgw check`` to point out."""
    if not method.supports_backup and any(p.backup for p in peers):
        name = {"hash_consistent": "hash consistent", "random_two": "random two"}.get(
            method.kind, method.kind)
        return [f'"backup" servers with "{name}" are used only after {MAX_HASH_TRIES} '
                "unusable picks fall back to round robin (as nginx does when the method is "
                "written after the server lines)"]
    return []


def ketama_split(server: str) -> tuple[bytes, bytes]:
    """Split a ``server`` text into the (host, port) bytes that ketama hashes.

    ``unix:`` (any case) means host = the path, no port. Otherwise the port is the run of
    digits after the last colon, and only if the text ends in digits (or the colon): so
    ``[::1]:80`` gives ``[::1]`` and ``80``, and ``example.com`` gives no port at all.
    """
    raw = server.encode()
    if len(raw) >= 5 and raw[:5].lower() == b"unix:":
        return raw[5:], b""
    end = len(raw)
    i = end - 1
    while i >= 0 and 0x30 <= raw[i] <= 0x39:
        i -= 1
    if i >= 0 and raw[i] == 0x3A:
        return raw[:i], raw[i + 1 :]
    return raw, b""


def ketama_points(servers: Sequence[tuple[str, int]]) -> list[tuple[int, str]]:
    """The sorted, de-duplicated ring for ``(server text, weight)`` pairs, one pair per address.

    The sort is stable, so when two different servers produce the same point the one listed
    first keeps it; this matches nginx on glibc, whose ``qsort`` is a merge sort.
    """
    points: list[tuple[int, str]] = []
    # the addresses of one name give the same points (collapsed below): compute them once
    for server, weight in dict.fromkeys(servers):
        host, port = ketama_split(server)
        base = zlib.crc32(host + b"\0" + port)  # CRC state to continue from for every point
        prev = 0
        for _ in range(weight * KETAMA_POINTS_PER_WEIGHT):
            prev = zlib.crc32(prev.to_bytes(4, "little"), base)
            points.append((prev, server))
    points.sort(key=lambda pt: pt[0])
    ring: list[tuple[int, str]] = []
    last = -1
    for point in points:
        if point[0] != last:
            ring.append(point)
            last = point[0]
    return ring


class Peer:
    """Run-time state of one address, per worker (nginx without ``zone``)."""

    __slots__ = (
        "config", "name", "server", "weight", "max_fails", "fail_timeout", "max_conns",
        "down", "backup", "index", "conns", "fails", "checked", "accessed",
        "current_weight", "effective_weight", "admin",
    )

    def __init__(self, config: PeerConfig, index: int):
        self.config = config
        self.name = config.name
        self.server = config.server
        self.weight = config.weight
        self.max_fails = config.max_fails
        self.fail_timeout = config.fail_timeout
        self.max_conns = config.max_conns
        self.down = config.down
        self.backup = config.backup
        self.index = index
        """Position in its (primary or backup) list: the bit in a session's tried set."""
        self.conns = 0
        self.fails = 0
        self.checked = _NEVER
        self.accessed = _NEVER
        self.current_weight = 0
        self.effective_weight = config.weight
        self.admin = ENABLED
        """The runtime (admin) state: :data:`ENABLED`, :data:`DRAINING` or :data:`DISABLED`."""

    def set_admin(self, state: str) -> None:
        """Set the runtime state. Draining and disabled take no new sessions: both make the
        peer ``down`` (nginx's skip, so the pick costs nothing more), and ``enabled`` gives it
        back the ``down`` of its configuration. Sessions already open are not touched."""
        if state not in ADMIN_STATES:
            raise ValueError(f"unknown runtime state {state!r}")
        self.admin = state
        self.down = self.config.down or state != ENABLED

    #: passes its active health check (always, without one; see :class:`CheckedPeer`)
    healthy = True

    def usable(self, now: int) -> bool:
        """Not ``down``, not failed (inside its fail window) and not at ``max_conns``."""
        if self.down:
            return False
        if (
            self.max_fails
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        ):
            return False
        return not (self.max_conns and self.conns >= self.max_conns)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} w={self.weight} eff={self.effective_weight} "
            f"cur={self.current_weight} conns={self.conns} fails={self.fails}>"
        )


class CheckedPeer(Peer):
    """A peer under an active health check: usable only while its byte in ``health`` (the
    shared zone the health-check helper writes) is non-zero, and as :class:`Peer` says.

    Only peers of upstreams with ``health_check`` are of this class, so a plain peer's
    :meth:`usable` costs what it always did; this one reads one byte and makes one call more."""

    __slots__ = ("health", "slot")

    def __init__(self, config: PeerConfig, index: int, health: Any, slot: int):
        super().__init__(config, index)
        self.health = health
        self.slot = slot

    def usable(self, now: int) -> bool:
        return bool(self.health[self.slot]) and Peer.usable(self, now)

    @property  # type: ignore[override]
    def healthy(self) -> bool:
        return bool(self.health[self.slot])


def _default_rng() -> Callable[[], int]:
    """Draws in random(3)'s range, 0 .. 2**31-1, from an OS-seeded generator."""
    gen = random.Random()
    return lambda: gen.getrandbits(31)


class _PeerList:
    """The primary or the backup peers, with the totals nginx keeps per list."""

    __slots__ = ("peers", "total_weight", "tries", "single", "next", "ends")

    def __init__(self, peers: list[Peer]):
        self.peers = peers
        self.total_weight = sum(p.weight for p in peers)
        self.tries = sum(1 for p in peers if not p.down)
        self.single = len(peers) == 1
        self.next: _PeerList | None = None
        # Cumulative weight ends, so weighted lookups are one bisect instead of a walk.
        self.ends: list[int] = []
        acc = 0
        for p in peers:
            acc += p.weight
            self.ends.append(acc)


class Upstream:
    """One ``upstream`` group: immutable layout plus the mutable per-worker peer state."""

    def __init__(
        self,
        name: str,
        peers: list[PeerConfig],
        method: Method,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], int] | None = None,
        health: tuple[Any, dict[str, int]] | None = None,
        dynamic: bool = False,
    ):
        """Build the peer lists (and the ketama ring once, for ``hash_consistent``).

        Args:
            clock: seconds; only whole seconds are used, as nginx does.
            rng: returns a non-negative int per draw for ``random``; tests inject a seeded one.
            health: ``(buffer, {peer name: slot})`` for an upstream under ``health_check``:
                those peers are :class:`CheckedPeer`, down while their byte is 0.
            dynamic: the peers come from DNS (``resolve``) and may be none for now: every
                session then gets "no live upstreams", as in nginx.

        Raises:
            ValueError: the group is invalid (see :func:`validate`).
        """
        problems = validate(method, peers, name)
        if dynamic:
            problems = [p for p in problems if not p.startswith("no servers in upstream")]
        if problems:
            raise ValueError("; ".join(problems))
        self.name = name
        self.method = method
        self._clock = clock
        if rng is None:
            rng = _default_rng()
        self._rng = rng
        primary = [p for p in peers if not p.backup]
        backup = [p for p in peers if p.backup]

        def make(c: PeerConfig, i: int) -> Peer:
            if health is not None and c.name in health[1]:
                return CheckedPeer(c, i, health[0], health[1][c.name])
            return Peer(c, i)

        self.primary = _PeerList([make(c, i) for i, c in enumerate(primary)])
        self.backup: _PeerList | None = None
        if backup:
            self.backup = _PeerList([make(c, i) for i, c in enumerate(backup)])
            self.primary.single = False
            self.primary.next = self.backup
        self.tries = self.primary.tries + (self.backup.tries if self.backup else 0)
        """Default attempts per session: every non-``down`` address."""
        self.peers: list[Peer] = self.primary.peers + (self.backup.peers if self.backup else [])
        self._ring_hashes: list[int] = []
        self._ring_groups: list[tuple[Peer, ...]] = []
        if method.kind == "hash_consistent":
            groups: dict[str, list[Peer]] = {}
            for p in self.primary.peers:
                groups.setdefault(p.server, []).append(p)
            frozen = {s: tuple(g) for s, g in groups.items()}
            ring = ketama_points([(p.server, p.weight) for p in self.primary.peers])
            self._ring_hashes = [h for h, _ in ring]
            self._ring_groups = [frozen[s] for _, s in ring]
        self._get: Callable[[Picker], Peer | None] = _GETTERS[method.kind]
        if not primary:  # a DNS-fed group with no address yet: the backups, if any
            self._get = Picker._get_round_robin
        self.steered = False
        """Whether a peer may have a runtime state other than enabled (set by the admin
        states' :meth:`tlsgw.runtime.steer.Steering.apply`)."""

    def now(self) -> int:
        """Whole seconds from the injected clock (nginx's ``ngx_time()``)."""
        return math.floor(self._clock())

    def picker(self, key: bytes | None = None, max_tries: int = 0) -> Picker:
        """Start selecting for one client session.

        Args:
            key: the evaluated hash key; ignored by non-hash methods. Empty means round robin.
            max_tries: ``proxy_next_upstream_tries``; 0 leaves the default.
        """
        return Picker(self, key, max_tries)


class Picker:
    """The walk over an upstream's peers for one client session: selection state, tries left
    and the peers already tried (nginx's per-request peer data)."""

    __slots__ = (
        "upstream", "key", "tries", "_list", "_tried", "_current", "_skips", "_rehash",
        "_acc", "_point",
    )

    def __init__(self, upstream: Upstream, key: bytes | None, max_tries: int = 0):
        self.upstream = upstream
        self.key = key or b""
        self.tries = upstream.tries
        """Attempts still allowed, the first included; 0 means stop (status 502)."""
        if max_tries and self.tries > max_tries:
            self.tries = max_tries
        self._list = upstream.primary
        self._tried: set[int] = set()
        self._current: Peer | None = None
        self._skips = 0  # hash/random picks skipped so far; > MAX_HASH_TRIES means round robin
        self._rehash = 0
        self._acc = 0
        self._point = 0
        if upstream.method.kind == "hash_consistent" and self.key:
            self._point = bisect.bisect_left(upstream._ring_hashes, zlib.crc32(self.key))

    @property
    def current(self) -> Peer | None:
        """The peer handed out by the last successful :meth:`get`."""
        return self._current

    @property
    def using_backup(self) -> bool:
        return self._list is not self.upstream.primary

    def get(self) -> Peer | None:
        """The next peer to connect to, or ``None`` for "no live upstreams"."""
        return self.upstream._get(self)

    def connected(self, peer: Peer) -> None:
        """The attempt connected (TCP and upstream TLS): a probe after a failure clears it."""
        if peer.accessed < peer.checked:
            peer.fails = 0

    def free(self, peer: Peer, failed: bool) -> bool:
        """Release one attempt. Returns True if nginx would warn "upstream server temporarily
        disabled" (the failure brought ``fails`` to ``max_fails`` or beyond)."""
        peer.conns -= 1
        if self._list.single:
            # A lone address is never marked failed, and retrying it is pointless.
            self.tries = 0
            return False
        disabled = False
        if failed:
            now = self.upstream.now()
            peer.fails += 1
            peer.accessed = now
            peer.checked = now
            if peer.max_fails:
                peer.effective_weight -= peer.weight // peer.max_fails
                disabled = peer.fails >= peer.max_fails
            if peer.effective_weight < 0:
                peer.effective_weight = 0
        elif peer.accessed < peer.checked:
            peer.fails = 0
        if self.tries:
            self.tries -= 1
        return disabled

    # -- selection primitives -------------------------------------------------------------

    def _take(self, peer: Peer, now: int) -> Peer:
        self._tried.add(peer.index)
        if now - peer.checked > peer.fail_timeout:
            peer.checked = now
        peer.conns += 1
        self._current = peer
        return peer

    def _wrr(self, candidates: Sequence[Peer], now: int) -> Peer | None:
        """One smooth-WRR pass over the eligible untried ``candidates``; None if none."""
        tried = self._tried
        best: Peer | None = None
        total = 0
        for peer in candidates:
            if peer.index in tried or not peer.usable(now):
                continue
            peer.current_weight += peer.effective_weight
            total += peer.effective_weight
            if peer.effective_weight < peer.weight:
                peer.effective_weight += 1
            if best is None or peer.current_weight > best.current_weight:
                best = peer
        if best is not None:
            best.current_weight -= total
        return best

    def _switch_to_backup(self) -> bool:
        nxt = self._list.next
        if nxt is None:
            return False
        self._list = nxt
        self._tried.clear()
        return True

    def _get_round_robin(self) -> Peer | None:
        while True:
            lst = self._list
            if lst.single:
                peer = lst.peers[0]
                if (not peer.down and not (peer.max_conns and peer.conns >= peer.max_conns)
                        and peer.healthy):
                    # nginx neither marks it tried nor restamps ``checked`` here.
                    peer.conns += 1
                    self._current = peer
                    return peer
            else:
                now = self.upstream.now()
                best = self._wrr(lst.peers, now)
                if best is not None:
                    return self._take(best, now)
            if not self._switch_to_backup():
                return None

    def _get_hash(self) -> Peer | None:
        lst = self._list
        key = self.key
        if self._skips > MAX_HASH_TRIES or lst.single or not key:
            return self._get_round_robin()
        now = self.upstream.now()
        peers, ends, total = lst.peers, lst.ends, lst.total_weight
        tried = self._tried
        while True:
            data = b"%d%s" % (self._rehash, key) if self._rehash else key
            self._acc = (self._acc + ((zlib.crc32(data) >> 16) & 0x7FFF)) & 0xFFFFFFFF
            self._rehash += 1
            peer = peers[bisect.bisect_right(ends, self._acc % total)]
            if peer.index not in tried and peer.usable(now):
                return self._take(peer, now)
            self._skips += 1
            if self._skips > MAX_HASH_TRIES:
                return self._get_round_robin()

    def _get_hash_consistent(self) -> Peer | None:
        if self._skips > MAX_HASH_TRIES or self._list.single or not self.key:
            return self._get_round_robin()
        now = self.upstream.now()
        groups = self.upstream._ring_groups
        npoints = len(groups)
        while True:
            best = self._wrr(groups[self._point % npoints], now)
            if best is not None:
                return self._take(best, now)
            self._point += 1
            self._skips += 1
            if self._skips > MAX_HASH_TRIES:
                return self._get_round_robin()

    def _get_least_conn(self) -> Peer | None:
        while True:
            lst = self._list
            if lst.single:
                return self._get_round_robin()
            now = self.upstream.now()
            tried = self._tried
            best: Peer | None = None
            many = False
            for peer in lst.peers:
                if peer.index in tried or not peer.usable(now):
                    continue
                if best is None or peer.conns * best.weight < best.conns * peer.weight:
                    best, many = peer, False
                elif peer.conns * best.weight == best.conns * peer.weight:
                    many = True
            if best is None:
                if self._switch_to_backup():
                    continue
                return None
            if many:
                # Smooth WRR among the peers tied at the minimum, from the first of them on.
                total = 0
                for peer in lst.peers[best.index :]:
                    if (
                        peer.index in tried
                        or not peer.usable(now)
                        or peer.conns * best.weight != best.conns * peer.weight
                    ):
                        continue
                    peer.current_weight += peer.effective_weight
                    total += peer.effective_weight
                    if peer.effective_weight < peer.weight:
                        peer.effective_weight += 1
                    if peer.current_weight > best.current_weight:
                        best = peer
                best.current_weight -= total
            return self._take(best, now)

    def _peek_random(self) -> Peer:
        lst = self._list
        x = self.upstream._rng() % lst.total_weight
        return lst.peers[bisect.bisect_right(lst.ends, x)]

    def _get_random(self) -> Peer | None:
        if self._skips > MAX_HASH_TRIES or self._list.single:
            return self._get_round_robin()
        now = self.upstream.now()
        tried = self._tried
        while True:
            peer = self._peek_random()
            if peer.index not in tried and peer.usable(now):
                return self._take(peer, now)
            self._skips += 1
            if self._skips > MAX_HASH_TRIES:
                return self._get_round_robin()

    def _get_random_two(self) -> Peer | None:
        if self._skips > MAX_HASH_TRIES or self._list.single:
            return self._get_round_robin()
        now = self.upstream.now()
        tried = self._tried
        first: Peer | None = None
        while True:
            peer = self._peek_random()
            if peer is not first and peer.index not in tried and peer.usable(now):
                if first is not None:
                    # The second draw wins unless it is strictly more loaded per weight.
                    if peer.conns * first.weight > first.conns * peer.weight:
                        peer = first
                    return self._take(peer, now)
                first = peer
            # nginx counts the accepted first draw as a skip too.
            self._skips += 1
            if self._skips > MAX_HASH_TRIES:
                return self._get_round_robin()


_GETTERS: dict[str, Callable[[Picker], Peer | None]] = {
    "round_robin": Picker._get_round_robin,
    "hash": Picker._get_hash,
    "hash_consistent": Picker._get_hash_consistent,
    "least_conn": Picker._get_least_conn,
    "random": Picker._get_random,
    "random_two": Picker._get_random_two,
}
