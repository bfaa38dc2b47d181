"""The data path without sockets: flow control reasons, and a session driven through a mock
transport on a fake loop (tests/mockio.py): data order, held data, pause/resume in both
directions, half-close, EOF while connecting, connect failures, the idle timeout."""

from __future__ import annotations

import pytest

from tlsgw.proxy.flow import BACKPRESSURE, HELD, FlowControl, Reason
from tlsgw.proxy.pump import State


# ---- flow control -------------------------------------------------------------------------
class Reading:
    """Records pause_reading/resume_reading calls, and refuses unbalanced ones."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False

    def pause_reading(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.calls.append("pause")

    def resume_reading(self) -> None:
        assert self.paused, "resumed while reading"
        self.paused = False
        self.calls.append("resume")


def test_flow_first_reason_pauses_last_reason_resumes():
    t = Reading()
    flow = FlowControl(t)
    assert not flow.paused and flow.why() == Reason(0)
    flow.pause(HELD)
    flow.pause(BACKPRESSURE)
    assert t.calls == ["pause"] and flow.why() == Reason.HELD | Reason.BACKPRESSURE
    flow.resume(HELD)  # BACKPRESSURE still holds: this was issue 7's hole
    assert t.calls == ["pause"] and flow.paused and flow.why() == Reason.BACKPRESSURE
    flow.resume(BACKPRESSURE)
    assert t.calls == ["pause", "resume"] and not flow.paused


@pytest.mark.parametrize("order", [(HELD, BACKPRESSURE), (BACKPRESSURE, HELD)])
def test_flow_reasons_clear_in_any_order(order):
    t = Reading()
    flow = FlowControl(t)
    flow.pause(BACKPRESSURE)
    flow.pause(HELD)
    flow.resume(order[0])
    assert t.paused
    flow.resume(order[1])
    assert not t.paused and t.calls == ["pause", "resume"]


def test_flow_reasons_are_idempotent():
    t = Reading()
    flow = FlowControl(t)
    flow.resume(HELD)  # never set: nothing to do
    assert t.calls == []
    flow.pause(HELD)
    flow.pause(HELD)  # set twice is set once
    flow.resume(HELD)
    assert t.calls == ["pause", "resume"]
    flow.resume(HELD)  # cleared twice is cleared once
    assert t.calls == ["pause", "resume"]


def test_flow_nested_pauses_and_resumes_repeatedly():
    t = Reading()
    flow = FlowControl(t)
    for _ in range(3):
        flow.pause(BACKPRESSURE)
        flow.pause(HELD)
        flow.resume(BACKPRESSURE)
        flow.pause(BACKPRESSURE)
        flow.resume(HELD)
        flow.resume(BACKPRESSURE)
    assert t.calls == ["pause", "resume"] * 3


def test_flow_reasons_have_names():
    assert repr(FlowControl(Reading())) == "<FlowControl <Reason: 0>>"
    flow = FlowControl(Reading())
    flow.pause(HELD)
    assert "HELD" in repr(flow)


# ---- the session's pump -------------------------------------------------------------------
def test_bytes_keep_their_order_through_hold_and_connect(harness):
    h = harness().start()
    h.client.feed(b"one ")
    h.client.feed(b"two ")
    assert h.connects and h.session.state is State.CONNECTING  # held
    up = h.connect()
    assert up.writes == [b"one two "]  # the held bytes, flushed with one write
    h.client.feed(b"three")
    up.feed(b"reply")
    assert up.data == b"one two three"
    assert h.client.data == b"reply"
    assert h.session.bytes_received == 13 and h.session.up_received == 5


def test_held_bytes_pause_the_client_until_connected(harness):
    h = harness("proxy_buffer_size: 8\n").start()
    h.client.feed(b"1234")
    assert h.client.reading
    h.client.feed(b"5678")  # 8 >= 8: paused until connected
    assert not h.client.reading and h.session.client_flow.why() == Reason.HELD
    up = h.connect()  # 8 bytes are not over the high-water mark (8)
    assert up.data == b"12345678" and not up.writing_paused
    assert h.client.reading and h.client.pause_calls == 1 and h.client.resume_calls == 1


def test_held_flush_past_the_upstream_high_water_mark_keeps_the_client_paused(harness):
    """Issue 7, defect 2, without sockets: the flush of the held bytes fills the upstream
    transport beyond its high-water mark; the end of the hold must not resume the client."""
    h = harness("proxy_buffer_size: 8\n").start()
    h.client.feed(b"0123456789abcdef")  # past proxy_buffer_size: HELD
    up = h.connect()  # the flush (16 bytes) crosses the upstream's high-water mark (8)
    assert up.writing_paused
    assert not h.client.reading, "the client was resumed while the upstream is over its high-water mark"
    assert h.session.client_flow.why() == Reason.BACKPRESSURE
    up.drain()
    assert h.client.reading and h.session.client_flow.why() == Reason(0)


def test_upstream_backpressure_pauses_the_client(harness):
    h = harness("proxy_buffer_size: 10\n").start()
    up = h.connect()
    h.client.feed(b"x" * 6)
    assert h.client.reading
    h.client.feed(b"x" * 6)  # 12 > 10 buffered toward the upstream
    assert not h.client.reading
    up.drain(5)  # 7 left: above the low-water mark (10 // 4)
    assert not h.client.reading
    up.drain()
    assert h.client.reading
    assert (h.client.pause_calls, h.client.resume_calls) == (1, 1)


def test_client_backpressure_pauses_the_upstream(harness):
    h = harness("proxy_buffer_size: 10\n").start()
    up = h.connect()
    up.feed(b"y" * 11)
    assert not up.reading and h.session.upstream_flow.why() == Reason.BACKPRESSURE
    assert h.client.reading  # the other direction is not affected
    h.client.drain()
    assert up.reading
    assert h.client.data == b"y" * 11


def test_half_close_off_client_eof_ends_the_session(harness):
    h = harness().start()
    up = h.connect()
    h.client.feed(b"last words")
    h.client.feed_eof()
    assert h.session.finished and h.session.status == 200
    assert up.closed and not up.aborted and h.client.closed  # close() flushes what was written
    assert up.data == b"last words"
    assert any("client disconnected" in m for _, m in h.log.lines), h.log.text()


def test_half_close_on_passes_the_eof_and_keeps_the_other_direction(harness):
    h = harness("proxy_half_close: on\n").start()
    up = h.connect()
    h.client.feed(b"request")
    h.client.feed_eof()
    assert up.eof_written and not h.session.finished
    up.feed(b"response")
    assert h.client.data == b"response"
    up.feed_eof()
    assert h.client.eof_written or h.session.finished
    assert h.session.finished and h.session.status == 200


def test_client_eof_while_connecting_delivers_the_held_bytes_then_ends(harness):
    h = harness().start()
    h.client.feed(b"early")
    h.client.feed_eof()
    assert not h.session.finished  # nginx completes the connect and delivers
    up = h.connect()
    assert up.data == b"early"
    assert h.session.finished and up.closed and not up.aborted


def test_client_eof_while_connecting_with_half_close_on(harness):
    h = harness("proxy_half_close: on\n").start()
    h.client.feed(b"early")
    h.client.feed_eof()
    up = h.connect()
    assert up.data == b"early" and up.eof_written and not h.session.finished
    up.feed(b"answer")
    assert h.client.data == b"answer"


def test_refused_peer_is_counted_and_the_next_one_tried(harness):
    h = harness(peers=("10.0.0.2:80", "10.0.0.3:80")).start()
    h.client.feed(b"held across attempts")
    h.connects[0].refuse()
    assert len(h.connects) == 2 and h.connects[1].address != h.connects[0].address
    up = h.connect()
    assert up.data == b"held across attempts"
    assert [a.name for a in h.session.attempts] == [h.connects[0].address, h.connects[1].address]
    assert any(lvl == "error" and "connect() failed (111: Connection refused) while connecting "
               "to upstream" in m for lvl, m in h.log.lines), h.log.text()


def test_last_peer_refused_ends_with_502(harness):
    h = harness().start()
    h.connects[0].refuse()
    assert h.session.finished and h.session.status == 502 and h.client.closed


def test_connect_timeout_is_a_failed_attempt(harness):
    h = harness(top="proxy_connect_timeout: 2s").start()
    h.loop.advance(1.9)
    assert not h.session.finished
    h.loop.advance(0.2)
    assert h.session.finished and h.session.status == 502
    assert any("upstream timed out (110: Connection timed out) while connecting to upstream" in m
               for _, m in h.log.lines), h.log.text()


def test_idle_timeout_rearms_on_activity_then_ends(harness):
    h = harness("proxy_timeout: 10s\n").start()
    up = h.connect()
    h.loop.advance(6)
    h.client.feed(b"still here")  # activity: the deadline moves
    h.loop.advance(6)
    assert not h.session.finished
    h.loop.advance(5)
    assert h.session.finished and up.aborted and h.client.aborted
    assert any("connection timed out" in m for _, m in h.log.lines), h.log.text()


def test_upstream_side_lets_go_of_the_session_when_lost(harness):
    h = harness().start()
    up = h.connect()
    side = h.session.upstream
    up.feed_eof()
    assert h.session.finished and side.session is None  # no cycle left behind


def test_the_record_is_what_the_access_line_reads(harness):
    from tlsgw.proxy.record import Status
    from tlsgw.variables import Template

    h = harness(peers=("10.0.0.2:80", "10.0.0.3:80")).start()
    h.client.feed(b"abc")
    h.loop.advance(0.25)
    h.connects[0].refuse()
    h.loop.advance(0.5)
    h.connects[1].refuse()
    assert h.session.status == Status.BAD_GATEWAY
    line = Template("$status $upstream_addr $upstream_session_time $upstream_connect_time "
                    "$bytes_received").render(h.session)
    assert line == f"502 {h.connects[0].address}, {h.connects[1].address} 0.250, 0.500 -, - 3"
