"""tlsgw.balancer against recorded nginx 1.22.1 choices, plus semantics tests with a fake clock.

The vectors in ``tests/data/nginx_vectors`` come from ``tests/nginx_vectors/gen_vectors.py``
(real nginx, loopback); they are replayed here in the order nginx saw them, on one
:class:`Upstream` per file, because round-robin weights and failure counters carry over from
session to session exactly as they do in an nginx worker.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tlsgw.balancer import (
    MAX_HASH_TRIES,
    Method,
    Peer,
    PeerConfig,
    Picker,
    Upstream,
    ketama_points,
    ketama_split,
    validate,
    warnings,
)
from tlsgw.config.schema import method_from_nginx
from tlsgw.config.units import UnitError

VECTORS = Path(__file__).parent / "data" / "nginx_vectors"


# -- helpers --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def parse_server(line: str) -> PeerConfig:
    """A ``server`` line's arguments, as the vectors record them (literal addresses only)."""
    addr, *params = line.split()
    cfg = PeerConfig(server=addr, name=addr)
    for p in params:
        name, _, value = p.partition("=")
        if name == "weight":
            cfg.weight = int(value)
        elif name == "max_fails":
            cfg.max_fails = int(value)
        elif name == "fail_timeout":
            cfg.fail_timeout = _seconds(value)
        elif name == "max_conns":
            cfg.max_conns = int(value)
        elif name in ("backup", "down"):
            setattr(cfg, name, True)
        else:
            raise AssertionError(f"unexpected server parameter {p!r}")
    return cfg


def load(name: str) -> dict[str, Any]:
    vec: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return vec


def _method(text: str) -> Method:
    """A vector's method line in nginx's words, through the schema's parser. The vectors' keys
    are evaluated by the tests themselves (``$vec_key`` is no tlsgw variable), so the key
    template is not compiled here."""
    words = text.split()
    if words == ["round_robin"]:  # nginx's default: no directive at all
        return Method("round_robin")
    if words[0] == "hash":
        words[1] = "$remote_addr"
    return method_from_nginx(words).method


def upstream_for(vec: dict[str, Any], clock: Callable[[], float]) -> Upstream:
    ups = vec["upstream"]
    method = _method(ups["method"])
    return Upstream(ups["name"], [parse_server(s) for s in ups["servers"]], method, clock=clock)


def attempt(up: Upstream, s: Picker, dead: set[str]) -> tuple[list[str], int]:
    """Drive one session like the proxy does; returns ($upstream_addr list, $status)."""
    addrs: list[str] = []
    while True:
        peer = s.get()
        if peer is None:
            addrs.append(up.name)  # "no live upstreams"
            return addrs, 502
        addrs.append(peer.name)
        if peer.name in dead:
            s.free(peer, failed=True)
            if s.tries == 0:
                return addrs, 502
            continue
        s.connected(peer)
        s.free(peer, failed=False)
        return addrs, 200


def replay_sessions(name: str) -> tuple[Upstream, list[Picker]]:
    vec = load(name)
    up = upstream_for(vec, FakeClock())
    dead = set(vec["dead"])
    tries = vec["proxy_next_upstream_tries"]
    mismatches = []
    sessions = []
    for i, rec in enumerate(vec["sessions"]):
        key = rec["key"].encode() if "key" in rec else None
        s = up.picker(key, tries)
        got = attempt(up, s, dead)
        sessions.append(s)
        if got != (rec["upstream_addr"], rec["status"]):
            mismatches.append((i, rec, got))
    assert not mismatches, (
        f"{len(mismatches)}/{len(vec['sessions'])} sessions differ from nginx; first: "
        f"{mismatches[:3]}"
    )
    return up, sessions


# -- nginx vectors --------------------------------------------------------------------------


def test_vectors_present() -> None:
    names = {p.stem for p in VECTORS.glob("*.json")}
    assert {"chash_remote_addr", "chash_dead_retry", "hash_remote_addr", "rr_5_1_1"} <= names


def test_ketama_remote_addr_weights_ipv6_unix_down() -> None:
    vec = load("chash_remote_addr")
    assert len(vec["sessions"]) >= 3000
    servers = " ".join(vec["upstream"]["servers"])
    assert "[::1]:" in servers and "unix:" in servers and " down" in servers
    _, sessions = replay_sessions("chash_remote_addr")
    assert all(s._skips <= MAX_HASH_TRIES for s in sessions)


def test_ketama_dead_servers_retry_order() -> None:
    _, sessions = replay_sessions("chash_dead_retry")
    assert any(0 < s._skips <= MAX_HASH_TRIES for s in sessions)  # walked along the ring


@pytest.mark.parametrize("n", [1, 2])
def test_ketama_point_collision_kept_by_first_listed_server(n: int) -> None:
    vec = load(f"chash_point_collision_{n}")
    first_listed = vec["upstream"]["servers"][0].split()[0]
    # the first sessions land on the shared point: nginx's (stable) sort kept the first listed
    assert {r["upstream_addr"][0] for r in vec["sessions"][:6]} == {first_listed}
    replay_sessions(f"chash_point_collision_{n}")


@pytest.mark.parametrize("name", ["chash_rr_fallback", "hash_rr_fallback"])
def test_hash_twenty_skips_fall_back_to_round_robin(name: str) -> None:
    _, sessions = replay_sessions(name)
    assert sum(s._skips > MAX_HASH_TRIES for s in sessions) >= 10


def test_ketama_failure_state_carries_across_sessions() -> None:
    replay_sessions("chash_fail_state")


def test_ketama_key_with_literal_text_and_two_ports() -> None:
    replay_sessions("chash_addr_port")


def test_hash_remote_addr_rehash() -> None:
    vec = load("hash_remote_addr")
    assert len(vec["sessions"]) >= 1000
    _, sessions = replay_sessions("hash_remote_addr")
    assert any(s._rehash > 1 for s in sessions)


def test_hash_with_bound_client_ports() -> None:
    replay_sessions("hash_src_port")


def test_hash_empty_key_is_round_robin() -> None:
    replay_sessions("hash_empty_key")


@pytest.mark.parametrize(
    "name", ["rr_5_1_1", "rr_mixed_weights", "rr_failures", "rr_backup", "rr_no_live_tries",
             "rr_single_dead"],
)
def test_round_robin_vectors(name: str) -> None:
    replay_sessions(name)


def test_rr_5_1_1_period() -> None:
    vec = load("rr_5_1_1")
    seq = ["abc"[int(r["upstream_addr"][0][-1]) - 1] for r in vec["sessions"][:7]]
    assert "".join(seq) == "aabacaa"


@pytest.mark.parametrize("name", ["least_conn_held", "rr_max_conns_backup"])
def test_held_connection_vectors(name: str) -> None:
    vec = load(name)
    up = upstream_for(vec, FakeClock())
    held: dict[int, tuple[Picker, Peer]] = {}
    for i, step in enumerate(vec["steps"]):
        if step["op"] == "close":
            closing, peer = held.pop(step["id"])
            closing.free(peer, failed=False)
            continue
        s = up.picker()
        got_peer = s.get()
        if got_peer is None:
            got = ([up.name], 502)
        else:
            got = ([got_peer.name], 200)
            s.connected(got_peer)
            held[step["id"]] = (s, got_peer)
        assert got == (step["upstream_addr"], step["status"]), f"step {i}: {step}"
    assert not held


def test_ketama_ring_collapses_duplicate_server_text() -> None:
    ring = ketama_points([("10.0.0.1:80", 1), ("10.0.0.1:80", 2), ("10.0.0.2:80", 1)])
    hashes = [h for h, _ in ring]
    assert hashes == sorted(set(hashes))
    assert Counter(s for _, s in ring) == {"10.0.0.1:80": 320, "10.0.0.2:80": 160}


def test_ketama_point_formula() -> None:
    (h0, _), *_ = sorted(
        ketama_points([("10.0.0.1:80", 1)]), key=lambda p: p[0] != zlib.crc32(
            b"10.0.0.1\x0080" + bytes(4))
    )
    assert h0 == zlib.crc32(b"10.0.0.1\x0080\x00\x00\x00\x00")


@pytest.mark.parametrize(
    ("server", "split"),
    [
        ("127.0.0.1:80", (b"127.0.0.1", b"80")),
        ("[::1]:8080", (b"[::1]", b"8080")),
        ("unix:/tmp/x.sock", (b"/tmp/x.sock", b"")),
        ("UNIX:/tmp/x", (b"/tmp/x", b"")),
        ("example.com", (b"example.com", b"")),
        ("example.com:", (b"example.com", b"")),
        ("a:b", (b"a:b", b"")),
        ("8080", (b"8080", b"")),
    ],
)
def test_ketama_split(server: str, split: tuple[bytes, bytes]) -> None:
    assert ketama_split(server) == split


# -- semantics with a fake clock ------------------------------------------------------------


def peers(*specs: str) -> list[PeerConfig]:
    return [parse_server(s) for s in specs]


def rr(*specs: str, clock: Callable[[], float] | None = None, kind: str = "round_robin",
       rng: Callable[[], int] | None = None) -> Upstream:
    return Upstream("u", peers(*specs), Method(kind), clock=clock or FakeClock(), rng=rng)


def pick(up: Upstream, key: bytes | None = None) -> Peer | None:
    """One session, one successful attempt, released at once."""
    s = up.picker(key)
    p = s.get()
    if p is not None:
        s.connected(p)
        s.free(p, failed=False)
    return p


def session_until(up: Upstream, name: str) -> tuple[Picker, Peer]:
    """Start sessions (others succeed at once) until one is handed ``name``."""
    for _ in range(50):
        s = up.picker()
        p = s.get()
        assert p is not None
        if p.name == name:
            return s, p
        s.connected(p)
        s.free(p, failed=False)
    raise AssertionError(f"{name} never picked")


def fail_once(up: Upstream, name: str) -> bool:
    """Fail ``name`` once in the next session that gets it. Returns free()'s flag."""
    s, p = session_until(up, name)
    return s.free(p, failed=True)


def names(ps: Iterable[Peer | None]) -> list[str | None]:
    return [p.name if p else None for p in ps]


def test_max_fails_disables_until_fail_timeout_then_one_probe() -> None:
    clock = FakeClock(100.0)
    up = rr("a:1 max_fails=2 fail_timeout=10", "b:1", clock=clock)
    assert fail_once(up, "a:1") is False
    assert fail_once(up, "a:1") is True  # "upstream server temporarily disabled"
    a = up.primary.peers[0]
    assert a.fails == 2 and a.checked == 100
    clock.now = 110.9  # whole seconds: 110 - 100 <= 10, still inside the window
    assert {pick(up).name for _ in range(5)} == {"b:1"}  # type: ignore[union-attr]
    clock.now = 111.0
    s1, probe = session_until(up, "a:1")  # the probe restamps checked ...
    assert probe is a and a.checked == 111
    assert {pick(up).name for _ in range(4)} == {"b:1"}  # type: ignore[union-attr]
    s1.connected(a)  # ... so its success clears the failures: accessed (100) < checked (111)
    assert a.fails == 0
    s1.free(a, failed=False)
    assert "a:1" in names(pick(up) for _ in range(4))


def test_failed_probe_disables_for_another_window() -> None:
    clock = FakeClock(100.0)
    up = rr("a:1 fail_timeout=10", "b:1", clock=clock)
    assert fail_once(up, "a:1") is True
    clock.now = 111
    s, a = session_until(up, "a:1")
    assert s.free(a, failed=True) is True
    assert a.fails == 2 and a.checked == 111
    clock.now = 121
    assert {pick(up).name for _ in range(4)} == {"b:1"}  # type: ignore[union-attr]
    clock.now = 122
    assert "a:1" in names(pick(up) for _ in range(4))


def test_failures_below_max_fails_accumulate_without_decay() -> None:
    clock = FakeClock(100.0)
    up = rr("a:1 max_fails=3 fail_timeout=10", "b:1", clock=clock)
    a = up.primary.peers[0]
    fail_once(up, "a:1")
    clock.now = 105
    s, p = session_until(up, "a:1")
    s.connected(p)
    s.free(p, failed=False)
    assert a.fails == 1  # success inside the window: accessed == checked, nothing cleared
    fail_once(up, "a:1")
    assert a.fails == 2
    clock.now = 200
    s, p = session_until(up, "a:1")  # picked after the window: checked restamped
    s.connected(p)
    assert a.fails == 0
    s.free(p, failed=False)


def test_single_peer_never_counts_failures_and_is_not_retried() -> None:
    up = rr("a:1")
    for _ in range(5):
        s = up.picker()
        assert s.tries == 1
        p = s.get()
        assert p is not None
        assert s.free(p, failed=True) is False
        assert s.tries == 0
        assert p.fails == 0 and p.conns == 0


def test_single_peer_down_or_full_is_busy() -> None:
    assert rr("a:1 down").picker().get() is None
    up = rr("a:1 max_conns=1")
    s = up.picker()
    p = s.get()
    assert p is not None and up.picker().get() is None
    s.free(p, failed=False)
    assert up.picker().get() is p


def test_backup_switch_clears_tried_set_and_sticks() -> None:
    up = rr("a:1", "b:1 backup", "c:1 backup")
    assert up.tries == 3
    s = up.picker()
    a = s.get()
    assert a is not None and a.name == "a:1" and not s.using_backup
    s.free(a, failed=True)
    b = s.get()  # index 0 of the backup list although index 0 was tried in the primary list
    assert b is not None and b.name == "b:1" and s.using_backup
    s.free(b, failed=True)
    c = s.get()
    assert c is not None and c.name == "c:1"
    s.free(c, failed=True)
    assert s.tries == 0 and s.get() is None
    # the next session goes straight to the backups while everything is disabled
    assert up.picker().get() is None


def test_backup_used_only_when_no_primary_is_eligible() -> None:
    up = rr("a:1", "b:1", "z:1 backup")
    assert {pick(up).name for _ in range(6)} == {"a:1", "b:1"}  # type: ignore[union-attr]
    fail_once(up, "a:1")
    assert {pick(up).name for _ in range(4)} == {"b:1"}  # type: ignore[union-attr]
    fail_once(up, "b:1")
    assert pick(up).name == "z:1"  # type: ignore[union-attr]


def test_max_conns_skips_full_peer() -> None:
    up = rr("a:1 weight=5 max_conns=1", "b:1")
    s1 = up.picker()
    a = s1.get()
    assert a is not None and a.name == "a:1" and a.conns == 1
    s2 = up.picker()
    assert s2.get().name == "b:1"  # type: ignore[union-attr]
    s1.free(a, failed=False)
    assert a.conns == 0
    assert up.picker().get() is a


def test_all_failed_returns_none() -> None:
    up = rr("a:1", "b:1", "c:1 down")
    s = up.picker()
    assert s.tries == 2  # down peers do not count
    got = []
    while (p := s.get()) is not None:
        got.append(p.name)
        s.free(p, failed=True)
        if not s.tries:
            break
    assert sorted(got) == ["a:1", "b:1"]
    assert up.picker().get() is None


def test_effective_weight_drops_by_weight_div_max_fails_and_recovers() -> None:
    up = rr("a:1 weight=10 max_fails=3", "b:1")
    a = up.primary.peers[0]
    s = up.picker()
    assert s.get() is a
    s.free(a, failed=True)
    assert a.effective_weight == 10 - 10 // 3
    b = s.get()  # the retry's pass skips the tried peer: no recovery for a
    assert b is not None and b.name == "b:1" and a.effective_weight == 7
    s.free(b, failed=False)
    recovered = []
    for _ in range(4):  # +1 per pass a takes part in, up to its weight
        pick(up)
        recovered.append(a.effective_weight)
    assert recovered == [8, 9, 10, 10]


def test_effective_weight_never_negative() -> None:
    clock = FakeClock(100)
    up = rr("a:1 weight=3 max_fails=1 fail_timeout=5", "b:1", clock=clock)
    a = up.primary.peers[0]
    fail_once(up, "a:1")
    assert a.effective_weight == 0
    clock.now = 106
    s, p = session_until(up, "a:1")
    assert p is a and a.effective_weight >= 1  # recovered in the passes since
    a.effective_weight = 1  # as if picked early in its recovery
    s.free(a, failed=True)  # 1 - 3 clamps to 0
    assert a.effective_weight == 0


def test_max_fails_zero_disables_accounting() -> None:
    up = rr("a:1 max_fails=0", "b:1")
    for _ in range(5):
        assert fail_once(up, "a:1") is False
    a = up.primary.peers[0]
    assert a.effective_weight == 1 and a.usable(up.now())


def test_connected_clears_fails_only_after_a_restamped_check() -> None:
    clock = FakeClock(100)
    up = rr("a:1 max_fails=5", "b:1", clock=clock)
    a = up.primary.peers[0]
    fail_once(up, "a:1")
    s = up.picker()
    s.connected(a)
    assert a.fails == 1
    a.checked += 1  # as a pick after fail_timeout would do
    s.connected(a)
    assert a.fails == 0


def test_least_conn_prefers_fewest_conns_per_weight() -> None:
    up = rr("a:1 weight=3", "b:1 weight=2", kind="least_conn")
    a, b = up.primary.peers
    a.conns, b.conns = 2, 1  # 2/3 vs 1/2: b is less loaded
    assert up.picker().get() is b
    a.conns, b.conns = 1, 1  # 1/3 vs 1/2
    assert up.picker().get() is a


def test_least_conn_tie_goes_through_smooth_wrr() -> None:
    up = rr("a:1", "b:1 weight=2", "c:1", kind="least_conn")
    held = []
    for _ in range(3):
        s = up.picker()
        held.append(s.get())
    # all idle: WRR among the three picks b (heaviest); then a and c tie at 0: WRR picks a;
    # then c is the only idle one.
    assert names(held) == ["b:1", "a:1", "c:1"]


def test_least_conn_single_and_backup() -> None:
    up = rr("a:1", kind="least_conn")
    assert up.picker().get() is up.primary.peers[0]
    up = rr("a:1 down", "b:1 backup", kind="least_conn")
    assert up.picker().get().name == "b:1"  # type: ignore[union-attr]


class Script:
    """An rng that replays given draws."""

    def __init__(self, draws: Iterable[int]):
        self.draws = list(draws)

    def __call__(self) -> int:
        return self.draws.pop(0)


def test_random_weighted_ranges() -> None:
    # ranges: a [0,1), b [1,3), c [3,4)
    up = rr("a:1", "b:1 weight=2", "c:1", kind="random", rng=Script([0, 1, 2, 3, 7]))
    assert names(up.picker().get() for _ in range(5)) == ["a:1", "b:1", "b:1", "c:1", "c:1"]


def test_random_redraws_ineligible_and_counts_skips() -> None:
    up = rr("a:1", "b:1 weight=2", "c:1 down", kind="random", rng=Script([3, 3, 0]))
    s = up.picker()
    assert s.get().name == "a:1"  # type: ignore[union-attr]
    assert s._skips == 2


def test_random_falls_back_to_round_robin_after_20_skips() -> None:
    up = rr("a:1 weight=8 down", "b:1", "c:1", kind="random", rng=lambda: 0)
    s = up.picker()
    p = s.get()
    assert p is not None and p.name == "b:1"  # round robin's first choice
    assert s._skips == MAX_HASH_TRIES + 1
    s.free(p, failed=True)
    assert s.get().name == "c:1"  # type: ignore[union-attr]  # stays on round robin


def test_random_seeded_distribution_follows_weights() -> None:
    gen = random.Random(42)
    up = rr("a:1", "b:1 weight=3", kind="random", rng=lambda: gen.getrandbits(31))
    counts = Counter(pick(up).name for _ in range(4000))  # type: ignore[union-attr]
    assert 2800 < counts["b:1"] < 3200


def test_random_two_prefers_less_loaded_and_ties_go_to_second() -> None:
    up = rr("a:1", "b:1", "c:1", kind="random_two", rng=Script([0, 0, 2]))
    a, _b, c = up.primary.peers
    s = up.picker()
    assert s.get() is c  # a, a again (same peer: redraw), then c; tie -> second draw
    assert s._skips == 2  # the accepted first draw counts too
    c.conns = 0
    a.conns = 1
    up._rng = Script([0, 2])
    assert up.picker().get() is c  # c less loaded
    a.conns, c.conns = 0, 2
    up._rng = Script([0, 2])
    assert up.picker().get() is a  # second draw (c) strictly more loaded: first wins


def test_max_tries_caps_default_tries() -> None:
    up = rr("a:1", "b:1", "c:1", "d:1 down", "e:1 backup")
    assert up.tries == 4
    assert up.picker(max_tries=2).tries == 2
    assert up.picker(max_tries=9).tries == 4
    assert up.picker(max_tries=0).tries == 4
    s = up.picker(max_tries=2)
    for _ in range(2):
        p = s.get()
        assert p is not None
        s.free(p, failed=True)
    assert s.tries == 0


def test_hash_falls_back_to_round_robin_after_20_skips() -> None:
    up = rr("a:1 weight=1000 down", "b:1", "c:1", kind="hash")
    s = up.picker(b"some key")
    p = s.get()
    assert s._skips == MAX_HASH_TRIES + 1
    assert p is not None and p.name == "b:1"
    s2 = up.picker(b"some key")
    assert s2.get().name == "c:1"  # type: ignore[union-attr]  # round robin moved on


def test_consistent_hash_falls_back_to_round_robin_after_20_skips() -> None:
    up = rr("a:1 weight=50 down", "b:1", kind="hash_consistent")
    # find a key whose walk starts deep inside a's points
    for i in range(10000):
        s = up.picker(b"k%d" % i)
        p = s.get()
        if s._skips > MAX_HASH_TRIES:
            assert p is not None and p.name == "b:1"
            return
    raise AssertionError("no key walked more than 20 points")


def test_consistent_hash_retry_continues_along_ring() -> None:
    up = rr("a:1", "b:1", "c:1", kind="hash_consistent")
    s = up.picker(b"10.1.2.3")
    first = s.get()
    assert first is not None
    s.free(first, failed=True)
    second = s.get()
    assert second is not None and second is not first
    # the same choice is what a fresh session makes once the first server is gone
    up2 = rr(*(f"{n}:1{' down' if n == first.name[0] else ''}" for n in "abc"),
             kind="hash_consistent")
    assert up2.picker(b"10.1.2.3").get().name == second.name  # type: ignore[union-attr]


def test_hash_retry_continues_rehash_sequence() -> None:
    up = rr("a:1", "b:1", "c:1", "d:1", kind="hash")
    s = up.picker(b"abc")
    p = s.get()
    assert p is not None and s._rehash == 1
    s.free(p, failed=True)
    q = s.get()
    assert q is not None and q is not p and s._rehash >= 2


@pytest.mark.parametrize("kind", ["hash", "hash_consistent"])
def test_empty_key_uses_round_robin(kind: str) -> None:
    up = rr("a:1 weight=5", "b:1", "c:1", kind=kind)
    seq = "".join(pick(up, key).name[0] for key in [None, b""] * 4 + [None])  # type: ignore[union-attr]
    assert seq[:7] == "aabacaa"


def test_same_key_same_peer() -> None:
    for kind in ("hash", "hash_consistent"):
        up = rr("a:1", "b:1 weight=2", "c:1", kind=kind)
        assert len({pick(up, b"client-7").name for _ in range(10)}) == 1  # type: ignore[union-attr]


# -- validation -----------------------------------------------------------------------------


def test_backup_with_hash_and_random_is_a_warning_not_an_error() -> None:
    for kind in ("hash", "hash_consistent", "random", "random_two"):
        assert validate(Method(kind), peers("a:1", "b:1 backup")) == []
        assert "round robin" in warnings(Method(kind), peers("a:1", "b:1 backup"))[0]
    for kind in ("round_robin", "least_conn"):
        assert validate(Method(kind), peers("a:1", "b:1 backup")) == []
        assert warnings(Method(kind), peers("a:1", "b:1 backup")) == []


def test_hash_reaches_backup_only_through_round_robin_fallback() -> None:
    """nginx 1.22.1 with ``server ... backup`` written before ``hash``: backups get no ring
    points; when every primary is down the ring walk gives up after 20 points and round robin
    switches to the backup list."""
    for kind in ("hash", "hash_consistent"):
        up = rr("a:1 down", "b:1 down", "c:1 backup", kind=kind)
        s = up.picker(b"client-1")
        got = s.get()
        assert got is not None and got.name == "c:1" and s.using_backup


def test_validate_weight_zero_and_no_servers() -> None:
    assert validate(Method("round_robin"), peers("a:1 weight=0")) == [
        'invalid parameter "weight=0"'
    ]
    assert validate(Method("round_robin"), peers("a:1 backup"), "grp") == [
        'no servers in upstream "grp"'
    ]
    with pytest.raises(ValueError, match="weight=0"):
        Upstream("u", peers("a:1 weight=0"), Method("round_robin"))


def test_method_parsing() -> None:
    """One parser for the YAML keys and nginx's words: the schema's."""
    hashed = method_from_nginx(["hash", "$remote_addr"])
    assert hashed.method == Method("hash") and hashed.key is not None
    assert hashed.key.text == "$remote_addr"
    assert method_from_nginx(["hash", "$remote_port", "consistent"]).method == Method("hash_consistent")
    assert method_from_nginx(["random", "two", "least_conn"]).method == Method("random_two")
    assert method_from_nginx(["random", "two"]).method == Method("random_two")
    assert method_from_nginx(["random"]).method == Method("random")
    assert method_from_nginx(["least_conn"]).method == Method("least_conn")
    with pytest.raises(UnitError, match='invalid parameter "two2"'):
        method_from_nginx(["random", "two2"])
    with pytest.raises(UnitError, match='invalid parameter "x"'):
        method_from_nginx(["hash", "$remote_addr", "x"])
    with pytest.raises(UnitError, match='invalid number of arguments in "hash" directive'):
        method_from_nginx(["hash"])
    with pytest.raises(ValueError):
        Method("fastest")
