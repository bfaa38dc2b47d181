"""Private keys and passphrase files that other users can read are warned about, with the file
and its mode; ``--strict`` makes every warning an error for ``check`` and ``serve``."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from support import free_port, run_cli

from tlsgw.config.load import load_config


def tls_config(tmp_path: Path, pki, key_mode: int, extra: str = "") -> tuple[Path, Path]:
    key = tmp_path / "server.key"
    shutil.copy(pki.server_key, key)
    os.chmod(key, key_mode)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""\
        error_log: stderr info
        servers:
          - listen: 127.0.0.1:{free_port()} ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {key}
            proxy_pass: 127.0.0.1:1
        """) + extra)
    return path, key


@pytest.mark.parametrize("mode, what", [(0o644, "readable"), (0o604, "readable"),
                                        (0o666, "readable and writable"), (0o602, "writable")])
def test_check_warns_about_a_key_others_can_use(tmp_path, pki, mode, what):
    path, key = tls_config(tmp_path, pki, mode)
    r = run_cli("check", "-c", str(path))
    assert r.returncode == 0, r.stderr
    assert (f'tlsgw: [warn] {path}:5: ssl_certificate_key "{key}" is {what} by other users '
            f"(mode {mode:04o}); chmod 600 it") in r.stderr, r.stderr


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_private_or_group_readable_keys_are_not_warned_about(tmp_path, pki, mode):
    path, _ = tls_config(tmp_path, pki, mode)
    assert load_config(str(path)).warnings == []


def test_strict_check_fails_on_the_warning(tmp_path, pki):
    path, key = tls_config(tmp_path, pki, 0o644)
    r = run_cli("check", "--strict", "-c", str(path))
    assert r.returncode == 1, r.stderr
    assert (f'tlsgw: [emerg] {path}:5: ssl_certificate_key "{key}" is readable by other users '
            "(mode 0644); chmod 600 it (an error with --strict)") in r.stderr, r.stderr
    assert "test failed" in r.stderr and "Traceback" not in r.stderr
    os.chmod(key, 0o600)
    assert run_cli("check", "--strict", "-c", str(path)).returncode == 0


def test_strict_fails_on_any_warning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        upstreams:
          spare:
            servers: [127.0.0.1:2]
        servers:
          - listen: 127.0.0.1:9000
            proxy_pass: 127.0.0.1:1
        """))
    assert run_cli("check", "-c", str(path)).returncode == 0
    r = run_cli("check", "--strict", "-c", str(path))
    assert r.returncode == 1 and 'upstream "spare" is not used by any server' in r.stderr


def test_serve_warns_and_strict_serve_refuses(tmp_path, pki, gateway):
    path, key = tls_config(tmp_path, pki, 0o644)
    r = run_cli("serve", "--strict", "-c", str(path), timeout=20)
    assert r.returncode == 1, r.stderr
    assert f'ssl_certificate_key "{key}" is readable by other users (mode 0644)' in r.stderr
    g = gateway(path.read_text())  # without --strict it serves, having said so
    assert f'ssl_certificate_key "{key}" is readable by other users (mode 0644)' in g.stderr()


def test_every_secret_file_is_examined(tmp_path, pki):
    files = {}
    for name, src in (("gw.key", pki.gw_client_key), ("pass", pki.password_file),
                      ("ticket.key", pki.ticket_key)):
        files[name] = tmp_path / name
        shutil.copy(src, files[name])
        os.chmod(files[name], 0o644)
    path, key = tls_config(tmp_path, pki, 0o600, extra=textwrap.indent(textwrap.dedent(f"""\
        ssl_password_file: {files["pass"]}
        ssl_session_ticket_key: [{files["ticket.key"]}]
        proxy_ssl: on
        proxy_ssl_certificate: {pki.gw_client}
        proxy_ssl_certificate_key: {files["gw.key"]}
        proxy_ssl_password_file: {files["pass"]}
        """), "    "))
    warnings = load_config(str(path)).warnings
    for line, directive, file in ((7, "ssl_password_file", "pass"),
                                  (8, "ssl_session_ticket_key", "ticket.key"),
                                  (11, "proxy_ssl_certificate_key", "gw.key"),
                                  (12, "proxy_ssl_password_file", "pass")):
        assert (f'{path}:{line}: {directive} "{files[file]}" is readable by other users '
                "(mode 0644); chmod 600 it") in warnings, warnings
    assert len(warnings) == 4, warnings


def test_a_key_set_at_the_top_level_is_warned_about_once(tmp_path, pki):
    key = tmp_path / "k.key"
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o644)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""\
        ssl_certificate: {pki.server}
        ssl_certificate_key: {key}
        servers:
          - listen: 127.0.0.1:{free_port()} ssl
            proxy_pass: 127.0.0.1:1
          - listen: 127.0.0.1:{free_port()} ssl
            proxy_pass: 127.0.0.1:1
        """))
    assert load_config(str(path)).warnings == [
        f'{path}:2: ssl_certificate_key "{key}" is readable by other users (mode 0644); chmod 600 it']
