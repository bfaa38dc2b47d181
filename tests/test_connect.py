"""The connect state machine without sockets (tests/mockio.py): nginx's attempt loop,
``proxy_next_upstream*`` and the failure accounting of the balancer's peers."""

from __future__ import annotations

from mockio import Harness

from tlsgw.proxy import messages
from tlsgw.proxy.pump import State
from tlsgw.proxy.record import Status

PEERS = ("10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")


def lines(h: Harness, text: str) -> list[tuple[str, str]]:
    return [(lvl, m) for lvl, m in h.log.lines if text in m]


def test_next_upstream_off_stops_after_the_first_failure(harness):
    h = harness("proxy_next_upstream: off\n", peers=PEERS).start()
    h.connects[0].refuse()
    assert len(h.connects) == 1 and h.session.status == Status.BAD_GATEWAY
    assert len(h.session.attempts) == 1


def test_next_upstream_tries_caps_the_attempts(harness):
    h = harness("proxy_next_upstream_tries: 2\n", peers=PEERS).start()
    h.connects[0].refuse()
    h.connects[1].refuse()
    assert len(h.connects) == 2 and h.session.status == Status.BAD_GATEWAY
    assert len(lines(h, "connect() failed (111: Connection refused)")) == 2


def test_next_upstream_timeout_stops_new_attempts_but_never_cuts_one_short(harness):
    h = harness("proxy_next_upstream_timeout: 1s\n", peers=PEERS,
                top="proxy_connect_timeout: 800ms").start()
    h.loop.advance(0.85)  # the first attempt timed out at 0.8 s: 0.8 < 1 s, so a second starts
    assert len(h.connects) == 2 and not h.session.finished
    h.loop.advance(0.7)  # it runs its full 800 ms (past the 1 s budget) and times out
    assert not h.session.finished
    h.loop.advance(0.1)
    assert len(h.connects) == 2 and h.session.status == Status.BAD_GATEWAY
    assert [round(a.session_time, 3) for a in h.session.attempts] == [0.8, 0.8]


def test_a_timed_out_attempt_goes_on_to_the_next_peer_which_then_proxies(harness):
    """The connect timer cancels the connect task; the task takes that back (uncancel) and
    goes on: the next peer connects and the session proxies in the same task."""
    h = harness(peers=PEERS[:2], top="proxy_connect_timeout: 500ms").start()
    h.loop.advance(0.6)
    assert len(h.connects) == 2 and not h.session.finished
    (level, text), = lines(h, "upstream timed out (110: Connection timed out)")
    assert level == "error" and f'upstream: "{PEERS[0]}"' in text
    assert h.session.attempts[0].failure == "timeout"
    upstream = h.connect()
    assert h.session.state is State.PROXYING and h.session.connect_task is None
    h.client.feed(b"hello")
    assert upstream.data == b"hello"
    h.loop.advance(1.0)  # the first attempt's timer is gone: nothing fires any more
    assert h.session.state is State.PROXYING


def test_failed_peer_is_disabled_after_max_fails(harness):
    h = harness(peers=("10.0.0.2:80 max_fails=1", "10.0.0.3:80")).start()
    first = h.connects[0].address
    h.connects[0].refuse()
    assert lines(h, messages.PEER_DISABLED)[0][0] == "warn"
    h.connect()
    _, _ = h.another()  # the disabled peer is skipped by the next session
    assert h.connects[-1].address != first


def test_client_gone_while_connecting_is_not_a_peer_failure(harness):
    h = harness(peers=("10.0.0.2:80 max_fails=1",)).start()
    h.client.reset()
    assert h.session.finished and h.session.status == Status.OK
    assert h.connects[0].future.cancelled()
    h.loop.run()
    session, _ = h.another()  # the lone peer was not marked failed: it is tried again
    assert len(h.connects) == 2 and not session.finished
    assert not lines(h, "no live upstreams")


def test_no_live_upstreams(harness):
    h = harness(peers=("10.0.0.2:80 down",)).start()
    assert h.session.status == Status.BAD_GATEWAY and not h.connects
    level, text = lines(h, messages.NO_LIVE_UPSTREAMS)[0]
    assert level == "error" and 'upstream: "backend"' in text
    assert [a.name for a in h.session.attempts] == ["backend"]


def test_connected_peer_is_freed_once_at_the_end(harness):
    h = harness(peers=("10.0.0.2:80 max_conns=1",)).start()
    up = h.connect()
    session2, _ = h.another()  # max_conns reached: no peer for the second session
    assert session2.status == Status.BAD_GATEWAY
    up.feed_eof()
    assert h.session.finished
    session3, _ = h.another()  # freed: a connection is allowed again
    assert not session3.finished and len(h.connects) == 2
