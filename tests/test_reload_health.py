"""Reload with ``health_check``: the helper is replaced with the new generation, the health zone
(one fixed-size mapping the workers inherited) keeps the state of the servers that still exist,
a new server starts up and is probed at once, a removed one gets nothing.

Short intervals (200 ms); every wait is for an event (a log line, a count, an accept)."""

from __future__ import annotations

import json
import re

import pytest
from adminhelp import admin_address, request
from support import connect, run_cli, wait_until

PONG = 'match:\n  pong: {send: "PING\\r\\n", expect: "~ ^PONG"}\n'
HC = "interval=200ms fails=1 passes=2 match=pong"


def _config(servers: list[str], hc: str | None = HC) -> str:
    lines = "\n".join(f"      - {a}" for a in servers)
    # fails=1: a probe timeout short enough for a loaded machine to hit would take a healthy
    # server down; 1s is still quick for the server that never answers
    check = f"    health_check: {hc}\n    health_check_timeout: 1s\n" if hc else ""
    return (f"worker_processes: 2\nerror_log: stderr info\npid: tlsgw.pid\n{PONG}"
            f"upstreams:\n  chat:\n    servers:\n{lines}\n"
            f"servers:\n  - listen: 127.0.0.1:0\n    proxy_pass: chat\n{check}")


def _who(port: int) -> str:
    with connect(port, timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(100).decode().splitlines()[0]


def _reload(gw, text: str) -> str:
    gw.config.write_text(text)
    r = run_cli("reload", "-c", str(gw.config), cwd=gw.dir)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _helper(gw) -> int:
    return int(re.findall(r"start health check helper process (\d+)", gw.stderr())[-1])


def test_reload_keeps_health_state_probes_new_servers_and_replaces_the_helper(backends, gateway):
    a = backends("identify", name="PONG a")
    b = backends("stall", name="PONG b")  # accepts, never answers: down
    c = backends("identify", name="PONG c")
    gw = gateway(_config([a.address, b.address]), workers=2)
    port = gw.port()
    down = f'upstream server {b.address} of "chat" is down'
    gw.wait_log(f"{down} (timed out reading the response; 1 up, 1 down)")
    wait_until(lambda: len(gw.pids()) == 4, what="master, 2 workers, helper")
    first = _helper(gw)

    # add c: b stays down across the reload (its byte in the zone is kept, so no session and no
    # second "is down" line), c starts up and the new helper probes it at once
    out = _reload(gw, _config([a.address, b.address, c.address]))
    assert "upstream servers added: chat/" + c.address in out, out
    wait_until(lambda: c.accepted >= 1, what="the new helper's first probe of c")
    assert {_who(port) for _ in range(12)} == {"PONG a", "PONG c"}  # b skipped, none hangs
    gw.wait_log(f"health check helper process {first} of the generation before exited")
    second = _helper(gw)
    assert second != first
    wait_until(lambda: len(gw.pids()) == 4, what="one helper, not two")
    # b answers again: the new helper started it down, so it logs b coming up after 2 passes,
    # counting the three servers of the new generation
    b.mode = "identify"
    gw.wait_log(f'upstream server {b.address} of "chat" is up (the response matched; '
                "3 up, 0 down)")
    assert gw.stderr().count(down) == 1
    wait_until(lambda: "PONG b" in {_who(port) for _ in range(6)}, what="b to get sessions")

    # remove b: it gets nothing, the helper is replaced again, the count stays the same
    out = _reload(gw, _config([a.address, c.address]))
    assert "upstream servers removed: chat/" + b.address in out, out
    gw.wait_log(f"health check helper process {second} of the generation before exited")
    wait_until(lambda: len(gw.pids()) == 4, what="one helper")
    accepted, probes = b.accepted, c.accepted
    who = [_who(port) for _ in range(8)]
    assert set(who) == {"PONG a", "PONG c"}
    sessions = who.count("PONG c")
    wait_until(lambda: c.accepted >= probes + sessions + 2, what="the new helper's probes of c")
    assert b.accepted == accepted  # neither a session nor a probe of the removed server

    # without health_check no helper is left; with it again, one starts
    _reload(gw, _config([a.address, c.address], hc=None))
    wait_until(lambda: len(gw.pids()) == 3, what="the helper to exit")
    assert {_who(port) for _ in range(4)} == {"PONG a", "PONG c"}
    _reload(gw, _config([a.address, c.address]))
    wait_until(lambda: len(gw.pids()) == 4, what="a helper again")
    assert gw.stop() == 0
    assert "alert" not in gw.stderr()


def test_health_zone_slots_are_kept_by_name_freed_on_commit_and_reclaimed_when_full():
    from tlsgw.runtime.zones import HealthZone

    zone = HealthZone(size=3)
    try:
        first = zone.assign([("u", "a"), ("u", "b")])
        zone.commit(list(first))
        zone.buf[first[("u", "b")]] = 0  # b is down
        again = zone.assign([("u", "b"), ("u", "c")])  # a removed, c added
        assert again[("u", "b")] == first[("u", "b")] and zone.buf[again[("u", "b")]] == 0
        assert zone.buf[again[("u", "c")]] == 1  # a new server starts up
        assert again[("u", "c")] not in first.values()  # a never used slot first
        zone.commit(list(again))  # a's slot is free now
        assert ("u", "a") not in zone.slots
        zone.assign([("v", "x")])  # a rejected reload's key: kept until slots run short
        third = zone.assign([("u", "b"), ("u", "c"), ("w", "y")])  # reclaims v/x
        assert len(set(third.values())) == 3
        with pytest.raises(ValueError, match="more than 3 servers under health_check"):
            zone.assign([("u", "b"), ("u", "c"), ("w", "y"), ("w", "z")])
    finally:
        zone.close()


def test_check_rejects_more_checked_servers_than_the_zone_holds(tmp_path, monkeypatch):
    from tlsgw.errors import ConfigErrors
    from tlsgw.runtime import zones
    from tlsgw.runtime.generation import build_file

    monkeypatch.setattr(zones, "HEALTH_SLOTS", 2)
    path = tmp_path / "tlsgw.yaml"
    text = _config(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    path.write_text(text)
    line = text.splitlines().index(f"    health_check: {HC}") + 1
    with pytest.raises(ConfigErrors) as exc:
        build_file(str(path), allocate=False)
    assert [str(e) for e in exc.value.errors] == [
        f"{path}:{line}: 3 upstream servers under health_check, at most 2"]


def test_status_json_sees_the_health_of_servers_a_reload_added(backends, gateway):
    """The admin process was forked with the first generation: the slots of servers a reload
    added reach it through the master's board, so their health shows (here: a server added
    that never answers turns down; one removed is gone)."""
    a = backends("identify", name="PONG a")
    b = backends("stall", name="PONG b")
    admin = "admin: {listen: 127.0.0.1:0}\n"
    gw = gateway(admin + _config([a.address]), workers=1)
    address = admin_address(gw)

    def peers() -> dict[str, tuple[str | None, str]]:
        status, _, body = request(address)
        assert status == 200, body
        doc = json.loads(body)
        (chat,) = [u for u in doc["upstreams"] if u["name"] == "chat"]
        return {p["peer"]: (p.get("health"), p["state"]) for p in chat["peers"]}

    wait_until(lambda: peers() == {a.address: ("up", "up")}, what="a up")
    _reload(gw, admin + _config([a.address, b.address]))
    gw.wait_log(f'upstream server {b.address} of "chat" is down')
    wait_until(lambda: peers() == {a.address: ("up", "up"), b.address: ("down", "down")},
               what="b down in status.json")
