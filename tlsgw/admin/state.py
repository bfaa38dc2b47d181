"""What the master writes on its board (:mod:`tlsgw.admin.board`) about a generation: the
configuration's shape (listeners, servers, upstreams and their peers, certificates) as plain
JSON, and the names the metrics use as labels. Computed at start-up and at each reload, in the
master: nothing here runs per connection.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509

from tlsgw.admin.names import server_label
from tlsgw.config.model import Config
from tlsgw.runtime.steer import steerable


def certificate_files(cfg: Config) -> list[tuple[str, str]]:
    """Every certificate file served to clients or presented to upstreams: (file, role)."""
    out: dict[str, str] = {}
    for srv in cfg.servers:
        for path in srv.s.ssl_certificate or ():
            out.setdefault(path, "served")
        if srv.s.proxy_ssl_certificate:
            out.setdefault(srv.s.proxy_ssl_certificate, "presented to upstreams")
    return list(out.items())


def read_certificate(path: str) -> dict[str, Any]:
    """The leaf (first) certificate of a PEM file: subject, expiry (Unix time)."""
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        return {"file": path, "error": str(exc)}
    not_after = cert.not_valid_after_utc
    return {"file": path, "subject": cert.subject.rfc4514_string(),
            "not_after": not_after.isoformat(), "expiry_timestamp": not_after.timestamp(),
            "days_left": round((not_after - dt.datetime.now(dt.UTC)).total_seconds()
                               / 86400, 1)}


def describe(cfg: Config, bound: dict[str, str]) -> dict[str, Any]:
    """The configuration's shape; *bound*: listen text → the address it got (port 0)."""
    listeners = []
    for g in cfg.groups:
        listeners.append({"listen": g.listen.text,
                          "address": bound.get(g.listen.text, g.listen.address.name),
                          "ssl": g.ssl, "proxy_protocol": bool(g.listen.proxy_protocol),
                          "servers": [server_label(s, cfg) for s in g.servers]})
    servers = [{"name": server_label(s, cfg), "line": s.line,
                "listen": [ls.text for ls in s.listens], "server_name": list(s.server_names),
                "upstream": s.upstream.name} for s in cfg.servers]
    upstreams = []
    # the upstreams: block's (unused ones too), then the implicit ones of proxy_pass ADDRESS
    for u in steerable(cfg).values():
        peers = [{"server": p.server, "peer": p.name, "weight": p.weight,
                  "max_fails": p.max_fails, "fail_timeout": p.fail_timeout,
                  "max_conns": p.max_conns, "backup": p.backup, "down": p.down}
                 for p in u.peer_configs()]
        upstreams.append({"name": u.name, "method": u.method.kind, "implicit": u.implicit,
                          "health_check": any(s.health_check is not None for s in cfg.servers
                                              if s.upstream.name == u.name),
                          "peers": peers})
    certificates = []
    for path, role in certificate_files(cfg):
        certificates.append({**read_certificate(path), "role": role})
    return {"file": cfg.file, "worker_processes": cfg.worker_processes,
            "listeners": listeners, "servers": servers, "upstreams": upstreams,
            "certificates": certificates}
