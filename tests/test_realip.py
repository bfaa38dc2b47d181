"""The post-accept phase without sockets (tlsgw/proxy/realip.py): the PROXY protocol header
read from a mock transport on a fake loop, realip, the hand-off to the session with the bytes
that followed, the timeout, and the header sent upstream ahead of the held bytes."""

from __future__ import annotations

import socket
import struct

import pytest
from mockio import Harness, MockTransport

from tlsgw.proxy import proxyproto
from tlsgw.proxy.realip import ProxyProtocolSession, wrap

V2 = (proxyproto.SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 12 + 7)
      + socket.inet_aton("203.0.113.9") + socket.inet_aton("198.51.100.1") + struct.pack("!HH", 777, 443)
      + struct.pack("!BH", 0x02, 4) + b"a.ex")


def accept(h: Harness, peer: tuple[str, int] = ("127.0.0.1", 5000)) -> tuple[ProxyProtocolSession, MockTransport]:
    reader = wrap(lambda: ProxyProtocolSession(h.context, h.rt, "127.0.0.1:8000"), h.rt)()
    session = reader.session
    client = MockTransport(h.loop, reader, peername=peer)
    h.loop.call(reader.connection_made, client)
    return session, client


@pytest.mark.parametrize("step", [1, 2, 7, len(V2)])
def test_header_in_pieces_then_the_session_with_what_followed(harness, step):
    h = harness("set_real_ip_from: 127.0.0.0/8\n")
    session, client = accept(h)
    assert session.conn_id == 1 and session in h.context.sessions  # counted at the accept
    data = V2 + b"after"
    for i in range(0, len(V2), step):
        assert not h.connects  # nothing happens before the header is whole
        client.feed(data[i : min(i + step, len(V2))])
    client.feed(b"after")
    assert client.protocol is session  # handed over
    assert (session.remote_addr, session.remote_port) == ("203.0.113.9", 777)
    assert (session.realip_remote_addr, session.realip_remote_port) == ("127.0.0.1", 5000)
    assert session.proxy_protocol_tlv("authority") == "a.ex"
    up = h.connect()
    assert up.data == b"after"
    assert "client 127.0.0.1:5000 connected to 127.0.0.1:8000" in h.log.text()


def test_untrusted_peer_keeps_its_address(harness):
    h = harness("set_real_ip_from: 10.0.0.0/8\n")
    session, client = accept(h)
    client.feed(V2)
    assert (session.remote_addr, session.remote_port) == ("127.0.0.1", 5000)
    assert session.proxy_protocol.src_addr == "203.0.113.9"
    assert not hasattr(session, "realip_remote_addr")


def test_leftover_in_the_same_segment_is_replayed(harness):
    h = harness()
    session, client = accept(h)
    client.feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nrest")
    assert session.remote_addr == "127.0.0.1"  # no set_real_ip_from: nothing trusted
    assert h.connect().data == b"rest"


def test_broken_header_ends_with_400_and_nginx_line(harness):
    h = harness()
    session, client = accept(h)
    client.feed(b"SSH-2.0-OpenSSH\r\n")
    h.loop.run()
    assert session.finished and session.status == 400 and client.aborted
    assert ("error", 'broken header: "SSH-2.0-OpenSSH" while reading PROXY protocol, client: '
            "127.0.0.1, server: 127.0.0.1:8000") in h.log.lines
    assert not h.connects


def test_timeout_ends_with_200(harness):
    h = harness("proxy_protocol_timeout: 5s\n")
    session, client = accept(h)
    client.feed(b"PROXY TCP4 ")
    h.loop.advance(4.9)
    assert not session.finished
    h.loop.advance(0.2)
    assert session.finished and session.status == 200
    assert ("info", "client timed out (110: Connection timed out) while reading PROXY protocol, "
            "client: 127.0.0.1, server: 127.0.0.1:8000") in h.log.lines


def test_reset_while_reading_the_header(harness):
    h = harness()
    session, client = accept(h)
    client.reset()
    assert session.finished and session.status == 200
    assert h.log.lines[-1][0] == "info" and "recv() failed (104: " in h.log.lines[-1][1]


def test_header_sent_upstream_ahead_of_the_held_bytes(harness):
    h = harness("proxy_protocol: on\n").start()
    h.client.feed(b"early")
    up = h.connect()
    assert up.writes == [b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8000\r\n", b"early"]
    assert up.protocol is h.session.upstream  # handed to the upstream side


def test_v2_sent_upstream_without_tls_has_no_tls_tlvs(harness):
    h = harness("proxy_protocol: v2\n").start()
    up = h.connect()
    header = proxyproto.parse(up.writes[0])
    assert (header.src_addr, header.src_port, header.dst_addr, header.dst_port) == (
        "192.0.2.7", 40000, "127.0.0.1", 8000)
    assert [t for t, _ in proxyproto.tlvs(header.tlvs)] == [proxyproto.TLV_CRC32C]

