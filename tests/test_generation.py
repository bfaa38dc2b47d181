"""Generations (issue 8): built from a pure Config in the master, owning what they pin, released
without a trace; shared zones kept across generations by (kind, name, size).

Handshakes here run in memory (``ssl.MemoryBIO``), so no socket is needed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import ssl
import textwrap
from pathlib import Path

import pytest

from tlsgw.config.load import load_config
from tlsgw.errors import ConfigErrors
from tlsgw.process.worker import Worker
from tlsgw.runtime import zones as zones_
from tlsgw.runtime.generation import build, build_file
from tlsgw.tls import native

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, pki, size: str = "1m", name: str = "Z", key_files: int = 2) -> str:
    keys = []
    for i in range(key_files):
        path = tmp_path / f"ticket{i}.key"
        if not path.exists():
            path.write_bytes(os.urandom(80 if i % 2 == 0 else 48))
            path.chmod(0o600)
        keys.append(str(path))
    path = tmp_path / f"gen-{name}-{size}.yaml"
    path.write_text(textwrap.dedent(f"""\
        ssl_session_cache: shared:{name}:{size}
        ssl_session_ticket_key: [{", ".join(keys)}]
        servers:
          - listen: 127.0.0.1:9443 ssl
            server_name: a.test
            ssl_certificate: {pki.a_test}
            ssl_certificate_key: {pki.a_test_key}
            ssl_alpn: h2 http/1.1
            proxy_pass: 127.0.0.1:1
          - listen: 127.0.0.1:9443 ssl
            server_name: b.test
            ssl_certificate: {pki.b_test}
            ssl_certificate_key: {pki.b_test_key}
            ssl_session_tickets: off
            proxy_pass: 127.0.0.1:1
          - listen: 127.0.0.1:9444
            proxy_pass: 127.0.0.1:2
            proxy_ssl: on
            proxy_ssl_trusted_certificate: {pki.ca}
            proxy_ssl_name: localhost
        """))
    return str(path)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str,
               session: ssl.SSLSession | None = None) -> ssl.SSLObject:
    """One TLS handshake in memory; returns the client's SSLObject (after reading tickets)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    for _ in range(20):
        if not done_c:
            try:
                client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_c and done_s:
            break
    assert done_c and done_s
    server.write(b"x")  # TLS 1.3 tickets arrive with the first data
    c_in.write(s_out.read())
    assert client.read(1) == b"x"
    return client


def _mappings() -> int:
    with open("/proc/self/maps") as fh:
        return sum(1 for _ in fh)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cycle(path: str, registry: zones_.ZoneRegistry, pki) -> None:
    gen = build(load_config(path), zones=registry)
    client = ssl.create_default_context(cafile=pki.ca)
    client.set_alpn_protocols(["h2"])
    # SNI, ALPN, the ticket key callback (key files) and the shared cache all get used
    default = gen.routes["127.0.0.1:9443"].ssl_context
    assert _handshake(default, client, "a.test").selected_alpn_protocol() == "h2"
    _handshake(default, client, "b.test")
    gen.release()


def test_50_load_build_release_cycles_leave_mappings_pins_fds_and_rss_flat(tmp_path, pki):
    """Bounds: pins and fds exactly back to where they were (the generation holds every pin;
    nothing of it keeps a file open). Mappings within 8 of the start: each generation maps a
    shared cache and its semaphore, so a leak shows as 2 per cycle (100 over 50 cycles), while
    Python's and malloc's own arenas come and go by a few. RSS within 2 MiB: a generation kept
    alive costs about 110 KiB here (measured over 20: contexts, certificates, the cache's touched
    pages, 9 pins), 5.5 MiB over 50 cycles; released, 50 cycles measured +156 KiB."""
    path = _config(tmp_path, pki)
    registry = zones_.ZoneRegistry()
    for _ in range(5):  # warm up: the native binding, the ex_data index, caches of imports
        _cycle(path, registry, pki)
    gc.collect()
    pins, fds, maps, rss = native.pinned(), _fds(), _mappings(), _rss_kib()

    live = build(load_config(path), zones=registry)  # what one generation pins while it lives
    assert native.pinned() > pins and len(registry) == 1
    live.release()
    assert len(registry) == 0

    for _ in range(50):
        _cycle(path, registry, pki)
    gc.collect()
    assert native.pinned() == pins
    assert _fds() == fds
    assert len(registry) == 0
    assert _mappings() - maps <= 8, (maps, _mappings())
    assert _rss_kib() - rss <= 2048, (rss, _rss_kib())


def test_a_kept_generation_grows_the_process(tmp_path, pki):
    """The control for the bounds above: generations that are not released do show."""
    path = _config(tmp_path, pki)
    registry = zones_.ZoneRegistry()
    kept = [build(load_config(path), zones=registry)]
    gc.collect()
    pins, maps = native.pinned(), _mappings()
    kept += [build(load_config(_config(tmp_path, pki, name=f"K{i}")), zones=registry)
             for i in range(10)]
    assert native.pinned() > pins
    assert _mappings() - maps >= 10  # one shared cache per generation, at least
    for gen in kept:
        gen.release()
    assert len(registry) == 0


def test_a_zone_is_reused_by_the_next_generation_and_unmapped_with_the_last(tmp_path, pki):
    """Same (kind, name, size): the very mapping, so TLS sessions resume across generations;
    another size: a new zone; the last generation released unmaps it."""
    registry = zones_.ZoneRegistry()
    key = (zones_.TLS_SESSION_CACHE, "Z", 2**20)
    first = build(load_config(_config(tmp_path, pki)), zones=registry)
    store = first.resumption.stores["Z"]
    client = ssl.create_default_context(cafile=pki.ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx = first.routes["127.0.0.1:9443"].ssl_context
    session = _handshake(ctx, client, "b.test").session  # b.test: tickets off, the cache keeps it

    second = build(load_config(_config(tmp_path, pki)), zones=registry)
    assert second.resumption.stores["Z"] is store and registry.holders(key) == 2
    first.release()
    assert registry.holders(key) == 1 and not store.mem.closed
    resumed = _handshake(second.routes["127.0.0.1:9443"].ssl_context, client, "b.test", session)
    assert resumed.session_reused  # from the shared cache, through the second generation

    bigger = build(load_config(_config(tmp_path, pki, size="2m")), zones=registry)
    assert bigger.resumption.stores["Z"] is not store
    second.release()
    assert store.mem.closed and key not in registry
    bigger.release()
    assert len(registry) == 0


def test_check_maps_no_zone_and_build_errors_keep_their_line(tmp_path, pki):
    registry = zones_.ZoneRegistry()
    gen = build(load_config(_config(tmp_path, pki)), allocate=False, zones=registry)
    assert len(registry) == 0 and gen.resumption.stores == {}
    gen.release()
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(f"""\
        servers:
          - listen: 127.0.0.1:9443 ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}

            ssl_ciphers: NO-SUCH-CIPHER
            proxy_pass: 127.0.0.1:1
        """))
    with pytest.raises(ConfigErrors) as ei:
        build_file(str(path), allocate=False, zones=registry)
    assert [str(e) for e in ei.value.errors] == [
        f'{path}:6: no cipher matches "NO-SUCH-CIPHER"']
    assert len(registry) == 0


def test_runtimes_read_the_typed_settings(tmp_path, pki):
    gen = build(load_config(_config(tmp_path, pki)), allocate=False)
    try:
        for srv in gen.cfg.servers:
            rt = gen.runtimes[srv.index]
            assert rt.connect_timeout == srv.s.proxy_connect_timeout
            assert rt.buffer_size == srv.s.proxy_buffer_size
            assert rt.half_close == srv.s.proxy_half_close
            assert rt.upstream is None  # bound by the adopting worker
        proxied = gen.runtimes[2]
        assert proxied.proxy_tls is not None and proxied.proxy_tls.name == "localhost"
    finally:
        gen.release()


def test_proxy_protocol_settings_and_sni_capture_for_v2(tmp_path, pki):
    """A lone TLS server needs no SNI callback, unless it sends PROXY protocol v2, whose
    AUTHORITY is the client's SNI; the runtime reads the PROXY protocol settings."""
    def built(extra: str):
        path = tmp_path / "pp.yaml"
        path.write_text(textwrap.dedent(f"""\
            servers:
              - listen: 127.0.0.1:9443 ssl proxy_protocol
                ssl_certificate: {pki.server}
                ssl_certificate_key: {pki.server_key}
                proxy_pass: 127.0.0.1:1
                set_real_ip_from: 127.0.0.1
            """) + textwrap.indent(extra, "    "))
        return build(load_config(str(path)), allocate=False)

    gen = built("")
    try:
        rt = gen.runtimes[0]
        assert (rt.proxy_protocol, rt.proxy_protocol_timeout) == (0, 30)
        assert [t.text for t in rt.set_real_ip_from] == ["127.0.0.1"]
        assert gen._sni_contexts == []
    finally:
        gen.release()
    for extra, sni in (("proxy_protocol: on\n", False), ("proxy_protocol: v2\n", True)):
        gen = built(extra)
        try:
            assert gen.runtimes[0].proxy_protocol == (2 if sni else 1)
            assert gen._sni_contexts == ([gen.routes["127.0.0.1:9443"].ssl_context] if sni else [])
        finally:
            gen.release()


def _plain_config(tmp_path: Path, name: str, peers: str, timeout: str = "10m") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        error_log: stderr crit
        upstreams:
          backend:
            servers: [{peers}]
          other:
            servers: [10.0.0.9:80]
        servers:
          - listen: 127.0.0.1:9000
            proxy_pass: backend
            proxy_timeout: {timeout}
          - listen: 127.0.0.1:9001
            proxy_pass: other
        """))
    return str(path)


def test_a_worker_reads_the_current_generation_per_accept_and_sessions_keep_theirs(tmp_path):
    """The factories read the adopted generation's routes at accept time; a session made
    before keeps its runtime; balancer state is the worker's, by upstream name: kept for an
    unchanged upstream, new for a changed one."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        first = build(load_config(_plain_config(tmp_path, "one", "10.0.0.1:80")), allocate=False)
        worker = Worker(first, [], 0)
        group = first.cfg.groups[0]
        factory = worker.factory(group)
        old = factory()
        assert old.rt is first.runtimes[0] and old.ctx is worker.context
        backend, other = worker.upstreams["backend"], worker.upstreams["other"]
        assert old.rt.upstream is backend and old.rt.timeout == 600

        second = build(load_config(_plain_config(tmp_path, "two", "10.0.0.1:80, 10.0.0.2:80",
                                                 timeout="5s")), allocate=False)
        worker.adopt(second)
        new = factory()  # the same factory the listener holds
        assert worker.generation is second
        assert new.rt is second.runtimes[0] and new.rt.timeout == 5
        assert old.rt is first.runtimes[0] and old.rt.timeout == 600
        assert new.rt.upstream is not backend  # its servers changed
        assert len(new.rt.upstream.peers) == 2
        assert second.runtimes[1].upstream is other  # unchanged: the same state
        first.release()
        second.release()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_zone_registry_counts_holders():
    made: list[tuple[str, int]] = []

    class Zone:
        def __init__(self, name: str, size: int):
            made.append((name, size))
            self.closed = False

        def close(self) -> None:
            self.closed = True

    registry = zones_.ZoneRegistry()
    a = registry.acquire("k", "Z", 1, Zone)
    b = registry.acquire("k", "Z", 1, Zone)
    c = registry.acquire("k", "Z", 2, Zone)
    assert a is b and a is not c and made == [("Z", 1), ("Z", 2)]
    registry.release(("k", "Z", 1))
    assert not a.closed and registry.holders(("k", "Z", 1)) == 1
    registry.release(("k", "Z", 1))
    assert a.closed and ("k", "Z", 1) not in registry and not c.closed
    registry.release(("k", "Z", 2))
    assert c.closed and len(registry) == 0
