"""DNS discovery (``resolver``, ``resolve``): a real dnsmasq on loopback serving a hosts file the
test rewrites, a gateway whose upstream server is that name, and what the sessions see: an
address added receives sessions within ``valid``, one removed none, a failure keeps the last
addresses, NXDOMAIN empties the group. Then the parts without sockets: check's refusals,
convert, and ketama placement across membership changes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest
from support import Backend, Gateway, free_port, recv_exactly, run_cli, wait_until

from tlsgw.balancer import Method as BalancerMethod
from tlsgw.balancer import PeerConfig, Upstream, ketama_points
from tlsgw.config.load import load_config
from tlsgw.config.schema.discovery import Resolver
from tlsgw.convert import convert
from tlsgw.errors import ConfigErrors
from tlsgw.process import discovery

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq")
                                       else None)
needs_dnsmasq = pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq is not installed")


class Dnsmasq:
    """dnsmasq answering for ``*.test`` from one hosts file (NXDOMAIN for other .test names)."""

    def __init__(self, directory: Path, port: int):
        self.hosts = directory / "hosts"
        self.port = port
        self.log = directory / "dnsmasq.log"
        self.pidfile = directory / "dnsmasq.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, *lines: str) -> None:
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(self.hosts)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)  # dnsmasq rereads --addn-hosts files

    def start(self) -> None:
        assert DNSMASQ is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts",
                 f"--addn-hosts={self.hosts}", f"--port={self.port}",
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                 "--local=/test/", "--local-ttl=1", f"--pid-file={self.pidfile}",
                 "--user=" + (os.environ.get("USER") or "root")],
                stdout=log, stderr=log)
        wait_until(self.answers, 10, "dnsmasq to answer")
        assert self.proc.poll() is None, f"dnsmasq exited: {self.log.read_text()}"

    def answers(self) -> bool:
        try:
            asyncio.run(discovery.lookup(Resolver((("127.0.0.1", self.port),), ipv6=False),
                                         "probe.test", 0.3))
        except discovery.ResolveError:
            return self.proc is None or self.proc.poll() is not None
        return True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """dnsmasq, two backends at 127.0.0.2 and 127.0.0.3 on one port, and a gateway whose
    upstream is ``app.test:PORT resolve`` plus a static server."""
    directory = tmp_path_factory.mktemp("discovery")
    dns = Dnsmasq(directory, free_port())
    dns.write("127.0.0.2 app.test", *(f"10.1.0.{i} many.test" for i in range(1, 61)))
    for _ in range(3):  # free_port() checks TCP; the UDP port may still be taken
        try:
            dns.start()
            break
        except AssertionError:
            dns.proc, dns.port = None, free_port()
    else:
        pytest.fail(f"dnsmasq did not start: {dns.log.read_text()}")
    two = Backend("identify", name="two", host="127.0.0.2")
    three = Backend("identify", name="three", host="127.0.0.3", port=two.port)
    gw = Gateway(directory, f"""\
        error_log: stderr notice
        resolver: 127.0.0.1:{dns.port} valid=1s ipv6=off
        resolver_timeout: 1s
        upstreams:
          app:
            servers:
              - app.test:{two.port} resolve
        servers:
          - listen: 127.0.0.1:0
            proxy_pass: app
            proxy_timeout: 10s
            proxy_connect_timeout: 1s
        """)
    try:
        gw.start()
        yield dns, gw, two, three
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()
        dns.stop()
        two.close()
        three.close()


def _who(gw: Gateway, n: int) -> list[str]:
    out = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=5) as s:
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
            out.append(data.decode().strip() or "(closed)")
    return out


@needs_dnsmasq
def test_an_answer_too_big_for_udp_is_asked_again_over_tcp(lab):
    """60 A records do not fit a 512-byte UDP answer: dnsmasq sets TC, the query goes to TCP."""
    dns = lab[0]
    answer = asyncio.run(discovery.lookup(Resolver((("127.0.0.1", dns.port),), ipv6=False),
                                          "many.test", 5))
    assert sorted(answer.addresses) == sorted(f"10.1.0.{i}" for i in range(1, 61))
    assert answer.ttl == 1  # --local-ttl


@needs_dnsmasq
def test_an_error_rcode_is_a_failure_and_nxdomain_is_no_address(lab):
    resolver = Resolver((("127.0.0.1", lab[0].port),))
    with pytest.raises(discovery.ResolveError) as info:  # not local, no upstream: REFUSED
        asyncio.run(discovery.lookup(resolver, "app.example", 5))
    assert str(info.value) == "5: Operation refused"
    assert asyncio.run(discovery.lookup(resolver, "nothing.test", 5)).addresses == ()


@needs_dnsmasq
def test_the_first_answer_gives_the_upstream_its_addresses(lab):
    dns, gw, two, three = lab
    gw.wait_log(f"app.test:{two.port} resolved to 127.0.0.2:{two.port}")
    assert _who(gw, 3) == ["two"] * 3


@needs_dnsmasq
def test_an_address_added_to_the_name_receives_new_sessions(lab):
    dns, gw, two, three = lab
    dns.write("127.0.0.2 app.test", "127.0.0.3 app.test")
    gw.wait_log(f"added 127.0.0.3:{two.port}")
    assert sorted(_who(gw, 4)) == ["three", "three", "two", "two"]  # round robin over both


@needs_dnsmasq
def test_an_address_removed_gets_no_new_session_and_open_ones_go_on(lab):
    dns, gw, two, three = lab
    held = socket.create_connection(("127.0.0.1", gw.port()), timeout=5)
    first = recv_exactly(held, 4)  # "two\n" or "thre"
    dns.write("127.0.0.3 app.test")
    gw.wait_log(f"removed 127.0.0.2:{two.port})")
    assert _who(gw, 4) == ["three"] * 4
    held.sendall(b"ping")  # the session opened before the change is still served
    if first == b"two\n":
        assert recv_exactly(held, 4) == b"ping"
    held.close()


@needs_dnsmasq
def test_a_failed_resolution_keeps_the_last_addresses(lab):
    dns, gw, two, three = lab
    dns.stop()
    gw.wait_log("app.test could not be resolved (110: Operation timed out)")
    assert _who(gw, 2) == ["three"] * 2


@needs_dnsmasq
def test_nxdomain_empties_the_group_and_an_answer_refills_it(lab):
    dns, gw, two, three = lab
    dns.write("127.0.0.9 other.test")
    dns.start()
    gw.wait_log(f"app.test:{two.port} resolved to no address (removed 127.0.0.3:{two.port})")
    assert "app.test could not be resolved (3: Host not found)" in gw.stderr()
    assert _who(gw, 1) == ["(closed)"]  # no live upstreams: 502
    gw.wait_log("no live upstreams")
    dns.write("127.0.0.2 app.test")
    back = f"resolved to 127.0.0.2:{two.port} (added 127.0.0.2:{two.port})"
    wait_until(lambda: gw.stderr().count(back) == 2, 10,
               "the name to come back")
    assert _who(gw, 1) == ["two"]


@needs_dnsmasq
def test_a_reload_keeps_the_addresses_found(lab):
    """A reload rebuilds the upstream from what discovery holds: the addresses stay (nothing
    would re-add them, the next answer being the same)."""
    dns, gw, two, three = lab
    text = gw.config.read_text()
    gw.config.write_text(text.replace("proxy_connect_timeout: 1s", "proxy_connect_timeout: 2s"))
    gw.send(signal.SIGHUP)
    gw.wait_log("serving generation 1")
    assert _who(gw, 2) == ["two"] * 2


# ---- configuration: check and convert --------------------------------------------------------
def _check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    r = run_cli("check", "-c", str(path))
    return r.returncode, r.stderr.replace(str(path), "FILE")


UPSTREAM = """\
{main}upstreams:
  app:
{up}    servers:
      - {server}
servers:
  - listen: 127.0.0.1:0
    proxy_pass: app
{srv}"""


@pytest.mark.parametrize(("main", "up", "server", "srv", "message"), [
    ("", "", "app.test:80 resolve", "",
     'FILE:2: no resolver defined to resolve names at run time in upstream "app"'),
    ("resolver: 127.0.0.1 ipv6=maybe\n", "", "app.test:80 resolve", "",
     'FILE:1: invalid parameter: ipv6=maybe in "resolver"'),
    ("resolver: 127.0.0.1 ipv4=off ipv6=off\n", "", "app.test:80 resolve", "",
     '"ipv4" and "ipv6" cannot both be "off" in "resolver"'),
    ("resolver: dns.example\n", "", "app.test:80 resolve", "",
     'not an IP address in resolver "dns.example"'),
    ("resolver: valid=10s\n", "", "app.test:80 resolve", "", "no name servers defined"),
    ("resolver: 127.0.0.1 valid=soon\n", "", "app.test:80 resolve", "",
     "invalid parameter: valid=soon"),
    ("", "    resolver_timeout: 0s\n", "app.test:80 resolve", "", 'resolver_timeout'),
    ("resolver: 127.0.0.1\n", "", "app.test resolve", "", 'no port in upstream "app.test"'),
    ("resolver: 127.0.0.1\n", "", "app..test:80 resolve", "",
     'FILE:5: invalid host name in upstream "app..test:80"'),
    ("resolver: 127.0.0.1\n", "", "app.test:80 resolve", "    health_check: on\n",
     '"health_check" is not supported yet for an upstream with "resolve" servers'),
])
def test_check_rejects(tmp_path, main, up, server, srv, message):
    path = tmp_path / "c.yaml"
    path.write_text(UPSTREAM.format(main=main, up=up, server=server, srv=srv))
    with pytest.raises(ConfigErrors) as info:
        load_config(str(path))
    err = "\n".join(str(e) for e in info.value.errors).replace(str(path), "FILE")
    assert message in err, err


def test_tlsgw_check_names_the_upstream_without_resolver(tmp_path):
    code, err = _check(tmp_path, UPSTREAM.format(main="", up="", server="app.test:80 resolve",
                                                 srv=""))
    assert code == 1 and ('tlsgw: [emerg] FILE:2: no resolver defined to resolve names at run '
                          'time in upstream "app"') in err, err


def test_resolver_in_the_upstream_wins_and_an_ip_with_resolve_is_static(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(UPSTREAM.format(
        main="resolver: 127.0.0.1\n",
        up="    resolver: 127.0.0.5:5353 [::1] valid=30s ipv6=off\n    resolver_timeout: 2s\n",
        server="app.test:80 resolve\n      - 127.0.0.1:81 resolve", srv=""))
    up = load_config(str(path)).upstreams["app"]
    assert up.resolver.servers == (("127.0.0.5", 5353), ("::1", 53))
    assert (up.resolver.valid, up.resolver.ipv6, up.resolver_timeout) == (30, False, 2.0)
    assert load_config(str(path)).main.resolver.valid is None  # the top level's: the TTL
    name, ip = up.servers
    assert name.resolve and name.addresses == ()
    assert not ip.resolve and [a.name for a in ip.addresses] == ["127.0.0.1:81"]


def test_convert_knows_resolver_and_resolve(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text("stream {\n  resolver 10.0.0.2 valid=10s ipv6=off;\n  resolver_timeout 5s;\n"
                    "  upstream app {\n    zone app 64k;\n    resolver 10.0.0.3;\n"
                    "    server app.example:8080 resolve max_fails=2;\n  }\n"
                    "  server { listen 9000; resolver 10.0.0.4; proxy_pass app; }\n}\n")
    result = convert(str(conf))
    # nginx's server-level resolver (for variables in proxy_pass) has no use here: a comment
    assert "# resolver: is not allowed here by tlsgw" in result.text
    assert "resolver: 10.0.0.2 valid=10s ipv6=off" in result.text
    assert "resolver_timeout: 5s" in result.text
    assert "resolver: 10.0.0.3" in result.text
    assert "app.example:8080 resolve max_fails=2" in result.text


# ---- placement, without sockets ----------------------------------------------------------------
def _peers(name_addresses: list[str]) -> list[PeerConfig]:
    static = [PeerConfig(server=f"10.0.0.{i}:80", name=f"10.0.0.{i}:80") for i in (1, 2)]
    dynamic = [PeerConfig(server="app.svc:80", name=f"{ip}:80") for ip in name_addresses]
    return static + dynamic


def _place(peers: list[PeerConfig], keys: list[bytes]) -> list[tuple[str, str]]:
    up = Upstream("u", peers, BalancerMethod("hash_consistent"), dynamic=True)
    out = []
    for k in keys:
        p = up.picker(k).get()
        out.append(("-", "-") if p is None else (p.server, p.name))
    return out


KEYS = [f"client-{i}".encode() for i in range(2000)]


def test_a_names_ring_points_do_not_depend_on_its_addresses():
    one = ketama_points([(p.server, p.weight) for p in _peers(["192.0.2.1"])])
    three = ketama_points([(p.server, p.weight) for p in _peers(["192.0.2.1", "192.0.2.2",
                                                                 "192.0.2.3"])])
    assert one == three  # the name as written is hashed, as nginx does


def test_membership_changes_move_no_key_between_servers():
    before = _place(_peers(["192.0.2.1"]), KEYS)
    after = _place(_peers(["192.0.2.1", "192.0.2.2"]), KEYS)
    assert [s for s, _ in before] == [s for s, _ in after]  # same server text for every key
    # keys on the name are spread over its addresses (no per-address stickiness, as nginx)
    on_name = {n for s, n in after if s == "app.svc:80"}
    assert on_name == {"192.0.2.1:80", "192.0.2.2:80"}
    # keys of the static servers did not move at all
    assert [x for x in before if x[0] != "app.svc:80"] == [x for x in after
                                                            if x[0] != "app.svc:80"]


def test_a_name_without_addresses_lends_its_keys_and_gets_them_back():
    full = _place(_peers(["192.0.2.1"]), KEYS)
    empty = _place(_peers([]), KEYS)
    assert all(s != "app.svc:80" for s, _ in empty)
    assert [e for f, e in zip(full, empty, strict=True) if f[0] != "app.svc:80"] == [
        f for f in full if f[0] != "app.svc:80"]  # only the name's keys moved
    assert _place(_peers(["192.0.2.1"]), KEYS) == full


def test_an_empty_dynamic_group_answers_no_live_upstreams():
    for kind in ("round_robin", "hash", "hash_consistent", "least_conn", "random", "random_two"):
        up = Upstream("u", [], BalancerMethod(kind), dynamic=True)
        assert up.picker(b"k").get() is None, kind
    with pytest.raises(ValueError):
        Upstream("u", [], BalancerMethod("round_robin"))


def test_a_resolved_backup_serves_while_the_primary_name_has_no_address():
    backup = PeerConfig(server="app.dc2:80", name="192.0.2.9:80", backup=True)
    up = Upstream("u", [backup], BalancerMethod("round_robin"), dynamic=True)
    assert up.picker().get().name == "192.0.2.9:80"
    primary = PeerConfig(server="app.dc1:80", name="192.0.2.1:80")
    up = Upstream("u", [primary, backup], BalancerMethod("round_robin"), dynamic=True)
    assert up.picker().get().name == "192.0.2.1:80"
