"""Runtime server states (drain / disable / enable): how the balancer treats them for every
method, the record the master keeps (errors, prune on reload, apply only where steered) and the
control-channel message that carries a change to the workers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tlsgw.balancer import DISABLED, DRAINING, ENABLED, Method, PeerConfig, Upstream
from tlsgw.config.load import load_config
from tlsgw.process import control
from tlsgw.runtime.steer import SteerError, Steering, log_line


def peers(*names: str) -> list[PeerConfig]:
    return [PeerConfig(server=n, name=n) for n in names]


def picks(up: Upstream, n: int, key: bytes | None = None) -> list[str]:
    out = []
    for _ in range(n):
        picker = up.picker(key=key)
        peer = picker.get()
        out.append(peer.name if peer else "-")
        if peer is not None:
            picker.free(peer, failed=False)
    return out


@pytest.mark.parametrize("kind", ["round_robin", "least_conn", "random", "random_two"])
@pytest.mark.parametrize("state", [DRAINING, DISABLED])
def test_a_steered_peer_gets_no_new_session_and_comes_back_when_enabled(kind, state):
    up = Upstream("u", peers("a:1", "b:1", "c:1"), Method(kind))
    up.peers[1].set_admin(state)
    assert "b:1" not in picks(up, 60)
    up.peers[1].set_admin(ENABLED)
    assert "b:1" in picks(up, 60)


def test_an_open_session_on_a_drained_peer_goes_on_and_ends_normally():
    up = Upstream("u", peers("a:1", "b:1"), Method("round_robin"))
    picker = up.picker()
    peer = picker.get()
    assert peer is not None
    peer.set_admin(DRAINING)
    picker.connected(peer)
    assert peer.conns == 1
    assert not picker.free(peer, failed=False)
    assert peer.conns == 0 and peer.fails == 0


def test_a_drained_single_server_means_no_live_upstreams():
    up = Upstream("u", peers("a:1"), Method("round_robin"))
    up.peers[0].set_admin(DRAINING)
    assert up.picker().get() is None
    up.peers[0].set_admin(ENABLED)
    assert up.picker().get() is up.peers[0]


def test_a_configured_down_server_stays_down_when_enabled():
    cfgs = peers("a:1", "b:1")
    cfgs[1].down = True
    up = Upstream("u", cfgs, Method("round_robin"))
    up.peers[1].set_admin(DRAINING)
    up.peers[1].set_admin(ENABLED)
    assert up.peers[1].down
    assert set(picks(up, 10)) == {"a:1"}


@pytest.mark.parametrize("kind", ["hash", "hash_consistent"])
def test_hash_placement_moves_only_the_drained_servers_keys_and_gives_them_back(kind):
    up = Upstream("u", peers("a:1", "b:1", "c:1", "d:1"), Method(kind))
    keys = [f"10.0.{i // 250}.{i % 250}".encode() for i in range(400)]

    def place() -> dict[bytes, str]:
        return {k: picks(up, 1, key=k)[0] for k in keys}

    before = place()
    up.peers[2].set_admin(DRAINING)
    during = place()
    assert "c:1" not in during.values()
    for k in keys:  # every key not on the drained server stays where it was
        if before[k] != "c:1":
            assert during[k] == before[k]
    assert Counter(before.values())["c:1"] > 0
    up.peers[2].set_admin(ENABLED)
    assert place() == before


def test_set_admin_refuses_an_unknown_state():
    up = Upstream("u", peers("a:1", "b:1"), Method("round_robin"))
    with pytest.raises(ValueError, match="unknown runtime state"):
        up.peers[0].set_admin("maint")


CONFIG = """
upstreams:
  u:
    servers:
      - 127.0.0.1:7001
      - 127.0.0.1:7002 weight=2
  v:
    servers: [127.0.0.1:7003]
servers:
  - listen: 127.0.0.1:18001
    proxy_pass: u
  - listen: 127.0.0.1:18002
    proxy_pass: v
"""


def load(tmp_path: Path, text: str = CONFIG):
    path = tmp_path / "tlsgw.yaml"
    path.write_text(text)
    return load_config(str(path))


def test_the_record_changes_states_and_says_whether_it_changed(tmp_path):
    cfg = load(tmp_path)
    st = Steering()
    assert st.change(cfg, "u", "127.0.0.1:7002", "drain") == (DRAINING, True)
    assert st.change(cfg, "u", "127.0.0.1:7002", "drain") == (DRAINING, False)
    assert st.change(cfg, "u", "127.0.0.1:7002", "disable") == (DISABLED, True)
    assert st.state("u", "127.0.0.1:7002") == DISABLED
    assert st.change(cfg, "u", "127.0.0.1:7002", "enable") == (ENABLED, True)
    assert st.states == {}  # enabled servers are not recorded


def test_unknown_upstream_server_or_action_is_a_clear_error(tmp_path):
    cfg = load(tmp_path)
    st = Steering()
    with pytest.raises(SteerError, match=r'no upstream "w" \(upstreams: "u", "v"\)') as e:
        st.change(cfg, "w", "127.0.0.1:7001", "drain")
    assert e.value.status == 404
    with pytest.raises(SteerError, match=r'no server "127.0.0.1:7009" in upstream "u" '
                       r"\(servers, as written in the configuration: 127.0.0.1:7001, "
                       r"127.0.0.1:7002\)") as e:
        st.change(cfg, "u", "127.0.0.1:7009", "drain")
    assert e.value.status == 404
    with pytest.raises(SteerError, match='unknown action "pause"') as e:
        st.change(cfg, "u", "127.0.0.1:7001", "pause")
    assert e.value.status == 400
    assert st.states == {}


def test_prune_forgets_servers_a_reload_removed_and_keeps_the_others(tmp_path):
    st = Steering()
    cfg = load(tmp_path)
    st.change(cfg, "u", "127.0.0.1:7001", "drain")
    st.change(cfg, "u", "127.0.0.1:7002", "disable")
    st.change(cfg, "v", "127.0.0.1:7003", "drain")
    smaller = load(tmp_path, CONFIG.replace("      - 127.0.0.1:7001\n", "")
                   .replace("  v:\n    servers: [127.0.0.1:7003]\n", "")
                   .replace("  - listen: 127.0.0.1:18002\n    proxy_pass: v\n", ""))
    assert sorted(st.prune(smaller)) == [("u", "127.0.0.1:7001"), ("v", "127.0.0.1:7003")]
    assert st.states == {("u", "127.0.0.1:7002"): DISABLED}


def test_apply_sets_peers_of_steered_upstreams_and_leaves_the_others_alone(tmp_path):
    cfg = load(tmp_path)
    ups = {name: Upstream(name, u.peer_configs(), u.method) for name, u in cfg.upstreams.items()}
    st = Steering()
    st.change(cfg, "u", "127.0.0.1:7002", "drain")
    st.apply(ups)
    assert [p.admin for p in ups["u"].peers] == [ENABLED, DRAINING]
    assert ups["u"].steered and not ups["v"].steered
    assert set(picks(ups["u"], 10)) == {"127.0.0.1:7001"}
    st.change(cfg, "u", "127.0.0.1:7002", "enable")
    st.apply(ups, ("u",))
    assert [p.admin for p in ups["u"].peers] == [ENABLED, ENABLED]
    assert not ups["u"].steered
    assert "127.0.0.1:7002" in picks(ups["u"], 10)


def test_the_steer_message_travels_framed_with_other_commands():
    msg = control.steer_message("u", "unix:/run/b.sock", DRAINING)
    commands, rest = control.split(control.REOPEN + msg + msg[:3])
    assert commands == [control.REOPEN, {"steer": ["u", "unix:/run/b.sock", DRAINING]}]
    assert rest == msg[:3]


def test_the_log_line_is_haproxy_like():
    assert log_line("u", "127.0.0.1:7001", DRAINING) == \
        'upstream server 127.0.0.1:7001 of "u" is draining (admin)'
    assert log_line("u", "127.0.0.1:7001", DISABLED).endswith("is disabled (admin)")
    assert log_line("u", "127.0.0.1:7001", ENABLED).endswith("is enabled (admin)")


# -- the master: a request from the admin process, passed on to the workers --------------------


@pytest.fixture
def master(tmp_path):
    """A master (not serving) with a fake admin process and a fake worker on socket pairs."""
    from tlsgw import logs
    from tlsgw.process.master import Master
    from tlsgw.runtime.generation import build
    from tlsgw.runtime.steer import STEERING

    path = tmp_path / "tlsgw.yaml"
    path.write_text(f"error_log: {tmp_path / 'error.log'} info\n" + CONFIG)
    before = logs.current()
    m = Master(build(load_config(str(path)), allocate=False))
    chans = {}
    for pid, slot in ((999_001, -2), (999_002, 0)):
        mine, theirs = control.pair()
        m.controls[pid], m.pids[pid] = mine, slot
        chans[slot] = theirs
    saved = dict(STEERING.states)
    yield m, chans[-2], chans[0], tmp_path / "error.log"
    STEERING.states.clear()
    STEERING.states.update(saved)
    for ch in (*m.controls.values(), *chans.values()):
        ch.close()
    m.generation.release()
    logs.install(before)


def ask(m, admin, *request: str, number: int = 1) -> dict:
    import signal

    admin.send(control.steer_request(*request, number))
    m.child_request(signal.SIGUSR2, 999_001)
    commands, rest = control.split(admin.recv(65536))
    assert rest == b"" and len(commands) == 1
    return commands[0]


def test_the_master_answers_the_admin_process_and_tells_the_workers(master):
    from tlsgw import logs

    m, admin, worker, log = master
    assert ask(m, admin, "u", "127.0.0.1:7002", "drain", number=7) == {
        "reply": 7, "status": 200, "state": DRAINING, "changed": True}
    commands, _ = control.split(worker.recv(65536))
    assert commands == [{"steer": ["u", "127.0.0.1:7002", DRAINING]}]
    assert ask(m, admin, "u", "127.0.0.1:7002", "drain")["changed"] is False
    with pytest.raises(BlockingIOError):  # no change, nothing sent
        worker.recv(65536)
    answer = ask(m, admin, "u", "10.9.9.9:1", "disable")
    assert answer["status"] == 404 and 'no server "10.9.9.9:1" in upstream "u"' in answer["error"]
    assert ask(m, admin, "nope", "x", "enable")["status"] == 404
    assert ask(m, admin, "u", "127.0.0.1:7002", "halt")["status"] == 400
    logs.flush_all()
    text = log.read_text()
    assert 'upstream server 127.0.0.1:7002 of "u" is draining (admin)' in text
    assert text.count("is draining (admin)") == 1


def test_sigusr2_from_anyone_but_the_admin_process_is_ignored(master):
    import signal

    from tlsgw import logs

    m, admin, worker, log = master
    admin.send(control.steer_request("u", "127.0.0.1:7002", "drain", 1))
    m.child_request(signal.SIGUSR2, 12345)  # not a child
    m.child_request(signal.SIGUSR2, 999_002)  # a worker asks nothing
    logs.flush_all()
    assert log.read_text().count("ignored") == 2
    with pytest.raises(BlockingIOError):
        worker.recv(65536)


def test_the_implicit_upstream_of_proxy_pass_address_can_be_steered_and_is_listed(tmp_path):
    """``proxy_pass 127.0.0.1:7009`` makes an upstream named by its address: status.json lists
    it (so the page shows its server with buttons), and its server can be drained."""
    from tlsgw.admin.state import describe
    cfg = load(tmp_path, CONFIG + "  - listen: 127.0.0.1:18003\n    proxy_pass: 127.0.0.1:7009\n")
    st = Steering()
    assert st.change(cfg, "127.0.0.1:7009", "127.0.0.1:7009", "drain") == (DRAINING, True)
    assert st.prune(cfg) == []  # it exists: kept across a reload
    names = [u["name"] for u in describe(cfg, {})["upstreams"]]
    assert names == ["u", "v", "127.0.0.1:7009"]
    with pytest.raises(SteerError, match=r'upstreams: "127.0.0.1:7009", "u", "v"'):
        st.change(cfg, "w", "127.0.0.1:7001", "drain")


def test_a_child_reads_its_channel_as_nothing_yet_data_or_the_master_gone():
    master_end, child_end = control.pair()
    try:
        assert control.receive(child_end, 16) is None  # nothing sent yet
        master_end.sendall(control.REOPEN)
        assert control.receive(child_end, 16) == control.REOPEN
        master_end.close()
        assert control.receive(child_end, 16) == b""  # EOF: the master is gone
    finally:
        child_end.close()
