"""``tlsgw probe --remap``: which clients an upstream change would send to another server.

Two configurations are loaded as ``tlsgw check`` loads them, one upstream is picked from each
and N synthetic client addresses (``10.0.0.1``, ``10.0.0.2``, ...; they are only hashed) are
placed on both with :class:`tlsgw.balancer.Upstream`, the very selection a worker makes for a
new session: the same hash key (rendered from the configured ``hash`` template), the same
CRC-32 sums or ketama ring, with every server up. A client *moves* when its server differs.

Only the hash methods place a client address on the same server every time. Round robin,
``least_conn`` and ``random`` send each connection wherever the method's state says, so for
them there is no placement to compare and the report gives the weight shares only.
Servers are named by their ``server`` text, which is what ketama hashes, so a server keeps
its name when only its parameters (``weight=``, ``down``) change.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass

from tlsgw.balancer import Upstream
from tlsgw.config.addresses import Address
from tlsgw.config.model import Config, UpstreamConfig
from tlsgw.errors import ConfigErrors, TlsgwError

__all__ = ["Placement", "RemapError", "client_addresses", "compare", "place", "report"]

ADDRESS_STABLE = frozenset({"hash", "hash_consistent"})
NONE = "(no live server)"


class RemapError(TlsgwError):
    """A configuration cannot be compared (invalid, no such upstream, unusable hash key)."""


def client_addresses(n: int) -> list[str]:
    """``n`` distinct IPv4 client addresses 10.0.0.1, 10.0.0.2, ... (at most 2**24 - 1)."""
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, n + 1)]


class _Client:
    """What a hash key template reads of a session: only the client address varies."""

    __slots__ = ("remote_addr",)

    def __init__(self, remote_addr: str):
        self.remote_addr = remote_addr


def _method_text(up: UpstreamConfig) -> str:
    kind = up.method.kind
    key = up.key.text if up.key is not None else ""
    return {"hash": f"hash {key}", "hash_consistent": f"hash {key} consistent",
            "random_two": "random two least_conn", "round_robin": "round robin"}.get(kind, kind)


def place(up: UpstreamConfig, addresses: list[str]) -> list[str]:
    """The ``server`` text each client address is sent to, as a worker would choose it."""
    if up.key is not None and set(up.key.variables) - {"remote_addr"}:
        others = ", ".join(f"${v}" for v in up.key.variables if v != "remote_addr")
        raise RemapError(f'the hash key "{up.key.text}" of upstream "{up.name}" uses {others}; '
                         "--remap can only vary $remote_addr")
    # a ``resolve`` server counts as one address: under ``hash ... consistent`` its place on
    # the ring is its text's whatever its addresses are
    placeholder = (Address(socket.AF_INET, "0.0.0.0", 0),)
    upstream = Upstream(up.name, up.peer_configs({s.text: placeholder for s in up.servers
                                                  if s.resolve}), up.method)
    key = up.key
    out = []
    for addr in addresses:
        picker = upstream.picker(key.render(_Client(addr)).encode() if key else None)
        peer = picker.get()
        if peer is None:
            out.append(NONE)
            continue
        picker.free(peer, failed=False)  # back to zero connections: every client alike
        out.append(peer.server)
    return out


def weight_shares(up: UpstreamConfig) -> dict[str, float]:
    """Each ``server`` text's share of the weight of the live primary servers."""
    weights: Counter[str] = Counter()
    for peer in up.peer_configs():
        if not peer.backup and not peer.down:
            weights[peer.server] += peer.weight
    total = sum(weights.values())
    return {s: w / total for s, w in weights.items()} if total else {}


@dataclass
class Placement:
    """Per server: client counts before and after, and the counts moving out of and into it."""

    servers: list[str]
    before: Counter[str]
    after: Counter[str]
    moved_out: Counter[str]
    moved_in: Counter[str]
    clients: int

    @property
    def moved(self) -> int:
        return sum(self.moved_in.values())


def compare(old: UpstreamConfig, new: UpstreamConfig, clients: int) -> Placement:
    addresses = client_addresses(clients)
    before, after = place(old, addresses), place(new, addresses)
    moved_out: Counter[str] = Counter()
    moved_in: Counter[str] = Counter()
    for b, a in zip(before, after, strict=True):
        if a != b:
            moved_out[b] += 1
            moved_in[a] += 1
    servers = list(dict.fromkeys([s.text for s in old.servers] + [s.text for s in new.servers]
                                 + before + after))
    return Placement(servers, Counter(before), Counter(after), moved_out, moved_in, clients)


def _load(path: str) -> Config:
    from tlsgw.config.load import load_config

    try:
        return load_config(path, check_files=False)
    except ConfigErrors as exc:
        problems = "\n  ".join(str(e) for e in exc.errors)
        raise RemapError(f"{path} is not a valid configuration (see tlsgw check -c {path}):"
                         f"\n  {problems}") from None


def _pick(old: Config, new: Config, name: str | None) -> tuple[UpstreamConfig, UpstreamConfig]:
    def named(cfg: Config) -> dict[str, UpstreamConfig]:
        return {n: u for n, u in cfg.upstreams.items() if not u.implicit}

    a, b = named(old), named(new)
    if name is not None:
        for cfg, ups in ((old, a), (new, b)):
            if name not in ups:
                known = ", ".join(f'"{n}"' for n in ups) or "none"
                raise RemapError(f'{cfg.file} has no upstream "{name}" (it has: {known})')
        return a[name], b[name]
    common = [n for n in a if n in b]
    if len(common) == 1:
        return a[common[0]], b[common[0]]
    if not common and len(a) == 1 and len(b) == 1:  # one upstream each, renamed
        return next(iter(a.values())), next(iter(b.values()))
    choices = ", ".join(f'"{n}"' for n in common) or "none in common"
    raise RemapError(f"choose the upstream to compare with --upstream NAME ({choices})")


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%"


def report(old_path: str, new_path: str, clients: int, name: str | None) -> list[str]:
    """The text ``tlsgw probe --remap`` prints."""
    old_cfg, new_cfg = _load(old_path), _load(new_path)
    old, new = _pick(old_cfg, new_cfg, name)
    title = f'upstream "{old.name}"' if old.name == new.name else f'upstreams "{old.name}" -> "{new.name}"'
    methods = (_method_text(old) if _method_text(old) == _method_text(new)
               else f"{_method_text(old)} -> {_method_text(new)}")
    stable = old.method.kind in ADDRESS_STABLE and new.method.kind in ADDRESS_STABLE
    if not stable:
        shares_old, shares_new = weight_shares(old), weight_shares(new)
        servers = list(dict.fromkeys([*shares_old, *shares_new]))
        width = max(len(s) for s in [*servers, "server"])
        lines = [f"tlsgw probe --remap: {title}, {methods}",
                 "  placement is not address-stable with this method: each connection goes where",
                 "  the method's state sends it, so no client has a server to move from.",
                 "  weight shares of the live servers:",
                 f"  {'server':<{width}}  {'before':>7}  {'after':>7}"]
        for s in servers:
            b = f"{100 * shares_old[s]:.1f}%" if s in shares_old else "-"
            a = f"{100 * shares_new[s]:.1f}%" if s in shares_new else "-"
            lines.append(f"  {s:<{width}}  {b:>7}  {a:>7}")
        return lines

    p = compare(old, new, clients)
    addresses = client_addresses(clients)
    width = max(len(s) for s in [*p.servers, "server"])
    lines = [f"tlsgw probe --remap: {title}, {methods}; {clients} client addresses "
             f"{addresses[0]} .. {addresses[-1]}, every server up",
             f"  {'server':<{width}}  {'before':>7}  {'after':>7}  {'moved out':>9}  "
             f"{'moved in':>8}"]
    for s in p.servers:
        b = _pct(p.before[s], clients) if p.before[s] else "-"
        a = _pct(p.after[s], clients) if p.after[s] else "-"
        lines.append(f"  {s:<{width}}  {b:>7}  {a:>7}  {_pct(p.moved_out[s], clients):>9}  "
                     f"{_pct(p.moved_in[s], clients):>8}")
    lines.append(f"  moved to another server: {_pct(p.moved, clients)} of the clients "
                 f"({p.moved} of {clients})")
    return lines
