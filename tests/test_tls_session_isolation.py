"""A TLS session never resumes on a server with other certificates or another client-verification
policy, whatever the Python (CPython 3.13 sets its own session-id context on every connection).

One gateway; every server shares one ``shared`` session cache and the master's ticket key, so
nothing but the session-id context keeps sessions apart. Each session kind (TLS 1.2 session ID,
TLS 1.2 ticket, TLS 1.3 ticket) is made on one server and offered to the others: it must resume
where certificates and verification are the same (the positive controls) and nowhere else.
"""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest
from support import Backend
from tlshelp import LOG, Ports, entry, module_gateway, roundtrip, tls_connect

pytestmark = pytest.mark.timeout(60)

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
KINDS = {"TLS 1.2 session ID": (TLS12, False), "TLS 1.2 ticket": (TLS12, True),
         "TLS 1.3 ticket": (TLS13, True)}


@pytest.fixture(scope="module")
def iso(pki, tmp_path_factory):
    """``sni``: a.test (default), b.test (other certificate), and three servers with a.test's
    certificate but another verification policy; ``twin`` and ``twin_on``: a.test's and
    on.test's exact settings on their own ports."""
    echo = Backend("echo")
    free_port = Ports()
    ports = SimpleNamespace(sni=free_port(), twin=free_port(), twin_on=free_port())
    a = {"ssl_certificate": pki.a_test, "ssl_certificate_key": pki.a_test_key}
    cache = {"ssl_session_cache": "shared:ISO:1m", "proxy_pass": echo.address}
    on_trusted = {"ssl_verify_client": "on", "ssl_trusted_certificate": pki.ca}
    sni = f"127.0.0.1:{ports.sni} ssl"
    servers = [
        entry(listen=sni, server_name="a.test", **a, **cache),
        entry(listen=sni, server_name="b.test", ssl_certificate=pki.b_test,
              ssl_certificate_key=pki.b_test_key, **cache),
        # verification on, trust from ssl_trusted_certificate only: no CA names are sent, so
        # the names alone (nginx's context) cannot tell this server from a.test
        entry(listen=sni, server_name="on.test", **a, **on_trusted, **cache),
        entry(listen=sni, server_name="optional.test", **a, ssl_verify_client="optional_no_ca",
              **cache),
        entry(listen=sni, server_name="depth.test", **a, **on_trusted, ssl_verify_depth=2,
              **cache),
        entry(listen=f"127.0.0.1:{ports.twin} ssl", server_name="a.test", **a, **cache),
        entry(listen=f"127.0.0.1:{ports.twin_on} ssl", server_name="on.test", **a, **on_trusted,
              **cache),
    ]
    config = f"worker_processes: 1\n{LOG}\nservers:\n" + "\n".join(servers) + "\n"
    free_port.release()
    gw = module_gateway(tmp_path_factory.mktemp("isolation"), config)
    yield SimpleNamespace(gw=gw, port=ports)
    gw.stop()
    echo.close()


def _client(pki, version: ssl.TLSVersion, tickets: bool) -> ssl.SSLContext:
    """One context per kind (Python resumes a session only on the context that made it); it
    has alice's certificate for the servers that ask, and checks the chain, not the name."""
    ctx = pki.client_context(pki.client, pki.client_key)
    ctx.check_hostname = False
    ctx.minimum_version = ctx.maximum_version = version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _resumed(port: int, name: str, ctx: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> tuple[bool, ssl.SSLSession]:
    with tls_connect(port, ctx, server_hostname=name, session=session) as s:
        assert roundtrip(s) == b"ping"  # a round trip: TLS 1.3 tickets have arrived
        return s.session_reused, s.session


@pytest.mark.parametrize("kind", KINDS)
def test_sessions_resume_only_where_certificates_and_verification_are_the_same(iso, pki, kind):
    ctx = _client(pki, *KINDS[kind])
    p = iso.port
    same = [(p.sni, "a.test"), (p.twin, "a.test")]
    other = [(p.sni, "b.test"), (p.sni, "on.test"), (p.sni, "optional.test"),
             (p.sni, "depth.test"), (p.twin_on, "on.test")]
    reused, session = _resumed(p.sni, "a.test", ctx)
    assert not reused
    if kind != "TLS 1.2 session ID":
        assert session.has_ticket
    got = {where: _resumed(*where, ctx, session)[0] for where in same + other}
    assert got == {**dict.fromkeys(same, True), **dict.fromkeys(other, False)}
    # the other way: a session made where a client certificate was verified
    _, verified = _resumed(p.sni, "on.test", ctx)
    got = {where: _resumed(*where, ctx, verified)[0]
           for where in [(p.twin_on, "on.test"), (p.sni, "a.test"), (p.sni, "depth.test")]}
    assert got == {(p.twin_on, "on.test"): True, (p.sni, "a.test"): False,
                   (p.sni, "depth.test"): False}


def _sni(name: bytes, name_type: int = 0) -> bytes:
    entry = bytes([name_type]) + len(name).to_bytes(2) + name
    return len(entry).to_bytes(2) + entry


@pytest.mark.parametrize("body,name", [
    (_sni(b"a.test"), "a.test"),
    (_sni(b"B.Test."), "B.Test."),  # matching lowercases and drops the dot (sni.match)
    (None, None), (b"", None), (b"\x00", None),
    (_sni(b"a.test")[:-1], None),             # shorter than its length says
    (_sni(b"a.test") + b"x", None),           # trailing bytes
    (_sni(b"a.test", name_type=1), None),     # not a host_name
    (_sni(b""), None), (_sni(b"a\0b"), None), (_sni("é.test".encode()), None),
])
def test_server_name_is_read_from_the_client_hello_as_openssl_reads_it(body, name):
    from tlsgw.tls.hello import parse_server_name

    assert parse_server_name(body) == name


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A TLS handshake in memory (no sockets); raises what the server raises."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return
    raise AssertionError("the handshake did not finish")


def test_a_connection_whose_session_id_context_cannot_be_set_is_refused(pki, monkeypatch):
    """Fail closed: a handshake goes on only with the server's own session-id context."""
    from tlsgw.tls import hello, native, resumption

    settings = resumption.SessionSettings()
    runtime = resumption.prepare_in_master([settings])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server, pki.server_key)
    resumption.apply(ctx, settings, runtime, b"x" * 20)
    client = pki.client_context()
    _handshake(ctx, client)
    monkeypatch.delitem(hello._id_contexts, native.ctx_pointer(ctx))
    with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED|callback failed"):
        _handshake(ctx, client)
