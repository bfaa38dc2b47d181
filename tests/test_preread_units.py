"""ssl_preread and map without sockets: the ClientHello reader (tlsgw.tls.clienthello) on real
ClientHellos made by Python's ssl, split every way; the map matcher (tlsgw.config.maps) with
nginx's precedence; the preread phase's state machine (tlsgw.proxy.preread) on a fake loop;
and what `check` says of every misuse."""

from __future__ import annotations

import ssl
import textwrap
from pathlib import Path

import pytest
from mockio import FakeLoop, MockTransport, RecordingLog

from tlsgw.balancer import Upstream
from tlsgw.config.load import load_config
from tlsgw.config.maps import MapError, compile_map
from tlsgw.errors import ConfigErrors
from tlsgw.proxy import phases
from tlsgw.proxy.context import WorkerContext
from tlsgw.proxy.preread import MappedSession, PrereadReader, PrereadSession
from tlsgw.proxy.pump import State
from tlsgw.runtime.generation import build
from tlsgw.tls.clienthello import DECLINED, Hello, Preread


def client_hello(sni: str | None = "a.test", alpn: list[str] | None = None,
                 max_version: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a real TLS client (Python's ssl, OpenSSL underneath)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def records(hello: bytes, size: int) -> bytes:
    """The same handshake message re-cut into TLS records of ``size`` bytes of body."""
    assert hello[0] == 0x16
    body = hello[5:5 + int.from_bytes(hello[3:5])]
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += bytes([0x16, 3, 1]) + len(part).to_bytes(2) + part
    return out


def feed_all(data: bytes, step: int, limit: int = 16384) -> tuple[Hello | None, int]:
    p = Preread(limit)
    for i in range(0, len(data), step):
        got = p.feed(data[i:i + step])
        if got is not None:
            return got, i + step
    return None, len(data)


# ---- the ClientHello reader ---------------------------------------------------------------------
def test_a_whole_client_hello_gives_nginx_variables():
    got, _ = feed_all(client_hello("a.test", ["h2", "http/1.1"]), 1 << 20)
    assert got == Hello("a.test", "h2,http/1.1", "TLSv1.3")


def test_one_byte_segments_and_many_records_give_the_same_answer_only_at_the_end():
    hello = client_hello("Mixed.Case.test", ["http/1.1"])
    whole, _ = feed_all(hello, len(hello))
    assert whole == Hello("Mixed.Case.test", "http/1.1", "TLSv1.3")  # SNI as sent
    got, used = feed_all(hello, 1)
    assert got == whole and used == len(hello)  # nothing decided before the last byte
    split = records(hello, 7)  # a ClientHello over ~40 records, then fed a byte at a time
    got, used = feed_all(split, 1)
    assert got == whole and used == len(split)


def test_what_follows_the_hello_does_not_matter():
    hello = client_hello("a.test")
    got, _ = feed_all(hello + b"\x17\x03\x03\x00\x05early", len(hello) + 10)
    assert got.server_name == "a.test"


def test_tls12_clients_no_sni_and_no_alpn():
    assert feed_all(client_hello(None, None, ssl.TLSVersion.TLSv1_2), 99999)[0] == \
        Hello("", "", "TLSv1.2")


@pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH_9.2\r\n", b"GET / HTTP/1.1\r\n\r\n",
                                  b"\x16\x02\x00\x00\x10" + b"x" * 16,  # record version 2
                                  b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
                                  b"\x15\x03\x03\x00\x02\x02\x28"])  # an alert
def test_not_a_client_hello_is_declined(data):
    assert feed_all(data, 1)[0] is DECLINED


def test_nothing_is_decided_before_one_record_header():
    p = Preread()
    assert p.feed(b"SSH-") is None and p.feed(b"2") is DECLINED


def test_an_sslv2_compatible_hello():
    assert feed_all(b"\x80\x2e\x01\x03\x01" + b"\x00" * 40, 5)[0] == Hello(protocol="TLSv1")


def _with_extension(kind: int, body: bytes) -> bytes:
    """A minimal ClientHello (TLS 1.2, one suite) with one extension."""
    ext = kind.to_bytes(2) + len(body).to_bytes(2) + body
    msg = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00" \
        + len(ext).to_bytes(2) + ext
    hs = b"\x01" + len(msg).to_bytes(3) + msg
    return b"\x16\x03\x01" + len(hs).to_bytes(2) + hs


def test_malformed_extensions_are_declined():
    good = b"\x00\x07\x00\x00\x04a.io"
    assert feed_all(_with_extension(0, good), 9999)[0] == Hello("a.io", "", "TLSv1.2")
    assert feed_all(_with_extension(0, b"\x00\x07\x01\x00\x04a.io"), 99)[0] is DECLINED  # not host_name
    assert feed_all(_with_extension(0, b"\x00\x09\x00\x00\x04a.io"), 99)[0] is DECLINED  # lengths
    assert feed_all(_with_extension(16, b"\x00\x04\x02h2\x00"), 99)[0] is DECLINED  # empty name
    assert feed_all(_with_extension(16, b"\x00\x06\x02h2\x02h3"), 99)[0].alpn_protocols == "h2,h3"


def test_the_buffer_bound_is_nginx_preread_buffer_full():
    hello = client_hello("a.test")
    p = Preread(limit=len(hello) - 1)
    assert p.feed(hello) is None and p.full
    p = Preread(limit=len(hello))
    assert p.feed(hello) is not None


# ---- map ----------------------------------------------------------------------------------------
def test_map_precedence_is_nginx():
    m = compile_map("b", "ssl_preread_server_name", [
        ("~^www\\d", "regex1"), ("~*^WWW", "regex2"), ("www.example.*", "back"),
        ("*.example.com", "front"), (".sub.example.com", "longer_front"),
        ("www.example.com", "exact"), ("\\.literal", "escaped")], default="dflt", hostnames=True)
    assert m.lookup("WWW.Example.COM.") == "exact"  # case and the trailing dot ignored
    assert m.lookup("a.sub.example.com") == "longer_front"
    assert m.lookup("sub.example.com") == "longer_front"  # ".name" also matches name itself
    assert m.lookup("a.example.com") == "front" and m.lookup("example.com") == "dflt"
    assert m.lookup("www.example.org") == "back"
    assert m.lookup("www1.other") == "regex1" and m.lookup("WWW1.other") == "regex2"
    assert m.lookup(".literal") == "escaped" and m.lookup("") == "dflt"
    assert m.values == ["exact", "escaped", "longer_front", "front", "back", "regex1", "regex2",
                        "dflt"]


def test_map_without_hostnames_takes_masks_literally():
    m = compile_map("b", "x", [("*.example.com", "star"), ("A.Test", "a")])
    assert m.lookup("*.EXAMPLE.com") == "star" and m.lookup("x.example.com") == ""
    assert m.lookup("a.test") == "a" and m.lookup("a.test.") == ""


@pytest.mark.parametrize("key", ["~(", "~*", "*.", "www.*.*", "*.a.*"])
def test_map_keys_nginx_refuses(key):
    with pytest.raises(MapError):
        compile_map("b", "x", [(key, "v")], hostnames=True)


def test_map_duplicates_are_refused():
    with pytest.raises(MapError, match="duplicate"):
        compile_map("b", "x", [("A", "1"), ("a", "2")])
    with pytest.raises(MapError, match="conflicting"):
        compile_map("b", "x", [("*.a.io", "1"), ("*.A.io", "2")], hostnames=True)


# ---- check --------------------------------------------------------------------------------------
MAP = """\
map:
  $b:
    source: $ssl_preread_server_name
    default: 127.0.0.1:9
    entries:
      a.test: 127.0.0.1:10
"""


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigErrors) as e:
        load_config(str(path))
    return [str(x).replace(str(path), "F") for x in e.value.errors]


@pytest.mark.parametrize(("text", "message"), [
    (MAP + "servers:\n  - listen: 127.0.0.1:1\n    proxy_pass: $nope\n",
     'F:9: unknown variable "$nope" in "proxy_pass" (a "map" variable; defined: "$b")'),
    ("map:\n  b:\n    source: $remote_addr\n" + "servers:\n  - {listen: 1, proxy_pass: 127.0.0.1:9}\n",
     'F:2: invalid variable name "b" in "map" (write $NAME)'),
    ("map:\n  $remote_addr:\n    source: $remote_addr\n"
     "servers:\n  - {listen: 1, proxy_pass: 127.0.0.1:9}\n",
     'F:2: map "$remote_addr": "$remote_addr" is a built-in variable'),
    ("map:\n  $b:\n    source: $nosuch\nservers:\n  - {listen: 1, proxy_pass: $b}\n",
     'F:3: unknown variable "$nosuch" in "source" of map "$b" (a variable such as '
     "$ssl_preread_server_name)"),
    ("map:\n  $b:\n    default: x\nservers:\n  - {listen: 1, proxy_pass: $b}\n",
     'F:2: no "source" in map "$b"'),
    ("map:\n  $b:\n    source: $remote_addr\n    volatile: on\n"
     "servers:\n  - {listen: 1, proxy_pass: 127.0.0.1:9}\n",
     'F:4: unknown key "volatile" in map "$b" (source, hostnames, default or entries)'),
    ("map:\n  $b:\n    source: $remote_addr\n    hostnames: maybe\n"
     "servers:\n  - {listen: 1, proxy_pass: 127.0.0.1:9}\n",
     'F:4: invalid value "maybe", it must be "on" or "off" in "hostnames" of map "$b"'),
    ("map:\n  $b:\n    source: $remote_addr\n    entries:\n      '~(': u\n"
     "servers:\n  - {listen: 1, proxy_pass: 127.0.0.1:9}\n",
     "F:3: invalid regular expression \"(\" (missing ), unterminated subpattern at position 0) "
     'in map "$b"'),
    ("map:\n  $b:\n    source: $remote_addr\n    entries:\n      a: $remote_addr\n"
     "servers:\n  - {listen: 1, proxy_pass: 127.0.0.1:9}\n",
     'F:5: variables in map values are not supported yet ("$remote_addr" in map "$b")'),
    ("map:\n  $b:\n    source: $remote_addr\n    entries:\n      a: nosuch\n"
     "servers:\n  - {listen: 1, proxy_pass: $b}\n",
     'F:5: unknown upstream "nosuch" in "proxy_pass": no upstreams are defined, and it is not '
     'HOST:PORT or unix:PATH (a value of map "$b")'),
    (MAP + "servers:\n  - listen: 127.0.0.1:1 ssl\n    ssl_preread: on\n"
     "    proxy_pass: 127.0.0.1:9\n",
     'F:9: "ssl_preread on" cannot be used with "listen ... ssl"'),
    (MAP + "servers:\n  - listen: 127.0.0.1:1 proxy_protocol\n    ssl_preread: on\n"
     "    proxy_pass: 127.0.0.1:9\n",
     'F:9: "ssl_preread on" is not supported on a "listen ... proxy_protocol" address yet'),
    (MAP + "servers:\n  - listen: 127.0.0.1:1\n    proxy_pass: $b\n    health_check: on\n",
     'F:10: "health_check" needs a "proxy_pass" that names one upstream, not a variable'),
    (MAP + "servers:\n  - listen: 127.0.0.1:1\n    ssl_preread: on\n    proxy_pass: $b\n"
     "  - listen: 127.0.0.1:1 ssl\n    proxy_pass: 127.0.0.1:9\n",
     'F:11: the "listen 127.0.0.1:1 ssl" server needs a "server_name"'),
    (MAP + "servers:\n  - listen: 127.0.0.1:1\n    proxy_pass: 127.0.0.1:9\n"
     "  - listen: 127.0.0.1:1 ssl\n    server_name: a.test\n    proxy_pass: 127.0.0.1:9\n",
     'F:10: listen "127.0.0.1:1" has "ssl" in one server and not in another'),
    (MAP + "servers:\n  - listen: 127.0.0.1:1\n    ssl_preread: on\n    proxy_pass: $b\n"
     "  - listen: 127.0.0.1:1 ssl proxy_protocol\n    server_name: a.test\n"
     "    proxy_pass: 127.0.0.1:9\n",
     'F:9: "ssl_preread on" is not supported on a "listen ... proxy_protocol" address yet'),
    (MAP + "preread_buffer_size: 2m\nservers:\n  - {listen: 1, proxy_pass: $b}\n",
     'F:7: invalid size "2m" (at most 1m) in "preread_buffer_size"'),
    (MAP + "servers:\n  - listen: 1\n    preread_timeout: soon\n    proxy_pass: $b\n",
     'F:9: invalid time "soon" (expected e.g. 500ms, 30s, 5m, 2h, 1d) in "preread_timeout"'),
])
def test_check_names_the_directive(tmp_path, text, message):
    errs = errors(tmp_path, text)
    assert any(e.startswith(message) for e in errs), errs
    assert "Traceback" not in "".join(errs)


# ---- the preread phase, on a fake loop ------------------------------------------------------------
_KEEP: list[object] = []


def listener(tmp_path: Path, text: str, pki=None) -> tuple[phases.Listener, FakeLoop]:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    cfg = load_config(str(path))
    loop = FakeLoop()
    log = RecordingLog()
    context = WorkerContext(loop, log)  # type: ignore[arg-type]
    gen = build(cfg, allocate=False)
    _KEEP.append(gen)
    for s in cfg.servers:
        rt = gen.runtimes[s.index]
        rt.bind(Upstream(s.upstream.name, s.upstream.peer_configs(), s.upstream.method))
        for t in (rt.targets or {}).values():
            u = t.cfg.upstream
            t.bind(Upstream(u.name, u.peer_configs(), u.method))
    group = cfg.groups[0]
    return phases.Listener(group, gen.routes[gen.route_key(group)].by_index, context), loop


PREREAD = MAP + """\
servers:
  - listen: 127.0.0.1:8443
    ssl_preread: on
    preread_timeout: 3s
    preread_buffer_size: 4k
    proxy_pass: $b
"""


def accept(listener_, loop):
    factory, used = phases.build(listener_)
    reader = factory()
    transport = MockTransport(loop, reader)
    loop.call(reader.connection_made, transport)
    return reader, transport, used


def test_the_phase_reads_split_hellos_then_replays_them_to_the_mapped_upstream(tmp_path):
    lst, loop = listener(tmp_path, PREREAD)
    reader, client, used = accept(lst, loop)
    assert used == (phases.Phase.PREREAD,) and isinstance(reader, PrereadReader)
    session = reader.session
    assert type(session) is PrereadSession and session.state is State.ACCEPTED
    hello = records(client_hello("A.test", ["h2"]), 50)
    for i in range(len(hello)):
        assert not loop.connects
        loop.call(reader.data_received, hello[i:i + 1])
    assert [c.address for c in loop.connects] == ["127.0.0.1:10"]  # a.test's value
    assert client.protocol is session and session.state is State.CONNECTING
    assert (session.ssl_preread_server_name, session.ssl_preread_alpn_protocols,
            session.ssl_preread_protocol) == ("A.test", "h2", "TLSv1.3")
    upstream = loop.connects[0].accept()
    assert b"".join(upstream.writes) == hello  # byte for byte
    loop.call(session.data_received, b"more")
    assert b"".join(upstream.writes) == hello + b"more"


def test_not_tls_goes_on_to_the_default_with_the_variables_not_found(tmp_path):
    lst, loop = listener(tmp_path, PREREAD)
    reader, client, _ = accept(lst, loop)
    session = reader.session
    loop.call(reader.data_received, b"SSH-2.0-x\r\n")
    assert [c.address for c in loop.connects] == ["127.0.0.1:9"]
    assert session.ssl_preread_server_name is None and session.ssl_preread_protocol == ""
    assert b"".join(loop.connects[0].accept().writes) == b"SSH-2.0-x\r\n"


def test_timeout_closes_with_200_and_no_error_line(tmp_path):
    lst, loop = listener(tmp_path, PREREAD)
    reader, client, _ = accept(lst, loop)
    session = reader.session
    loop.call(reader.data_received, client_hello()[:20])
    loop.advance(2.9)
    assert not session.finished
    loop.advance(0.2)
    assert session.finished and session.status == 200 and client.aborted and not loop.connects
    assert [lvl for lvl, _ in lst.context.error_log.lines] == ["info"]  # "client ... connected"


def test_a_full_buffer_is_400_with_nginx_line(tmp_path):
    lst, loop = listener(tmp_path, PREREAD)
    reader, client, _ = accept(lst, loop)
    session = reader.session
    loop.call(reader.data_received, b"\x16\x03\x01\x10\x00" + b"\x01" * 3000)  # a 4k record
    assert not session.finished
    loop.call(reader.data_received, b"\x00" * 2000)
    assert session.finished and session.status == 400 and not loop.connects
    assert ("error", "preread buffer full while prereading client data, client: 192.0.2.7, "
            "server: 127.0.0.1:8443") in lst.context.error_log.lines, lst.context.error_log.lines


def test_eof_before_the_hello_is_200(tmp_path):
    lst, loop = listener(tmp_path, PREREAD)
    reader, client, _ = accept(lst, loop)
    session = reader.session
    loop.call(reader.data_received, b"\x16\x03")
    loop.call(reader.eof_received)
    assert session.finished and session.status == 200


def test_no_default_and_an_unknown_name_is_no_host_500(tmp_path):
    text = PREREAD.replace("    default: 127.0.0.1:9\n", "")
    lst, loop = listener(tmp_path, text)
    reader, client, _ = accept(lst, loop)
    session = reader.session
    loop.call(reader.data_received, client_hello("other.test"))
    assert session.finished and session.status == 500 and not loop.connects
    assert ("error", 'no host in upstream "" while connecting to upstream, client: 192.0.2.7, '
            "server: 127.0.0.1:8443") in lst.context.error_log.lines, lst.context.error_log.lines


def test_a_plain_listener_with_a_map_routes_at_the_content_phase(tmp_path):
    text = MAP.replace("$ssl_preread_server_name", "$server_port").replace("a.test", "8000") \
        + "servers:\n  - listen: 127.0.0.1:8000\n    proxy_pass: $b\n"
    lst, loop = listener(tmp_path, text)
    factory, used = phases.build(lst)
    session = factory()
    assert used == () and type(session) is MappedSession
    loop.call(session.connection_made, MockTransport(loop, session))
    assert [c.address for c in loop.connects] == ["127.0.0.1:10"]  # server_port 8000


def test_listeners_without_preread_or_maps_are_unchanged(tmp_path):
    lst, _ = listener(tmp_path, MAP + "servers:\n  - {listen: 127.0.0.1:8000, proxy_pass: b}\n"
                      "upstreams:\n  b: {servers: [127.0.0.1:9]}\n")
    factory, used = phases.build(lst)
    assert used == () and factory.func.__name__ == "Session"


# ---- tlsgw convert --------------------------------------------------------------------------------
def test_convert_takes_nginx_map_and_ssl_preread_to_a_config_that_loads(tmp_path):
    from tlsgw.convert import convert

    conf = tmp_path / "nginx.conf"
    conf.write_text(r"""
stream {
    map $ssl_preread_server_name $backend {
        hostnames;
        default          127.0.0.1:9000;
        .example.com     pool;
        ~*^api[0-9]+\.   127.0.0.1:9002;
        "literal name"   127.0.0.1:9003;
        www.example.*    $remote_addr;
        volatile;
    }
    upstream pool { server 127.0.0.1:9001; }
    server {
        listen 127.0.0.1:9443;
        ssl_preread on;
        preread_buffer_size 32k;
        preread_timeout 5s;
        proxy_pass $backend;
    }
}
""")
    result = convert(str(conf))
    out = tmp_path / "tlsgw.yaml"
    out.write_text(result.text)
    cfg = load_config(str(out))
    m = cfg.servers[0].proxy_map
    assert m is not None and m.hostnames and m.source == "ssl_preread_server_name"
    assert m.lookup("a.example.com") == "pool" and m.lookup("API7.x") == "127.0.0.1:9002"
    assert m.lookup("literal name") == "127.0.0.1:9003" and m.lookup("zzz") == "127.0.0.1:9000"
    s = cfg.servers[0].s
    assert (s.ssl_preread, s.preread_buffer_size, s.preread_timeout) == (True, 32768, 5.0)
    assert sorted(cfg.servers[0].targets) == ["127.0.0.1:9000", "127.0.0.1:9002",
                                              "127.0.0.1:9003", "pool"]
    warned = "\n".join(result.warnings)
    assert "a value with variables is not supported by tlsgw yet" in warned  # $remote_addr
    assert '"volatile"' in warned


def test_check_warns_of_an_unused_map_and_counts_upstreams_used_through_one(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(MAP.replace("127.0.0.1:10", "pool")
                    + "  $unused:\n    source: $remote_addr\n    entries: {a: junk}\n"
                    "upstreams:\n  pool: {servers: [127.0.0.1:7]}\n"
                    "servers:\n  - {listen: 127.0.0.1:1, ssl_preread: on, proxy_pass: $b}\n")
    cfg = load_config(str(path))
    assert [w.replace(str(path), "F") for w in cfg.warnings] == [
        'F:7: map "$unused" is not used by any "proxy_pass"']
