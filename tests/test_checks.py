"""Cross-directive rules (tlsgw/config/checks.py): each reported at the line of the directive
it concerns, not at the line of the server or upstream around it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tlsgw.config.load import load_config
from tlsgw.errors import ConfigErrors


def _load(tmp_path: Path, text: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) with the file's path written FILE."""
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    try:
        cfg = load_config(str(path))
    except ConfigErrors as exc:
        return [str(e).replace(str(path), "FILE") for e in exc.errors], []
    return [], [w.replace(str(path), "FILE") for w in cfg.warnings]


def test_half_close_with_tls_is_reported_where_half_close_is_set(tmp_path, pki):
    errors, _ = _load(tmp_path, f"""\
        proxy_half_close: on
        servers:
          - listen: 127.0.0.1:9443 ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            proxy_pass: 127.0.0.1:9
        """)
    assert len(errors) == 1 and errors[0].startswith(
        'FILE:1: "proxy_half_close on" cannot be honoured with "listen ... ssl"'), errors


def test_old_protocols_are_warned_about_at_ssl_protocols(tmp_path, pki):
    _, warnings = _load(tmp_path, f"""\
        servers:
          - listen: 127.0.0.1:9443 ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            proxy_pass: 127.0.0.1:9
            ssl_protocols: TLSv1.1 TLSv1.2
        """)
    assert len(warnings) == 1 and warnings[0].startswith(
        'FILE:6: "ssl_protocols" enables TLSv1.1, but no cipher'), warnings


def test_curve_auto_under_sni_is_reported_at_ssl_ecdh_curve(tmp_path, pki):
    server = (f"  - listen: 127.0.0.1:9443 ssl\n    ssl_certificate: {pki.server}\n"
              f"    ssl_certificate_key: {pki.server_key}\n    proxy_pass: 127.0.0.1:9\n")
    errors, _ = _load(tmp_path, "servers:\n" + server + "    server_name: a.test\n"
                      + server + "    server_name: b.test\n    ssl_ecdh_curve: auto\n")
    assert len(errors) == 1 and errors[0].startswith(
        'FILE:12: "ssl_ecdh_curve: auto" cannot be honoured on a server chosen by SNI'), errors


UPSTREAM = """\
upstreams:
  backend:
    servers:
{servers}
{method}
servers:
  - listen: 127.0.0.1:9000
    proxy_pass: backend
"""


def test_backup_with_hash_is_warned_about_at_the_method(tmp_path):
    _, warnings = _load(tmp_path, UPSTREAM.format(
        servers="      - 127.0.0.1:1\n      - 127.0.0.1:2 backup", method="    hash: $remote_addr"))
    assert len(warnings) == 1 and warnings[0].startswith('FILE:6: "backup" servers with "hash"')


def test_consistent_weights_are_bounded_at_the_method(tmp_path):
    errors, _ = _load(tmp_path, UPSTREAM.format(
        servers="      - 127.0.0.1:1 weight=6000\n      - 127.0.0.1:2 weight=6000",
        method="    hash: $remote_addr consistent"))
    assert errors == ['FILE:6: the weights of upstream "backend" add up to 12000: "hash ... '
                      'consistent" allows at most 10000 (160 ring points per unit of weight)']


def test_no_primary_servers_is_said_once(tmp_path):
    errors, _ = _load(tmp_path, UPSTREAM.format(servers="      - 127.0.0.1:1 backup",
                                                method=""))
    assert errors == ['FILE:2: no servers in upstream "backend"']


def test_unused_upstream_is_warned_about_at_its_name(tmp_path):
    _, warnings = _load(tmp_path, UPSTREAM.format(servers="      - 127.0.0.1:1", method="")
                        .replace("proxy_pass: backend", "proxy_pass: 127.0.0.1:2"))
    assert warnings == ['FILE:2: upstream "backend" is not used by any server']


@pytest.mark.parametrize("ssl", ["", " ssl"])
def test_several_plain_servers_on_one_address(tmp_path, pki, ssl):
    tls = f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n"
    entry = f"  - listen: 127.0.0.1:9000{ssl}\n    proxy_pass: 127.0.0.1:9\n" + (tls if ssl else "")
    _, warnings = _load(tmp_path, "servers:\n" + entry + "    server_name: a\n" + entry
                        + "    server_name: b\n")
    if ssl:
        assert warnings == []
    else:
        assert warnings == ['FILE:2: several servers listen on "127.0.0.1:9000" without ssl: no '
                            "SNI can select one, so only the default server is used"]


def test_certificate_without_listen_ssl_is_warned_about(tmp_path, pki):
    server = (f"  - listen: 127.0.0.1:9000\n    proxy_pass: 127.0.0.1:9\n"
              f"    ssl_certificate: {pki.server}\n    ssl_certificate_key: {pki.server_key}\n")
    _, warnings = _load(tmp_path, "servers:\n" + server)
    assert warnings == ['FILE:4: "ssl_certificate" is set, but no "listen" of this server has '
                        '"ssl": it accepts plaintext connections (write "listen: ADDRESS ssl" '
                        "to terminate TLS)"]
    # inherited from the top level by a plain server, next to TLS ones: nothing to say
    top = f"ssl_certificate: {pki.server}\nssl_certificate_key: {pki.server_key}\nservers:\n"
    _, warnings = _load(tmp_path, top + "  - listen: 127.0.0.1:9000\n    proxy_pass: 127.0.0.1:9\n"
                        "  - listen: 127.0.0.1:9443 ssl\n    proxy_pass: 127.0.0.1:9\n")
    assert warnings == []


def test_a_broken_upstream_is_reported_once(tmp_path):
    """Its servers' error, not also an "unknown upstream" at every proxy_pass naming it."""
    errors, _ = _load(tmp_path, UPSTREAM.format(servers="      - 127.0.0.1:1 backup", method="")
                      .replace("    servers:\n      - 127.0.0.1:1 backup\n", "    servers: []\n"))
    assert errors == ['FILE:2: no servers are inside upstream "backend"']


def test_an_unknown_upstream_does_not_hide_the_rest_of_the_server(tmp_path):
    errors, _ = _load(tmp_path, """\
        servers:
          - listen: 127.0.0.1:9000
            proxy_pass: nowhere
            proxy_half_close: on
            proxy_ssl: on
        """)
    assert [e.split(":")[1] for e in errors] == ["3", "4"], errors
    assert errors[0].startswith('FILE:3: unknown upstream "nowhere"')
    assert errors[1].startswith('FILE:4: "proxy_half_close on" cannot be honoured')


def test_a_protocol_error_does_not_hide_a_session_cache_error(tmp_path, pki):
    errors, _ = _load(tmp_path, f"""\
        servers:
          - listen: 127.0.0.1:9443 ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            proxy_pass: 127.0.0.1:9
            ssl_protocols: TLSv1.4
            ssl_session_cache: shared:SSL:1k
        """)
    assert [e.split(":")[1] for e in errors] == ["6", "7"], errors
    assert "too small" in errors[1]


def test_listen_parameter_hint_comes_after_the_directive(tmp_path):
    errors, _ = _load(tmp_path, "servers:\n  - listen: 127.0.0.1:9000 sslx\n"
                      "    proxy_pass: 127.0.0.1:9\n")
    assert errors == ['FILE:2: invalid parameter "sslx" of the "listen" directive; did you mean '
                      '"ssl"?']


def test_a_repeated_listen_is_reported_at_its_entry(tmp_path):
    errors, _ = _load(tmp_path, """\
        servers:
          - listen: 127.0.0.1:9000
            proxy_pass: 127.0.0.1:9
          - listen:
              - 127.0.0.1:9001
              - 127.0.0.1:9000
            proxy_pass: 127.0.0.1:9
        """)
    assert errors == ['FILE:6: duplicate listen "127.0.0.1:9000" (also at line 2); servers '
                      "sharing a listen address need distinct server_name values"]


def test_listen_rules_refuse_what_serve_could_not_bind(tmp_path):
    """A wildcard and a specific address on one port, and socket options a unix socket lacks,
    pass no check (they used to pass check and fail serve's bind)."""
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "servers:\n"
        "  - listen: 0.0.0.0:39123\n    proxy_pass: 127.0.0.1:1\n"
        "  - listen: 127.0.0.1:39123\n    proxy_pass: 127.0.0.1:1\n"
        f'  - listen: "unix:{tmp_path}/x.sock reuseport"\n    proxy_pass: 127.0.0.1:1\n'
        f'  - listen: "unix:{tmp_path}/y.sock so_keepalive=on"\n    proxy_pass: 127.0.0.1:1\n'
        '  - listen: "127.0.0.2:39125"\n    proxy_pass: 127.0.0.1:1\n'
        '  - listen: "[::]:39125 ipv6only=off"\n    proxy_pass: 127.0.0.1:1\n'
        '  - listen: "127.0.0.3:39126"\n    proxy_pass: 127.0.0.1:1\n'
        '  - listen: "[::]:39126"\n    proxy_pass: 127.0.0.1:1\n')
    out = subprocess.run([sys.executable, "-m", "tlsgw", "check", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    err = out.stderr
    assert f'{cfg}:4: listen "127.0.0.1:39123" overlaps "0.0.0.0:39123" (line 2)' in err
    assert f'{cfg}:6: the "reuseport" parameter does not apply to the unix socket' in err
    assert f'{cfg}:8: the "so_keepalive" parameter does not apply to the unix socket' in err
    assert f'{cfg}:10: listen "127.0.0.2:39125" overlaps "[::]:39125" (line 12)' in err
    assert "39126" not in err  # [::] with ipv6only on (the default) leaves IPv4 alone
