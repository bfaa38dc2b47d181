"""The processes under test and the backend behind them, with equivalent configurations.

* :class:`Backend`: nginx ``http {}``, one worker, serving ``/100b`` and ``/1m`` (1 MiB) from a
  temporary root, keep-alive for a practically unlimited number of requests; and a UDP server
  (nginx ``stream {}`` ``return``) answering every datagram with one of :data:`UDP_REPLY`.
* :class:`NginxGateway` and :class:`TlsgwGateway`: one worker each, a plaintext listener and a
  TLS listener (same ECDSA P-256 certificate, ``TLSv1.2 TLSv1.3``, ``shared:SSL:10m``), one
  upstream ``hash $remote_addr consistent`` with the backend as its only server, every other
  setting at its default (which tlsgw takes from nginx). The access log is off, or on with the
  same format to a file in the temporary directory.

tlsgw's configuration is first validated with ``tlsgw check``. If TLS is rejected (TLS support
lands separately), the gateway runs with the plaintext listener only and :attr:`tls_na` holds
the check's first message, which the report prints in place of the TLS numbers.
"""

from __future__ import annotations

import os
import re
import resource
import ssl
import subprocess
import sys
from pathlib import Path

import bench_procs as procs

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
LOG_FORMAT = ('$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received '
              '$session_time "$upstream_addr" $ssl_protocol $ssl_session_reused')
FILES = {"100b": 100, "1m": 1024 * 1024}
#: what the UDP backend answers to every datagram (a DNS-sized answer)
UDP_REPLY = "a" * 100


def nofile_limit() -> int:
    """Raise this process's RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def tlsgw_env(src: Path = ROOT) -> dict[str, str]:
    """The environment for ``python -m tlsgw``: ``src`` (this checkout) first on the path."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{path}" if path else str(src))


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Server:
    """Common start/stop and accounting of a process tree started with :func:`procs.spawn`."""

    name = ""  # how reports call it; an instance may override it (A/B mode: "base")

    def __init__(self, workdir: Path, cpus: list[int] | None, cap: int):
        self.dir = workdir
        self.cpus = cpus
        self.cap = cap
        self.proc: subprocess.Popen[bytes] | None = None
        self.root = 0

    def _start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = procs.spawn(argv, cpus=self.cpus, cap=self.cap, log=self.dir / "output.log",
                                cwd=self.dir, env=env)
        self.root = procs.gateway_root(self.proc)

    def _wait_ready(self, port: int, tls: bool = False) -> None:
        ctx = client_context() if tls else None

        def ok() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()[-2000:]}")
            return procs.http_get(HOST, port, "/100b", ctx, timeout=2).startswith(b"HTTP/1.1 200")

        procs.wait_for(ok, 20, f"{self.name} on port {port}")

    def output(self) -> str:
        text = ""
        for f in sorted(self.dir.glob("*.log")):
            if "access" not in f.name:
                text += f.read_text(errors="replace")
        return text

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def cpu(self) -> float:
        return sum(procs.cpu_seconds(self.root))

    def cpu_split(self) -> tuple[float, float]:
        return procs.cpu_seconds(self.root)

    def rss_kib(self) -> int:
        return procs.rss_kib(self.root)

    def pids(self) -> list[int]:
        return procs.tree(self.root)


class Backend(_Server):
    name = "backend nginx"

    def __init__(self, workdir: Path, cpus: list[int] | None, cap: int, port: int,
                 tls_port: int | None = None, certs: Path | None = None, udp_port: int = 0):
        super().__init__(workdir, cpus, cap)
        self.port = port
        self.tls_port, self.certs = tls_port, certs  # the pass-through target of ssl_preread
        self.udp_port = udp_port

    def start(self) -> None:
        www = self.dir / "www"
        www.mkdir(parents=True, exist_ok=True)
        for name, size in FILES.items():
            (www / name).write_bytes(os.urandom(size))
        for p in (self.dir, www, *www.iterdir()):  # nginx workers run as nobody under root
            p.chmod(0o755)
        nofile = nofile_limit()
        tls = "" if self.tls_port is None else (
            f"listen {HOST}:{self.tls_port} ssl backlog=4096;\n"
            f"        ssl_certificate {self.certs}/server.pem;\n"
            f"        ssl_certificate_key {self.certs}/server.key;")
        conf = self.dir / "nginx.conf"
        udp = "" if not self.udp_port else f"""
load_module {NGINX_STREAM_MODULE};"""
        stream = "" if not self.udp_port else f"""
stream {{
    access_log off;
    server {{
        listen {HOST}:{self.udp_port} udp;
        return "{UDP_REPLY}";
    }}
}}"""
        conf.write_text(f"""\
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log error;{udp}
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile // 2}; }}{stream}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    open_file_cache max=16;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{self.port} backlog=4096;
        {tls}
        root {www};
    }}
}}
""")
        self._start(["nginx", "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"])
        self._wait_ready(self.port)
        if self.tls_port is not None:
            self._wait_ready(self.tls_port, tls=True)


class Gateway(_Server):
    """A gateway under test: a plaintext and (if supported) a TLS listener to the backend."""

    def __init__(self, workdir: Path, cpus: list[int] | None, cap: int, backend_port: int,
                 certs: Path, src: Path = ROOT, backend_tls_port: int | None = None):
        super().__init__(workdir, cpus, cap)
        self.src = src  # the tree whose tlsgw package runs (tlsgw only)
        self.backend_port = backend_port
        self.certs = certs
        self.plain_port, self.tls_port_wanted, self.udp_port_wanted = procs.free_ports(3)
        self.tls_port: int | None = self.tls_port_wanted
        #: the backend's UDP server (set by the runner for the UDP scenario), the UDP listener
        self.backend_udp_port = 0
        self.udp_port: int | None = None
        self.udp_na: str | None = None  # why the UDP row is n/a
        self.tls_na: str | None = None  # why TLS rows are n/a
        # the ssl_preread address (names passed through to the backend's TLS listener,
        # "localhost" terminated) and, for nginx, the loopback hop to its terminating server
        self.backend_tls_port = backend_tls_port
        self.preread_port, self.hop_port = procs.free_ports(2)
        self.preread_na: str | None = None if backend_tls_port else "no TLS backend"
        self.na: str | None = None  # why every row is n/a
        self.access_log: Path | None = None

    def start(self, access_log: bool) -> None:
        raise NotImplementedError

    def access_lines(self) -> int:
        if self.access_log is None or not self.access_log.exists():
            return 0
        with open(self.access_log, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


class NginxGateway(Gateway):
    name = "nginx"

    def udp_server(self) -> str:
        if not self.backend_udp_port:
            return ""
        self.udp_port = self.udp_port_wanted
        return f"""
    server {{
        listen {HOST}:{self.udp_port} udp;
        proxy_responses 1;
        proxy_pass {HOST}:{self.backend_udp_port};
    }}"""

    def start(self, access_log: bool) -> None:
        self.access_log = self.dir / "access.log" if access_log else None
        log = f"access_log {self.access_log} bench;" if access_log else "access_log off;"
        nofile = nofile_limit()
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""\
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log error;
load_module {NGINX_STREAM_MODULE};
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 64}; }}
stream {{
    log_format bench '{LOG_FORMAT}';
    {log}
    upstream backend {{
        hash $remote_addr consistent;
        server {HOST}:{self.backend_port};
    }}
    server {{
        listen {HOST}:{self.plain_port};
        proxy_pass backend;
    }}
    server {{
        listen {HOST}:{self.tls_port} ssl;
        ssl_certificate {self.certs}/server.pem;
        ssl_certificate_key {self.certs}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        proxy_pass backend;
    }}{self.udp_server()}
{self.preread_nginx()}}}
""")
        self._start(["nginx", "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"])
        self._wait_ready(self.plain_port)
        self._wait_ready(self.tls_port_wanted, tls=True)
        if self.preread_na is None:
            self._wait_ready(self.preread_port, tls=True)

    def preread_nginx(self) -> str:
        """nginx's way to pass some names through and terminate others on one port: a map to
        the TLS backend or to a loopback hop to its own ssl server (section 6.4 of the notes)."""
        if self.preread_na is not None:
            return ""
        return f"""\
    map $ssl_preread_server_name $pre {{
        localhost {HOST}:{self.hop_port};
        default {HOST}:{self.backend_tls_port};
    }}
    server {{
        listen {HOST}:{self.preread_port};
        ssl_preread on;
        proxy_pass $pre;
    }}
    server {{
        listen {HOST}:{self.hop_port} ssl;
        ssl_certificate {self.certs}/server.pem;
        ssl_certificate_key {self.certs}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        proxy_pass backend;
    }}
"""


class TlsgwGateway(Gateway):
    name = "tlsgw"

    admin = False  # the admin endpoint and its metrics on (run.py --admin)

    def config(self, access_log: bool, tls: bool, preread: bool = False,
               udp: bool = False) -> str:
        text = f"""\
worker_processes: 1
error_log: {self.dir}/error.log error
log_format:
  bench: '{LOG_FORMAT}'
"""
        if self.admin:
            text += "admin: {listen: 127.0.0.1:0}\n"
        if access_log:
            text += f"access_log: {self.access_log} bench\n"
        text += f"""\
upstreams:
  backend:
    hash: $remote_addr consistent
    servers: [{HOST}:{self.backend_port}]
servers:
  - listen: {HOST}:{self.plain_port}
    proxy_pass: backend
"""
        if tls:
            text += f"""\
  - listen: {HOST}:{self.tls_port_wanted} ssl
    ssl_certificate: {self.certs}/server.pem
    ssl_certificate_key: {self.certs}/server.key
    ssl_protocols: TLSv1.2 TLSv1.3
    ssl_session_cache: shared:SSL:10m
    proxy_pass: backend
"""
        if udp:
            text += f"""\
  - listen: {HOST}:{self.udp_port_wanted} udp
    proxy_responses: 1
    proxy_pass: {HOST}:{self.backend_udp_port}
"""
        if preread:  # one address: localhost terminated here, other names passed through
            text += f"""\
  - listen: {HOST}:{self.preread_port}
    ssl_preread: on
    proxy_pass: $pre
  - listen: {HOST}:{self.preread_port} ssl
    server_name: localhost
    ssl_certificate: {self.certs}/server.pem
    ssl_certificate_key: {self.certs}/server.key
    ssl_protocols: TLSv1.2 TLSv1.3
    ssl_session_cache: shared:SSL:10m
    proxy_pass: backend
map:
  $pre:
    source: $ssl_preread_server_name
    default: {HOST}:{self.backend_tls_port}
"""
        return text

    def check(self, path: Path) -> str | None:
        """``tlsgw check``; None when valid, else its first message without the file prefix."""
        r = subprocess.run([sys.executable, "-m", "tlsgw", "check", "-c", str(path)],
                           capture_output=True, text=True, cwd=self.dir, env=tlsgw_env(self.src),
                           timeout=60)
        if r.returncode == 0:
            return None
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()] or [f"exit {r.returncode}"]
        first = next((ln for ln in lines if "[emerg]" in ln), lines[0])
        first = first.split("[emerg]", 1)[-1].strip()
        return re.sub(rf"^{re.escape(str(path))}:\d+:\s*", "", first)

    def start(self, access_log: bool) -> None:
        self.access_log = self.dir / "access.log" if access_log else None
        self.tls_port, self.tls_na, self.na = self.tls_port_wanted, None, None
        conf = self.dir / "tlsgw.yaml"
        udp = bool(self.backend_udp_port)
        self.udp_port, self.udp_na = (self.udp_port_wanted if udp else None), None
        if udp:  # a tree without UDP (a baseline) still measures the rest
            conf.write_text(self.config(access_log, tls=False, udp=True))
            self.udp_na = self.check(conf)
            if self.udp_na is not None:
                udp, self.udp_port = False, None
        self.preread_na = None if self.backend_tls_port else "no TLS backend"
        if self.preread_na is None:  # a tree without ssl_preread still runs the other rows
            conf.write_text(self.config(access_log, tls=True, preread=True))
            self.preread_na = self.check(conf)
        conf.write_text(self.config(access_log, tls=True, preread=self.preread_na is None,
                                    udp=udp))
        self.tls_na = self.check(conf)
        if self.tls_na is not None:
            self.tls_port = None
            conf.write_text(self.config(access_log, tls=False, udp=udp))
            self.na = self.check(conf)
            if self.na is not None:
                return
        self._start([sys.executable, "-m", "tlsgw", "serve", "-c", str(conf)],
                    env=tlsgw_env(self.src))
        self._wait_ready(self.plain_port)
        if self.tls_port is not None:
            try:
                self._wait_ready(self.tls_port, tls=True)
            except RuntimeError as exc:  # plaintext works: measure that, report TLS as n/a
                self.tls_na, self.tls_port = f"TLS listener not working: {exc}", None
        if self.preread_na is None and self.tls_port is not None:
            self._wait_ready(self.preread_port, tls=True)
