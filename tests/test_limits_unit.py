"""Socket-free: the allow/deny matcher, the shared connection-count table, the rate limiter's
state machine on a fake loop, limit_conn's decisions (dry run, several zones), and what
``tlsgw check`` says about misuse."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from mockio import FakeLoop

from tlsgw.config.load import load_config
from tlsgw.config.schema.limits import LimitConnZone, access
from tlsgw.errors import ConfigErrors
from tlsgw.proxy import gate, limit_conn
from tlsgw.proxy.access import Rules
from tlsgw.proxy.flow import RATE, FlowControl
from tlsgw.proxy.pump import ENDED, PROXYING, Session
from tlsgw.proxy.rate import Limiter
from tlsgw.runtime.conn_zone import FULL, OVER, PASSED, ConnZone, Limit


def rules(*texts: str) -> Rules:
    return Rules([r for t in texts for r in access(t)])


@pytest.mark.parametrize(("addr", "allowed"), [
    ("192.168.1.1", False),  # deny 192.168.1.1: the first match
    ("192.168.1.2", True),  # allow 192.168.1.0/24
    ("10.1.200.3", True),  # allow 10.1.1.0/16 (host bits ignored)
    ("10.2.0.1", False),  # deny all
    ("2001:db8::1", True),  # allow 2001:db8::/32
    ("2001:db9::1", False),
    ("::ffff:192.168.1.7", True),  # IPv4-mapped: the IPv4 list
    ("::ffff:192.168.1.1", False),
    ("unix:", False),  # all covers unix: too
])
def test_nginx_doc_example(addr, allowed):
    r = rules("deny 192.168.1.1", "allow 192.168.1.0/24", "allow 10.1.1.0/16",
              "allow 2001:0db8::/32", "deny all")
    assert r.allows(addr) is allowed


def test_no_match_allows_and_families_are_separate():
    r = rules("deny 10.0.0.0/8", "deny ::1")
    assert r.allows("127.0.0.1") and r.allows("::2") and r.allows("unix:")
    assert not r.allows("10.9.9.9") and not r.allows("::1")
    u = rules("allow unix:", "deny all")
    assert u.allows("unix:") and not u.allows("127.0.0.1")


def test_conn_zone_counts_limits_and_fills_like_a_dict():
    zone = ConnZone("z", 32768)  # 8 pages: 512 keys, as nginx's 64-byte states
    try:
        assert zone.capacity == 512
        assert zone.take(b"a", 2) == PASSED and zone.take(b"a", 2) == PASSED
        assert zone.take(b"a", 2) == OVER and zone.count(b"a") == 2
        zone.give(b"a")
        assert zone.count(b"a") == 1
        zone.give(b"a")
        assert zone.count(b"a") == 0 and zone.keys == 0
        model: dict[bytes, int] = {}
        rng = random.Random(7)
        for _ in range(20000):  # the probe runs and their backward shifts, against a dict
            key = rng.randrange(700).to_bytes(2, "big")
            if rng.random() < 0.55:
                got = zone.take(key, 3)
                want = (OVER if model.get(key, 0) >= 3 else
                        FULL if key not in model and len(model) >= 512 else PASSED)
                assert got == want
                if got == PASSED:
                    model[key] = model.get(key, 0) + 1
            elif key in model:
                zone.give(key)
                model[key] -= 1
                if not model[key]:
                    del model[key]
            assert zone.keys == len(model)
        for key, n in model.items():
            assert zone.count(key) == n
    finally:
        zone.close()


class _Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _rated(loop: FakeLoop, rate: int, piece: int = 16384):
    source = _Transport()
    session = SimpleNamespace(ctx=SimpleNamespace(loop=loop), client_flow=FlowControl(source),
                              upstream_flow=None, state=PROXYING, last=0.0)
    limiter = Limiter(session, rate, True, piece, clock=loop.time)
    writes: list[tuple[float, int]] = []
    limiter.write = lambda data: writes.append((loop.time(), len(data)))
    return limiter, source, writes, session


def test_rate_limiter_paces_pieces_and_pauses_the_source():
    loop = FakeLoop()
    limiter, source, writes, session = _rated(loop, 1000)
    assert limiter.piece == 100  # a tenth of the rate
    limiter.feed(b"x" * 10000)
    assert writes == [(1000.0, 100)]  # the first piece at once
    assert not source.reading and session.client_flow.why() == RATE
    loop.advance(5.0)
    assert 5000 <= sum(n for _, n in writes) <= 100 + 5 * 1000  # then the rate, no more
    gaps = {round(b[0] - a[0], 6) for a, b in zip(writes, writes[1:], strict=False)}
    assert gaps == {0.1}
    assert session.last == writes[-1][0]  # each piece counts as activity (proxy_timeout)
    loop.advance(10.0)
    assert sum(n for _, n in writes) == 10000 and not limiter.pending
    assert source.reading  # drained: the source is read again


def test_rate_limiter_banks_no_burst_after_idle():
    loop = FakeLoop()
    limiter, source, writes, _ = _rated(loop, 1000)
    limiter.feed(b"x" * 50)
    loop.advance(60.0)  # idle for a minute
    start = len(writes)
    limiter.feed(b"x" * 3000)
    loop.advance(1.0)
    assert sum(n for _, n in writes[start:]) <= 1100  # still one second's worth per second


def test_rate_limiter_waits_out_the_allowance():
    loop = FakeLoop()
    limiter, source, writes, _ = _rated(loop, 1000, piece=100)
    limiter.sent = 3000  # more than rate * (elapsed + 1): reading waits for the deficit
    limiter.feed(b"x" * 10)
    assert writes == [] and not source.reading
    loop.advance(1.9)
    assert writes == []
    loop.advance(0.2)
    assert [n for _, n in writes] == [10]


def test_rate_limiter_stops_with_its_session():
    loop = FakeLoop()
    limiter, source, writes, session = _rated(loop, 1000)
    limiter.feed(b"x" * 1000)
    session.state = ENDED
    limiter.stop()
    loop.advance(5.0)
    assert writes == [(1000.0, 100)] and not loop.timers


def _limited(harness, limits, dry_run=False, addr="192.0.2.7", h=None):
    # one harness per test: each one swaps the session's clock for its fake loop's
    h = h or harness("limit_conn_log_level: info\n")
    cls = gate.session_class.__globals__["_gated"](Session)
    check = limit_conn.checker(limits, "info", dry_run)

    def one():
        s = cls(h.context, h.rt, "127.0.0.1:8000")
        Session.accepted(s, SimpleNamespace(get_extra_info=lambda n: (addr, 5) if n == "peername"
                                            else ("127.0.0.1", 8000), abort=lambda: None,
                                            close=lambda: None))
        return s, check(s)

    return h, one


def test_limit_conn_rejects_over_the_limit_and_gives_back(harness):
    zone = ConnZone("perip", 32768)
    spec = LimitConnZone("$binary_remote_addr", "perip", 32768)
    h, one = _limited(harness, (Limit(zone, 1, spec),))
    a, ok = one()
    assert ok and a.limit_conn_status == "PASSED" and zone.count(bytes([192, 0, 2, 7])) == 1
    b, ok = one()
    assert not ok and b.finished and b.status == 503 and b.limit_conn_status == "REJECTED"
    assert ("info", 'limiting connections by zone "perip" while initializing session, '
            "client: 192.0.2.7, server: 127.0.0.1:8000") in h.log.lines
    a.finalize(200)
    assert zone.count(bytes([192, 0, 2, 7])) == 0
    zone.close()


def test_limit_conn_dry_run_and_several_zones(harness):
    z1, z2 = ConnZone("one", 32768), ConnZone("two", 32768)
    limits = (Limit(z1, 5, LimitConnZone("$binary_remote_addr", "one", 32768)),
              Limit(z2, 1, LimitConnZone("$server_addr", "two", 32768)))
    h, one = _limited(harness, limits, dry_run=True)
    a, ok = one()
    b, ok2 = one()
    assert ok and ok2 and b.limit_conn_status == "REJECTED_DRY_RUN"
    assert ("info", 'limiting connections, dry run, by zone "two" while initializing '
            "session, client: 192.0.2.7, server: 127.0.0.1:8000") in h.log.lines
    assert z1.count(bytes([192, 0, 2, 7])) == 2 and z2.count(b"127.0.0.1") == 1
    _, strict = _limited(harness, limits, h=h)
    c, ok = strict()  # over "two": the count taken in "one" is given back
    assert not ok and z1.count(bytes([192, 0, 2, 7])) == 2
    for s in (a, b):
        s.finalize(200)
    assert z1.count(bytes([192, 0, 2, 7])) == 0 and z2.count(b"127.0.0.1") == 0
    z1.close()
    z2.close()


def _errors(tmp_path, text: str) -> list[str]:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigErrors) as e:
        load_config(str(path))
    return [str(x) for x in e.value.errors]


SERVER = "servers:\n  - listen: 127.0.0.1:9000\n    proxy_pass: 127.0.0.1:9001\n"


@pytest.mark.parametrize(("top", "server", "line", "message"), [
    ("", "    limit_conn: nope 1\n", 4, 'unknown zone "nope" in "limit_conn"'),
    ("limit_conn_zone: $binary_remote_addr zone=a:1m\n", "    limit_conn: a 0\n", 5,
     'invalid number of connections "0" in "limit_conn"'),
    ("limit_conn_zone: $binary_remote_addr zone=a:1m\n", "    limit_conn: a 70000\n", 5,
     "connection limit must be less 65536"),
    ("limit_conn_zone: $binary_remote_addr zone=a:1m\n",
     "    limit_conn: [a 1, a 2]\n", 5, '"limit_conn" for zone "a" is duplicate'),
    ("limit_conn_zone: $binary_remote_addr zone=a:4k\n", "", 1, 'zone "a" is too small'),
    ("limit_conn_zone: $binary_remote_addr zone=a\n", "", 1, 'invalid zone size "zone=a"'),
    ("limit_conn_zone: $nonsense zone=a:1m\n", "", 1, 'unknown "nonsense" variable'),
    ("limit_conn_zone: [$binary_remote_addr zone=a:1m, $server_addr zone=a:1m]\n", "", 1,
     'duplicate zone "a" in "limit_conn_zone"'),
    ("", "    access: [allow 10.0.0.0/33]\n", 4, 'invalid parameter "10.0.0.0/33"'),
    ("", "    access: [permit all]\n", 4, 'invalid rule "permit all"'),
    ("", "    access: deny\n", 4, 'invalid rule "deny"'),
    ("", "    limit_conn_log_level: crit\n", 4, 'invalid value "crit"'),
    ("", "    proxy_upload_rate: fast\n", 4, "proxy_upload_rate"),
])
def test_check_names_the_directive_and_line(tmp_path, top, server, line, message):
    errors = _errors(tmp_path, top + SERVER + server)
    assert any(message in e and f"t.yaml:{line}:" in e for e in errors), errors


def test_host_bits_are_a_warning(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(SERVER + "    access: [allow 10.1.1.0/16, deny all]\n")
    cfg = load_config(str(path))
    assert cfg.warnings == [f"{path}:4: low address bits of 10.1.1.0/16 are meaningless in "
                            '"access"']


def test_rated_session_delivers_held_bytes_and_a_fin_at_the_rate(harness, monkeypatch):
    """The client's bytes held while connecting, then its FIN: all of them reach the upstream
    at the upload rate, and only then does the session end."""
    from mockio import MockTransport

    from tlsgw.proxy import rate

    h = harness("proxy_upload_rate: 1000\n")
    monkeypatch.setattr(rate, "_monotonic", h.loop.time)
    session = rate.rated(Session)(h.context, h.rt, "127.0.0.1:8000")
    client = MockTransport(h.loop, session)
    h.loop.call(session.connection_made, client)
    client.feed(b"x" * 3000)
    client.feed_eof()
    up = h.connect()
    assert len(up.data) == 100  # the first piece
    h.loop.advance(1.0)
    assert 1000 <= len(up.data) <= 1100 and not session.finished
    h.loop.advance(3.0)
    assert len(up.data) == 3000 and session.finished and session.status == 200
    assert not h.loop.timers or all(t[2].cancelled() for t in h.loop.timers)


def test_settings_of_a_non_default_server_on_a_shared_address_are_a_warning(tmp_path, pki):
    path = tmp_path / "t.yaml"
    tls = f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
    path.write_text("servers:\n  - listen: 127.0.0.1:9443 ssl\n    server_name: a.test\n" + tls
                    + "    proxy_pass: 127.0.0.1:9001\n"
                    "  - listen: 127.0.0.1:9443 ssl\n    server_name: b.test\n" + tls
                    + "    access: [deny all]\n    proxy_pass: 127.0.0.1:9001\n")
    cfg = load_config(str(path))
    assert cfg.warnings == [f'{path}:11: "access" has no effect on "127.0.0.1:9443", where the '
                            "default server's applies (it runs before TLS SNI chooses the "
                            "server)"]


def _listener(tmp_path, listen: str, extra: str, top: str = ""):
    from mockio import RecordingLog

    from tlsgw.balancer import Upstream
    from tlsgw.proxy import phases
    from tlsgw.proxy.context import WorkerContext
    from tlsgw.runtime.generation import build

    path = tmp_path / "gw.yaml"
    path.write_text(f"{top}servers:\n  - listen: {listen}\n    proxy_pass: 127.0.0.1:9\n{extra}")
    cfg = load_config(str(path))
    gen = build(cfg, allocate=False)
    for s in cfg.servers:
        gen.runtimes[s.index].bind(Upstream(s.upstream.name, s.upstream.peer_configs(),
                                            s.upstream.method))
    group = cfg.groups[0]
    context = WorkerContext(FakeLoop(), RecordingLog())  # type: ignore[arg-type]
    return phases.Listener(group, gen.routes[gen.route_key(group)].by_index, context), gen


def test_phases_slot_in_only_where_used(tmp_path):
    from tlsgw.proxy import phases
    from tlsgw.proxy.phases import Phase
    from tlsgw.proxy.realip import HeaderReader, ProxyProtocolSession

    top = "limit_conn_zone: $binary_remote_addr zone=z:64k\n"
    listener, gen = _listener(tmp_path, "127.0.0.1:8000 proxy_protocol",
                              "    access: [deny all]\n    limit_conn: z 1\n"
                              "    proxy_upload_rate: 1k\n", top)
    factory, used = phases.build(listener)
    assert used == (Phase.POST_ACCEPT, Phase.PREACCESS, Phase.ACCESS)
    reader = factory()
    assert isinstance(reader, HeaderReader) and isinstance(reader.inner, gate.Gate)
    assert isinstance(reader.inner.inner, gate.Gate)  # limit_conn's, then access's
    cls = type(reader.session)
    assert cls.__name__ == "RatedGatedProxyProtocolSession"
    assert issubclass(cls, ProxyProtocolSession)
    assert phases.build(listener)[0]().session.__class__ is cls  # made once per listener kind
    gen.release()
    # a rate only: no phase, the session class alone changes
    listener, gen = _listener(tmp_path, "127.0.0.1:8001", "    proxy_download_rate: 1k\n")
    factory, used = phases.build(listener)
    assert used == () and factory.func.__name__ == "RatedSession"
    gen.release()


def test_a_key_longer_than_255_bytes_is_logged_and_not_counted(harness):
    zone = ConnZone("long", 32768)
    long_key = "k" * 300
    h, one = _limited(harness, (Limit(zone, 1, LimitConnZone(long_key, "long", 32768)),))
    for _ in range(2):
        s, ok = one()
        assert ok and s.limit_conn_status == "PASSED"
    assert zone.keys == 0
    assert any(level == "error" and line.startswith(f'the value of the "{long_key}" key is more '
                                                    "than 255 bytes")
               for level, line in h.log.lines)
    zone.close()


def test_a_limiter_drops_what_arrives_after_its_session_ended():
    loop = FakeLoop()
    limiter, _, writes, session = _rated(loop, 1000)
    limiter.stop()
    limiter.feed(b"late")
    loop.advance(1.0)
    assert writes == [] and not limiter.pending


def test_a_key_whose_variables_are_not_found_is_empty_and_not_counted(harness):
    zone = ConnZone("sni", 32768)
    h, one = _limited(harness, (Limit(zone, 1, LimitConnZone("$ssl_server_name", "sni",
                                                             32768)),))
    for _ in range(2):
        assert one()[1]
    assert zone.keys == 0
    zone.close()


def test_yaml_allow_says_where_the_rules_go(tmp_path):
    errors = _errors(tmp_path, SERVER + "    allow: 10.0.0.0/8\n")
    assert any('"allow" is an nginx directive that tlsgw does not have: tlsgw keeps nginx\'s '
               "allow and deny rules, in order, in one list" in e for e in errors), errors
