"""tlsgw.tls.transport without sockets: the accepted connection's SSLObject calls C directly
(no Python frame per handshake step or per TLS record), and still completes a handshake."""

from __future__ import annotations

import ssl

from tlsgw.tls.transport import ServerSSLObject, _Accepting


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def test_accepted_sslobject_calls_c_directly_and_handshakes(pki):
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    accepting = _Accepting(pki.server_context())
    server = accepting.wrap_bio(s_in, s_out)
    assert isinstance(server, ServerSSLObject) and accepting.outgoing is s_out
    inner = server._sslobj  # type: ignore[attr-defined]
    for name in ("do_handshake", "read", "write", "pending"):
        method = getattr(server, name)
        assert method.__self__ is inner and not hasattr(method, "__func__"), name
    client = pki.client_context().wrap_bio(c_in, c_out, server_hostname="localhost")
    done = set()
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if side in done:
                continue
            try:
                obj.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
        _pump(c_out, s_in)
        _pump(s_out, c_in)
        if done == {"client", "server"}:
            break
    assert done == {"client", "server"}
    client.write(b"ping")
    _pump(c_out, s_in)
    assert server.read(1024) == b"ping" and server.pending() == 0
    assert server.version() == client.version()
