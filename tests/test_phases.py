"""Connection set-up phases (tlsgw.proxy.phases), the worker context and the session's state,
without sockets: a plain listener's factory is the pump's Session class itself, a TLS listener
runs the ssl phase in front of it, and a session walks NEW -> ACCEPTED -> CONNECTING ->
PROXYING -> ENDED on a fake loop (tests/mockio.py)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from mockio import FakeLoop, Harness, RecordingLog

from tlsgw.balancer import Upstream
from tlsgw.config.load import load_config
from tlsgw.proxy import phases
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.phases import Phase
from tlsgw.proxy.pump import Session, State
from tlsgw.proxy.realip import HeaderReader, ProxyProtocolSession
from tlsgw.runtime.generation import build
from tlsgw.tls.transport import TLSAccept


def test_phases_are_nginx_order():
    assert [p.name for p in sorted(Phase)] == ["POST_ACCEPT", "PREACCESS", "ACCESS", "SSL",
                                               "PREREAD", "CONTENT", "LOG"]
    order = [phase for phase, _ in phases.BEFORE_CONTENT]
    assert order == sorted(order) and all(p < Phase.CONTENT for p in order)


_GENERATIONS: list[object] = []


def _listener(tmp_path: Path, listen: str, extra: str = "") -> tuple[phases.Listener, FakeLoop]:
    path = tmp_path / "gw.yaml"
    path.write_text(f"servers:\n  - listen: {listen}\n    proxy_pass: 127.0.0.1:9\n{extra}")
    cfg = load_config(str(path))
    loop = FakeLoop()
    context = WorkerContext(loop, RecordingLog())  # type: ignore[arg-type]
    gen = build(cfg, allocate=False)
    _GENERATIONS.append(gen)  # its contexts' callbacks live as long as it does
    for s in cfg.servers:
        upstream = Upstream(s.upstream.name, s.upstream.peer_configs(), s.upstream.method)
        gen.runtimes[s.index].bind(upstream)
    group = cfg.groups[0]
    return phases.Listener(group, gen.routes[gen.route_key(group)].by_index, context), loop


def test_a_plain_listener_gets_the_pump_protocol_directly(tmp_path):
    listener, _ = _listener(tmp_path, "127.0.0.1:8000")
    factory, used = phases.build(listener)
    assert used == ()
    # no Python frame between the accept and the session: the class itself, arguments bound
    assert isinstance(factory, functools.partial) and factory.func is Session
    session = factory()
    assert type(session) is Session and session.state is State.NEW
    assert session.ctx is listener.context and session.rt is listener.default
    assert session.group is None and session.listen_name == "127.0.0.1:8000"


def test_a_tls_listener_runs_the_ssl_phase_before_content(tmp_path, pki):
    listener, _ = _listener(tmp_path, "127.0.0.1:8443 ssl",
                            f"    ssl_certificate: {pki.server}\n"
                            f"    ssl_certificate_key: {pki.server_key}\n")
    loop = uvloop.new_event_loop()  # uvloop's SSLProtocol takes nothing else; never run
    listener = dataclasses.replace(listener, context=WorkerContext(loop, RecordingLog()))
    try:
        factory, used = phases.build(listener)
        assert used == (Phase.SSL,)
        proto = factory()
        assert isinstance(proto, TLSAccept)
        session = proto.session
        assert type(session) is Session and session.state is State.NEW
        assert session.group == listener.servers  # SNI may choose among the listener's servers
    finally:
        loop.close()


def test_a_proxy_protocol_listener_reads_the_header_first(tmp_path):
    listener, _ = _listener(tmp_path, "127.0.0.1:8000 proxy_protocol",
                            "    proxy_protocol_timeout: 7s\n    set_real_ip_from: 10.0.0.0/8\n")
    factory, used = phases.build(listener)
    assert used == (Phase.POST_ACCEPT,)
    reader = factory()
    assert isinstance(reader, HeaderReader) and reader.inner is reader.session
    session = reader.session
    assert type(session) is ProxyProtocolSession and session.state is State.NEW
    assert session.ctx is listener.context and session.rt is listener.default
    assert session.group is None
    assert reader.timeout == 7 and [t.text for t in reader.trusted] == ["10.0.0.0/8"]


def test_a_tls_proxy_protocol_listener_reads_the_header_before_the_handshake(tmp_path, pki):
    listener, _ = _listener(tmp_path, "127.0.0.1:8443 ssl proxy_protocol",
                            f"    ssl_certificate: {pki.server}\n"
                            f"    ssl_certificate_key: {pki.server_key}\n")
    loop = uvloop.new_event_loop()  # uvloop's SSLProtocol takes nothing else; never run
    listener = dataclasses.replace(listener, context=WorkerContext(loop, RecordingLog()))
    try:
        factory, used = phases.build(listener)
        assert used == (Phase.POST_ACCEPT, Phase.SSL)
        reader = factory()
        assert isinstance(reader, HeaderReader) and isinstance(reader.inner, TLSAccept)
        assert reader.inner.session is reader.session
        assert type(reader.session) is ProxyProtocolSession
        assert reader.session.group == listener.servers
    finally:
        loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, "")
    yield h
    h.close()


def test_session_states_and_the_worker_context(harness):
    h = harness
    s = h.session
    assert s.state is State.NEW and not s.finished
    s.handshake_failed(ConnectionResetError())  # never accepted: nothing to end
    assert s.state is State.NEW
    h.start()
    assert s.state is State.CONNECTING and s.conn_id == 1 and h.context.sessions == {s}
    up = h.connect()
    assert s.state is State.PROXYING and s.write_upstream is not None
    other, client = h.another()
    assert other.conn_id == 2 and h.context.sessions == {s, other}
    h.context.draining = True
    h.client.feed_eof()
    assert s.state is State.ENDED and s.finished and up.closed
    assert h.context.sessions == {other} and not h.context.drained.is_set()
    client.reset()
    assert other.finished and h.context.sessions == set() and h.context.drained.is_set()


def test_a_tls_session_is_accepted_before_its_handshake_and_ends_if_it_fails(harness):
    h = harness
    s = h.session
    s.group = {}  # as the ssl phase makes it: the handshake comes between accept and content
    s.accepted(h.client)  # TLSAccept.connection_made: the raw transport
    assert s.state is State.ACCEPTED and h.context.sessions == {s} and not h.connects
    s.handshake_failed(ConnectionResetError(104, "Connection reset by peer"))
    assert s.state is State.ENDED and s.status == 500 and h.context.sessions == set()
    s.handshake_failed(ConnectionResetError())  # once only
    assert [lvl for lvl, _ in h.log.lines].count("info") == 2  # connected, handshake failed


def test_worker_context_forget_ends_a_drain():
    ctx = WorkerContext(FakeLoop(), RecordingLog())  # type: ignore[arg-type]
    a, b = object(), object()
    ctx.sessions.update((a, b))
    ctx.draining = True
    ctx.forget(a)
    assert not ctx.drained.is_set()
    ctx.forget(b)
    ctx.forget(b)
    assert ctx.drained.is_set() and next(ctx.conn_ids) == 1
