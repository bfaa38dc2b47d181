"""``GET /metrics``: a custom prometheus_client collector over the stats table (what the
workers and the health check helper accounted, summed over the rows) and the master's board
(reloads, generation, workers, certificates), rendered with prometheus_client's own
exposition code. Not its multiprocess mode (files per pid, no custom collectors; see
docs/design.md): the table is the shared state, this is only its reader.

Every family the issue names is always present (with no sample until there is one to
show); the label sets that the configuration fixes (listeners, peers) are shown from the start
with 0. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tlsgw.admin.account import BUCKETS
from tlsgw.admin.board import Board, health_lookup
from tlsgw.admin.table import Table

#: family -> (type, help, label names); the table's families and the board's
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tlsgw_connections_total": ("counter", "Client connections accepted.", ("listener",)),
    "tlsgw_connections_active": ("gauge", "Client connections open now.", ("listener",)),
    "tlsgw_sessions_total": ("counter", "Sessions ended, by the access log's $status.",
                             ("server", "status")),
    "tlsgw_bytes_total": ("counter", "Bytes received from and sent to clients.",
                          ("server", "direction")),
    "tlsgw_upstream_bytes_total": ("counter", "Bytes sent to and received from upstream "
                                   "servers.", ("upstream", "peer", "direction")),
    "tlsgw_tls_handshakes_total": ("counter", "Client TLS handshakes, by result and the "
                                   "reason of a failure.", ("listener", "result", "reason")),
    "tlsgw_tls_handshake_duration_seconds": ("histogram", "Time from accept to the end of the "
                                             "client TLS handshake.", ("listener",)),
    "tlsgw_tls_resumed_total": ("counter", "Client TLS handshakes that resumed a session, by "
                                "how.", ("listener", "kind")),
    "tlsgw_upstream_peer_up": ("gauge", "1 if the upstream server gets new sessions, else 0.",
                               ("upstream", "peer")),
    "tlsgw_upstream_peer_state": ("gauge", "The upstream server's state (one series per "
                                  "state, 1 for the current one).",
                                  ("upstream", "peer", "state")),
    "tlsgw_upstream_peer_sessions_total": ("counter", "Sessions that were connected to the "
                                           "upstream server, counted at their end.",
                                           ("upstream", "peer")),
    "tlsgw_upstream_peer_sessions_active": ("gauge", "Sessions connected to the upstream "
                                            "server now.", ("upstream", "peer")),
    "tlsgw_upstream_connect_failures_total": ("counter", "Failed connection attempts to the "
                                              "upstream server, by reason.",
                                              ("upstream", "peer", "reason")),
    "tlsgw_upstream_connect_duration_seconds": ("histogram", "Time to connect to an upstream "
                                                "server (with proxy_ssl, the TLS handshake "
                                                "included).", ("upstream",)),
    "tlsgw_health_checks_total": ("counter", "Active health check probes, by result.",
                                  ("upstream", "peer", "result")),
    "tlsgw_certificate_expiry_timestamp_seconds": ("gauge", "When the certificate expires "
                                                   "(Unix time).", ("file", "subject")),
    "tlsgw_reloads_total": ("counter", "Reload attempts, by result.", ("result",)),
    "tlsgw_last_reload_success_timestamp_seconds": ("gauge", "When the running configuration "
                                                    "was loaded (Unix time).", ()),
    "tlsgw_config_generation": ("gauge", "The running configuration's generation number.", ()),
    "tlsgw_workers": ("gauge", "Worker processes running.", ()),
}

#: the states of ``tlsgw_upstream_peer_state``: up, down (its health check failed, or the
#: ``down`` parameter), failed (``max_fails`` reached within ``fail_timeout`` in a worker),
#: draining and disabled (the admin endpoint's runtime states, docs/steering.md)
PEER_STATES = ("up", "down", "failed", "draining", "disabled")


def _family(name: str) -> Metric:
    kind, doc, labels = FAMILIES[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def _fmt(bound: float) -> str:
    return repr(float(bound)) if bound != int(bound) else f"{float(bound)}"


class TlsgwCollector(Collector):
    def __init__(self, table: Table, board: Board, health_buf: Any = None):
        self.table = table
        self.board = board
        self.health_buf = health_buf  # the master's health zone
        self.health = health_lookup(health_buf, {})  # of the board read by the last collect()
        self.parsed: dict[str, tuple[str, dict[str, str]]] = {}

    def _parse(self, key: str) -> tuple[str, dict[str, str]]:
        got = self.parsed.get(key)
        if got is None:
            family, labels = json.loads(key)
            got = self.parsed[key] = (family, dict(labels))
        return got

    def peer_state(self, upstream: str, peer: dict[str, Any], failed_until: float,
                   now: float, admin: str = "enabled") -> str:
        if admin == "disabled":
            return "disabled"
        if peer.get("down"):
            return "down"
        health = self.health(upstream)
        if health is not None:
            buf, slots = health
            slot = slots.get(peer["peer"])
            if slot is not None and not buf[slot]:
                return "down"
        if failed_until > now:
            return "failed"
        return "draining" if admin == "draining" else "up"

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        board = self.board.read()
        self.health = health_lookup(self.health_buf, board)
        config = board.get("config", {})
        values = self.table.read()
        fams = {name: _family(name) for name in FAMILIES}
        seen: dict[str, set[tuple[str, ...]]] = {name: set() for name in FAMILIES}
        failed_until: dict[tuple[str, str], float] = {}
        for key, vals in values.items():
            family, labels = self._parse(key)
            if family == "tlsgw_upstream_peer_failed_until":
                continue  # read per row below (the latest, not the sum)
            spec = FAMILIES.get(family)
            if spec is None:
                continue
            kind, _, names = spec
            lv = [labels.get(n, "") for n in names]
            if kind == "histogram":
                buckets, acc = [], 0.0
                for bound, n in zip((*BUCKETS, float("inf")), vals[:len(BUCKETS) + 1], strict=True):
                    acc += n
                    buckets.append(("+Inf" if bound == float("inf") else _fmt(bound), acc))
                fams[family].add_metric(lv, buckets, vals[len(BUCKETS) + 1])
            else:
                fams[family].add_metric(lv, vals[0])
            seen[family].add(tuple(lv))
        for row in self.table.rows:  # failed_until: the latest any worker set
            for key, (first, _) in row.known.items():
                family, labels = self._parse(key)
                if family == "tlsgw_upstream_peer_failed_until":
                    k = (labels["upstream"], labels["peer"])
                    failed_until[k] = max(failed_until.get(k, 0.0), row.values[first])

        def zero(family: str, *lv: str) -> None:
            if tuple(lv) not in seen[family]:
                fams[family].add_metric(list(lv), 0.0)
                seen[family].add(tuple(lv))

        for lst in config.get("listeners", []):
            zero("tlsgw_connections_total", lst["listen"])
            zero("tlsgw_connections_active", lst["listen"])
        steered = {(u, s): st for u, s, st in board.get("steering", [])}
        for u in config.get("upstreams", []):
            for p in u["peers"]:
                zero("tlsgw_upstream_peer_sessions_active", u["name"], p["peer"])
                zero("tlsgw_upstream_peer_sessions_total", u["name"], p["peer"])
                state = self.peer_state(u["name"], p, failed_until.get((u["name"], p["peer"]),
                                                                        0.0), now,
                                        steered.get((u["name"], p["server"]), "enabled"))
                fams["tlsgw_upstream_peer_up"].add_metric([u["name"], p["peer"]],
                                                          1.0 if state == "up" else 0.0)
                for s in PEER_STATES:
                    fams["tlsgw_upstream_peer_state"].add_metric(
                        [u["name"], p["peer"], s], 1.0 if s == state else 0.0)
        for cert in config.get("certificates", []):
            if "expiry_timestamp" in cert:
                fams["tlsgw_certificate_expiry_timestamp_seconds"].add_metric(
                    [cert["file"], cert["subject"]], cert["expiry_timestamp"])
        reloads = board.get("reloads", {})
        fams["tlsgw_reloads_total"].add_metric(["ok"], reloads.get("ok", 0))
        fams["tlsgw_reloads_total"].add_metric(["failed"], reloads.get("failed", 0))
        gen = board.get("generation", {})
        fams["tlsgw_last_reload_success_timestamp_seconds"].add_metric(
            [], reloads.get("last_success") or gen.get("loaded", 0))
        fams["tlsgw_config_generation"].add_metric([], gen.get("number", 0))
        fams["tlsgw_workers"].add_metric([], sum(1 for w in board.get("workers", [])
                                                 if w.get("role") == "worker"))
        yield from fams.values()


def registry(collector: TlsgwCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def live(collector: TlsgwCollector, doc: dict[str, Any]) -> dict[str, Any]:
    """*doc* (the status document) with the live figures of the metrics put in place: per
    listener, per server, per upstream peer; what ``/status.json`` shows."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in collector.collect():
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def pick(name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        return [(lb, v) for lb, v in samples.get(name, [])
                if all(lb.get(k) == want for k, want in match.items())]

    def total(name: str, **match: str) -> float:
        return sum(v for _, v in pick(name, **match))

    for lst in doc.get("listeners", []):
        name = lst["listen"]
        lst["connections_total"] = total("tlsgw_connections_total", listener=name)
        lst["connections_active"] = total("tlsgw_connections_active", listener=name)
        lst["tls_handshakes"] = {f'{lb["result"]}{":" + lb["reason"] if lb["reason"] else ""}': v
                                 for lb, v in pick("tlsgw_tls_handshakes_total", listener=name)}
    for srv in doc.get("servers", []):
        name = srv["name"]
        srv["sessions"] = {lb["status"]: v for lb, v in pick("tlsgw_sessions_total", server=name)}
        srv["bytes_received"] = total("tlsgw_bytes_total", server=name, direction="received")
        srv["bytes_sent"] = total("tlsgw_bytes_total", server=name, direction="sent")
    for u in doc.get("upstreams", []):
        for p in u["peers"]:
            at = {"upstream": u["name"], "peer": p["peer"]}
            p["state"] = next((lb["state"] for lb, v in pick("tlsgw_upstream_peer_state", **at)
                               if v == 1), "up")
            p["sessions_active"] = total("tlsgw_upstream_peer_sessions_active", **at)
            p["sessions_total"] = total("tlsgw_upstream_peer_sessions_total", **at)
            p["connect_failures"] = {lb["reason"]: v for lb, v in
                                     pick("tlsgw_upstream_connect_failures_total", **at)}
            p["bytes_sent"] = total("tlsgw_upstream_bytes_total", **at, direction="sent")
            p["bytes_received"] = total("tlsgw_upstream_bytes_total", **at,
                                        direction="received")
            p["health_checks"] = {lb["result"]: v for lb, v in
                                  pick("tlsgw_health_checks_total", **at)}
    return doc
