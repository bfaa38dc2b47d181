"""The health-check state machine and its effect on the balancer, socket-free."""

from __future__ import annotations

from tlsgw.balancer import CheckedPeer, Method, PeerConfig, Upstream
from tlsgw.health.checker import Check, Transition, transition_line


def test_starts_up_and_first_probe_is_due_at_once():
    c = Check(fails=2, passes=2, interval=5, now=100.0)
    assert c.up and c.is_due(100.0)


def test_down_after_fails_consecutive_failures():
    c = Check(fails=2, passes=1, interval=5, now=0.0)
    assert c.record(False, 0.0, "timed out") is None
    assert c.up
    t = c.record(False, 5.0, "timed out reading the response")
    assert t == Transition(False, "timed out reading the response")
    assert not c.up
    assert c.record(False, 10.0, "x") is None  # already down: no second transition


def test_a_pass_resets_the_failure_count():
    c = Check(fails=2, now=0.0)
    c.record(False, 0.0, "x")
    c.record(True, 5.0)
    assert c.record(False, 10.0, "x") is None
    assert c.up


def test_up_after_passes_consecutive_passes():
    c = Check(fails=1, passes=3, now=0.0)
    assert c.record(False, 0.0, "refused") == Transition(False, "refused")
    assert c.record(True, 1.0) is None
    assert c.record(False, 2.0, "x") is None  # breaks the run of passes
    assert c.record(True, 3.0) is None
    assert c.record(True, 4.0) is None
    t = c.record(True, 5.0, "check passed")
    assert t is not None and t.up and c.up


def test_schedule_interval_and_jitter():
    c = Check(interval=2.0, jitter=1.0, now=0.0, rand=lambda: 0.5)
    c.record(True, 10.0)
    assert c.due == 12.5
    assert not c.is_due(12.4) and c.is_due(12.5)
    c2 = Check(interval=2.0, now=0.0)
    c2.record(False, 3.0, "x")
    assert c2.due == 5.0


def test_transition_line_wording():
    line = transition_line("127.0.0.1:6002", "chat",
                           Transition(False, "timed out reading the response"), 1, 1)
    assert line == ('upstream server 127.0.0.1:6002 of "chat" is down (timed out reading the '
                    "response; 1 up, 1 down)")
    assert transition_line("a:1", "u", Transition(True, "check passed"), 2, 0).endswith(
        "is up (check passed; 2 up, 0 down)")


def _upstream(method: str, names: list[str], health: bytearray, **kw):
    peers = [PeerConfig(server=n, name=n, **kw) for n in names]
    return Upstream("u", peers, Method(method), clock=lambda: 1000.0,
                    health=(health, {n: i for i, n in enumerate(names)}))


def _picks(u: Upstream, n: int, key: bytes | None = None) -> list[str]:
    out = []
    for _ in range(n):
        p = u.picker(key)
        peer = p.get()
        out.append(peer.name if peer else None)
        if peer is not None:
            p.free(peer, failed=False)
    return out


def test_round_robin_skips_a_down_server():
    zone = bytearray(b"\x01\x01\x01")
    u = _upstream("round_robin", ["a:1", "b:1", "c:1"], zone)
    assert all(isinstance(p, CheckedPeer) for p in u.peers)
    assert set(_picks(u, 6)) == {"a:1", "b:1", "c:1"}
    zone[1] = 0
    assert set(_picks(u, 6)) == {"a:1", "c:1"}
    zone[1] = 1
    assert "b:1" in _picks(u, 6)


def test_ketama_takes_the_next_points_of_the_ring():
    names = [f"10.0.0.{i}:80" for i in range(1, 5)]
    zone = bytearray(b"\x01" * 4)
    u = _upstream("hash_consistent", names, zone)
    keys = [b"key%d" % i for i in range(200)]
    before = {k: _picks(u, 1, k)[0] for k in keys}
    zone[2] = 0
    after = {k: _picks(u, 1, k)[0] for k in keys}
    for k in keys:
        if before[k] != names[2]:
            assert after[k] == before[k]  # only the down server's keys move
        else:
            assert after[k] != names[2]
    # where they go is where nginx sends keys of a failed server: the same as max_fails would
    zone[2] = 1
    ref = _upstream("hash_consistent", names, bytearray(b"\x01" * 4), max_fails=1)
    failed = ref.peers[2]
    failed.fails, failed.checked = 1, 1000
    assert {k: _picks(ref, 1, k)[0] for k in keys} == after


def test_all_down_is_no_live_upstreams_and_single_server_too():
    zone = bytearray(b"\x00\x00")
    u = _upstream("round_robin", ["a:1", "b:1"], zone)
    assert u.picker().get() is None
    one = bytearray(b"\x00")
    single = _upstream("round_robin", ["a:1"], one)
    assert single.picker().get() is None
    one[0] = 1
    assert single.picker().get() is not None


def test_health_and_max_fails_both_apply():
    zone = bytearray(b"\x01\x01")
    u = _upstream("round_robin", ["a:1", "b:1"], zone, max_fails=1, fail_timeout=10)
    a = u.peers[0]
    a.fails, a.checked = 1, 1000  # failed passively, inside its window
    assert set(_picks(u, 4)) == {"b:1"}  # healthy but failed: skipped
    zone[1] = 0
    assert u.picker().get() is None  # b is down by the check, a by max_fails


def test_upstream_without_health_has_plain_peers():
    u = Upstream("u", [PeerConfig(server="a:1", name="a:1")], Method("round_robin"))
    assert type(u.peers[0]).__name__ == "Peer"


def test_checked_peer_is_usable_exactly_as_a_peer_while_healthy():
    import itertools

    from tlsgw.balancer import Peer

    zone = bytearray(b"\x01")
    for down, fails, checked, conns in itertools.product(
            (False, True), (0, 1, 3), (990, 1000), (0, 2)):
        cfg = PeerConfig(server="a:1", name="a:1", max_fails=2, fail_timeout=5, max_conns=2,
                         down=down)
        plain, checked_peer = Peer(cfg, 0), CheckedPeer(cfg, 0, zone, 0)
        for p in (plain, checked_peer):
            p.fails, p.checked, p.conns = fails, checked, conns
        zone[0] = 1
        assert checked_peer.usable(1000) == plain.usable(1000)
        zone[0] = 0
        assert not checked_peer.usable(1000)
