"""``tlsgw lab backends``: names that tell separate processes apart, socket files cleaned up.

Each backend runs as a real ``python -m tlsgw lab backends`` subprocess on loopback and is
stopped by a signal; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT, free_port, wait_until


class LabBackends:
    """``tlsgw lab backends ARGS`` as a subprocess, its output in files under ``directory``."""

    def __init__(self, directory: Path, *args: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.out, self.err = directory / "lab.out", directory / "lab.err"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tlsgw", "lab", "backends", *args],
                stdout=out, stderr=err, env=env, start_new_session=True)

    def listening(self, n: int) -> None:
        wait_until(lambda: self.out.read_text().count(" listening on ") >= n
                   or self.proc.poll() is not None, what=f"{n} backends listening")
        assert self.proc.poll() is None, self.err.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"lab backends did not stop on signal {sig}") from None


@pytest.fixture
def lab_backends(tmp_path: Path) -> Iterator[callable]:
    made: list[LabBackends] = []

    def make(*args: str, listening: int = 0) -> LabBackends:
        lab = LabBackends(tmp_path / f"lab{len(made)}", *args)
        made.append(lab)
        if listening:
            lab.listening(listening)
        return lab

    yield make
    for lab in made:
        lab.stop(signal.SIGKILL)


def greeting(address: str) -> str:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=5)
    with sock, sock.makefile("rb") as f:
        return f.readline().decode()


def test_separate_processes_greet_with_different_names(lab_backends: callable) -> None:
    ports = [free_port(), free_port()]
    for port in ports:
        lab_backends(f"127.0.0.1:{port}", listening=1)
    names = [greeting(f"127.0.0.1:{port}").split(":")[0] for port in ports]
    assert names == [f"backend {ports[0]}", f"backend {ports[1]}"]


def test_backends_of_one_process_differ(lab_backends: callable, tmp_path: Path) -> None:
    port = free_port()
    sock = tmp_path / "b.sock"
    addresses = [f"127.0.0.1:{port}", f"unix:{sock}"]
    lab = lab_backends(*addresses, listening=2)
    assert greeting(addresses[0]).startswith(f"backend {port}: hello 127.0.0.1:")
    assert greeting(addresses[1]) == f"backend {sock}: hello unix client\n"
    out = lab.out.read_text()
    assert f"backend {port} listening on 127.0.0.1:{port}" in out
    assert f"backend {sock} listening on unix:{sock}" in out


def test_names_option(lab_backends: callable, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    lab_backends(*(f"127.0.0.1:{p}" for p in ports), "--names", "red,blue", listening=2)
    assert greeting(f"127.0.0.1:{ports[0]}").startswith("backend red: hello ")
    assert greeting(f"127.0.0.1:{ports[1]}").startswith("backend blue: hello ")

    bad = lab_backends(f"127.0.0.1:{free_port()}", "--names", "a,b")
    assert bad.proc.wait(10) == 2
    assert "--names gives 2 name(s) for 1 address(es)" in bad.err.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_unix_socket_files_removed_on_exit(lab_backends: callable, tmp_path: Path,
                                           sig: int) -> None:
    socks = [tmp_path / "one.sock", tmp_path / "two.sock"]
    lab = lab_backends(*(f"unix:{s}" for s in socks), listening=2)
    assert all(s.is_socket() for s in socks)
    assert greeting(f"unix:{socks[0]}").startswith(f"backend {socks[0]}: ")
    assert lab.stop(sig) == 0, lab.err.read_text()
    assert not [s for s in socks if os.path.lexists(s)]


def test_unix_socket_file_removed_when_a_later_address_fails(lab_backends: callable,
                                                             tmp_path: Path) -> None:
    sock = tmp_path / "first.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        lab = lab_backends(f"unix:{sock}", f"127.0.0.1:{taken}")
        assert lab.proc.wait(10) == 3
    assert "cannot listen" in lab.err.read_text()
    assert not os.path.lexists(sock)


def test_readme_demo_output_matches_the_demo_placement(tmp_path: Path) -> None:
    """README's ``lab probe`` sample is what configs/demo.yaml does (its ketama placement,
    computed with tlsgw's balancer), reaches every backend, and uses the Makefile's command."""
    import re
    import shutil

    from tlsgw.balancer import Upstream
    from tlsgw.certs import CA
    from tlsgw.config.load import load_config

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    ca = CA.create()
    ca.issue_server().write(tmp_path / "certs", "server")
    cfg = load_config(str(tmp_path / "configs" / "demo.yaml"))
    up = cfg.upstreams["backend"]
    assert up.key is not None and up.key.text == "$remote_addr"
    upstream = Upstream(up.name, up.peer_configs(), up.method)

    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^\.venv/bin/(tlsgw lab probe 127\.0\.0\.1:9000 .*)$", readme, re.M)
    assert command, "README shows no lab probe command"
    assert command.group(1) in (ROOT / "Makefile").read_text()
    clients = int(re.search(r"--clients (\d+)", command.group(1)).group(1))
    repeat = int(re.search(r"--repeat (\d+)", command.group(1)).group(1))
    sample = re.findall(r"^# client (127\.0\.0\.\d+) +-> backend (\d+): hello ", readme, re.M)
    assert len(sample) == clients * repeat
    assert [c for c, _ in sample] == [f"127.0.0.{i}" for i in range(1, clients + 1)
                                      for _ in range(repeat)]
    for client, port in sample:
        picker = upstream.picker(client.encode())
        peer = picker.get()
        picker.free(peer, failed=False)
        assert peer.name == f"127.0.0.1:{port}", client
    assert {port for _, port in sample} == {p.name.rpartition(":")[2] for p in upstream.peers}
