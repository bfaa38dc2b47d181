"""The units in configs/systemd/: what README "Operations" says of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "configs" / "systemd"


def service(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("name,kind", [("tlsgw.service", "notify-reload"),
                                       ("tlsgw-notify.service", "notify")])
def test_units_stop_gracefully_with_the_master_alone_signalled(name, kind):
    s = service(name)
    assert s["Type"] == [kind]
    assert s["NotifyAccess"] == ["main"]
    assert s["KillSignal"] == ["SIGTERM"] and s["KillMode"] == ["mixed"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    assert s["ExecStart"][0].endswith(" serve -c /etc/tlsgw/tlsgw.yaml")
    assert s["ExecStartPre"][0].endswith(" check -c /etc/tlsgw/tlsgw.yaml")
    assert int(s["TimeoutStopSec"][0].rstrip("s")) > 30  # worker_shutdown_timeout's default
    if kind == "notify-reload":
        assert s["ReloadSignal"] == ["SIGHUP"] and "ExecReload" not in s
    else:
        assert s["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
        assert " check -c " in s["ExecReload"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_notify_unit_verifies(tmp_path):
    unit = tmp_path / "tlsgw.service"
    unit.write_text((UNITS / "tlsgw-notify.service").read_text()
                    .replace("/usr/local/bin/tlsgw", "/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    problems = [line for line in r.stderr.splitlines() if str(unit) in line or "tlsgw" in line]
    assert not problems, r.stderr
