"""Every value has nginx's range checks (or a documented bound): FILE:LINE naming the directive,
never a traceback, and what ``check`` accepts, ``serve`` can run."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT, free_port, run_cli

from tlsgw.config import units
from tlsgw.config.load import load_config
from tlsgw.errors import ConfigErrors
from tlsgw.runtime.generation import build_file

BASE = """\
servers:
  - listen: 127.0.0.1:9000
    proxy_pass: 127.0.0.1:1
"""


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigErrors) as ei:  # what check does: load, then build
        build_file(str(path), allocate=False).release()
    return [str(e).replace(str(path), "FILE") for e in ei.value.errors]


def one_error(tmp_path: Path, text: str) -> str:
    errs = errors_of(tmp_path, text)
    assert len(errs) == 1, errs
    return errs[0]


@pytest.mark.parametrize("value, line", [("", 3), ("[a, b]", 3), ("{a: 1}", 3), ("~", 3)])
def test_proxy_pass_without_a_single_value(tmp_path, value, line):
    err = one_error(tmp_path, BASE.replace("proxy_pass: 127.0.0.1:1", f"proxy_pass: {value}"))
    assert err.startswith(f'FILE:{line}: "proxy_pass" '), err


@pytest.mark.parametrize("value", ['""', "' '", '["", 127.0.0.1:9001]'])
def test_listen_without_an_address(tmp_path, value):
    err = one_error(tmp_path, BASE.replace("listen: 127.0.0.1:9000", f"listen: {value}"))
    assert err == 'FILE:2: "listen" has no address'


def test_nul_in_a_value(tmp_path):
    err = one_error(tmp_path, BASE.replace("127.0.0.1:1", '"127.0.0.1:1\\0"'))
    assert err == 'FILE:3: "proxy_pass" contains a NUL character'


def test_lone_surrogate_in_a_value(tmp_path, pki):
    """Found by the fuzz test: a file name escaped as "\\ud800" was a UnicodeEncodeError."""
    err = one_error(tmp_path, BASE + '    ssl_certificate: "\\ud800"\n')
    assert err.startswith('FILE:4: "ssl_certificate" contains a lone UTF-16 surrogate'), err


@pytest.mark.parametrize("text, expected", [
    # times: nginx's ngx_parse_time caps (NGX_MAX_INT_T_VALUE ms / s) and unit rules
    ("proxy_timeout: " + "9" * 400 + "s",
     'invalid time "' + "9" * 37 + '..." (more than nginx\'s maximum of 9223372036854775807 '
     "milliseconds)"),
    ("proxy_timeout: 9223372036854776s",
     "(more than nginx's maximum of 9223372036854775807 milliseconds)"),
    ("proxy_connect_timeout: 1y", '"y" and "M" are allowed only in times counted in seconds'),
    ("proxy_timeout: 30s1m", "units go from the largest to the smallest, each at most once"),
    ("ssl_session_timeout: 500ms", 'invalid time "500ms" (counted in whole seconds: no "ms")'),
    ("ssl_session_timeout: 4294967296", 'invalid time "4294967296" (at most 4294967295 seconds)'),
    ("worker_shutdown_timeout: 99999999999999999999", "more than nginx's maximum"),
    # sizes and numbers
    ("proxy_buffer_size: 99999999999g", 'invalid size "99999999999g" (at most 1g) in "proxy_buffer_size"'),
    ("proxy_buffer_size: 1025m", "(at most 1g)"),
    ("proxy_next_upstream_tries: 9223372036854775808",
     'invalid number "9223372036854775808" (at most 9223372036854775807)'),
    ("ssl_verify_depth: 2147483648", 'invalid number "2147483648" (at most 2147483647) in "ssl_verify_depth"'),
    ("proxy_ssl_verify_depth: 1" + "0" * 30, '(at most 2147483647) in "proxy_ssl_verify_depth"'),
    ("worker_processes: 1025", 'invalid number "1025" (at most 1024) in "worker_processes"'),
    # the session cache, parsed by the schema at its own line
    ("ssl_session_cache: shared:SSL:100g", 'session cache "shared:SSL:100g" is too large (at most 1g)'),
    ("ssl_session_cache: shared:SSL:16k", 'session cache "shared:SSL:16k" is too small'),
    ("ssl_session_cache: shared:SSL", 'invalid session cache "shared:SSL"'),
    ("ssl_session_cache: builtin:99999999999999999999", 'invalid session cache "builtin:9999'),
])
def test_range_checks_name_the_directive_at_its_line(tmp_path, text, expected):
    key = text.partition(":")[0]
    where = "main" if key in ("worker_processes", "worker_shutdown_timeout") else "server"
    body = (text + "\n" + BASE) if where == "main" else BASE + "    " + text + "\n"
    err = one_error(tmp_path, body)
    line = 1 if where == "main" else 4
    assert err.startswith(f"FILE:{line}: "), err
    assert expected in err, err
    assert f'"{key}"' in err, err


@pytest.mark.parametrize("params, expected", [
    ("backlog=99999999999999999999", 'invalid backlog "backlog=99999999999999999999" (at most 2147483647)'),
    ("backlog=0", 'invalid backlog "backlog=0" (must be at least 1)'),
    ("rcvbuf=3g", 'invalid rcvbuf "rcvbuf=3g" (at most 2147483647)'),
    ("sndbuf=x", 'invalid sndbuf "sndbuf=x"'),
    ("so_keepalive=99999999999999s:1:1", 'invalid so_keepalive value "99999999999999s:1:1" (at most 32767 seconds)'),
    ("so_keepalive=1:1:128", 'invalid so_keepalive value "1:1:128" (at most 127)'),
    ("so_keepalive=::", 'invalid so_keepalive value "::" (expected on, off or [IDLE]:[INTVL]:[CNT]'),
    ("so_keepalive=1:2:3:4", 'invalid so_keepalive value "1:2:3:4"'),
    ("so_keepalive=500ms", 'invalid so_keepalive value "500ms" (counted in whole seconds'),
])
def test_listen_parameters_are_bounded(tmp_path, params, expected):
    err = one_error(tmp_path, BASE.replace("127.0.0.1:9000", f'"127.0.0.1:9000 {params}"'))
    assert err.startswith(f"FILE:2: {expected}"), err
    assert err.endswith('of the "listen" directive'), err


def test_so_keepalive_takes_nginx_partial_forms(tmp_path):
    path = tmp_path / "c.yaml"
    for params, expected in (("30s", (30, None, None)), ("1m:5", (60, 5, None)),
                             ("::3", (None, None, 3)), ("0:10:0", (None, 10, None))):
        path.write_text(BASE.replace("127.0.0.1:9000", f'"127.0.0.1:9000 so_keepalive={params}"'))
        assert load_config(str(path)).servers[0].listens[0].so_keepalive == expected, params


def test_upstream_parameters_are_bounded(tmp_path):
    text = """\
        upstreams:
          b:
            hash: $remote_addr consistent
            servers:
              - 127.0.0.1:7001 weight=6000 fail_timeout=500ms
              - 127.0.0.1:7002 weight=6000 max_fails=99999999999999999999
        servers:
          - listen: 127.0.0.1:9000
            proxy_pass: b
        """
    errs = errors_of(tmp_path, text)
    assert any(e.startswith('FILE:5: invalid time "500ms" (counted in whole seconds: no "ms") '
                            'in "fail_timeout"') for e in errs), errs
    assert any(e.startswith('FILE:6: invalid number "99999999999999999999"') and '"max_fails"' in e
               for e in errs), errs
    assert any(e.startswith('FILE:3: the weights of upstream "b" add up to 12000: "hash ... '
                            'consistent" allows at most 10000') for e in errs), errs


def test_nginx_time_syntax():
    assert units.parse_time("1m 30s") == units.parse_time("1m30") == 90
    assert units.parse_time("1d2h3m4s5ms") == 93784.005
    assert units.parse_time("9223372036854775807ms") == (2**63 - 1) / 1000
    assert units.parse_seconds("1y1M1w1d1h1m1s") == 365 * 86400 + 30 * 86400 + 7 * 86400 + 90061
    assert units.parse_seconds(str(2**63 - 1)) == 2**63 - 1
    for bad in ("1s1s", "1s1m", "ms", "1h 1h", str(2**63) + "ms"):
        with pytest.raises(units.UnitError):
            units.parse_time(bad)
    with pytest.raises(units.UnitError):
        units.parse_seconds(str(2**63))


def test_session_cache_sizes_conflict_at_the_second_line(tmp_path, pki):
    text = f"""\
        ssl_certificate: {pki.server}
        ssl_certificate_key: {pki.server_key}
        servers:
          - listen: 127.0.0.1:9000 ssl
            ssl_session_cache: shared:Z:1m
            proxy_pass: 127.0.0.1:1
          - listen: 127.0.0.1:9001 ssl
            ssl_session_cache: builtin shared:Z:2m
            proxy_pass: 127.0.0.1:1
        """
    err = one_error(tmp_path, text)
    assert err == ('FILE:8: the size 2097152 of shared memory zone "Z" conflicts with already '
                   "declared size 1048576 (at line 5)")


def _limited_cli(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``tlsgw ARGS`` with its address space capped at ``limit`` bytes."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "tlsgw", *args], capture_output=True,
                          text=True, timeout=60, env=env, preexec_fn=cap)


def test_check_does_not_allocate_the_shared_cache_and_serve_reports_its_line(tmp_path, pki):
    """A 1g zone fits the bound; under a 768 MiB address-space cap ``check`` still passes
    (it makes no zone) and ``serve`` fails cleanly at the directive's line."""
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""\
        error_log: stderr info
        servers:
          - listen: 127.0.0.1:{free_port()} ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            ssl_session_cache: shared:BIG:1g
            proxy_pass: 127.0.0.1:1
        """))
    limit = 768 * 2**20
    r = _limited_cli(limit, "check", "-c", str(path))
    assert r.returncode == 0, r.stderr
    r = _limited_cli(limit, "serve", "-c", str(path))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert (f'{path}:6: cannot allocate 1073741824 bytes of shared memory for session cache '
            '"shared:BIG" (12: Cannot allocate memory)') in r.stderr, r.stderr


@pytest.mark.parametrize("params", ["backlog=99999999999999999999",
                                    "so_keepalive=99999999999999s:1:1"])
def test_serve_refuses_what_check_refuses(tmp_path, params):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.replace("127.0.0.1:9000", f"127.0.0.1:{free_port()} {params}"))
    r = run_cli("serve", "-c", str(path), timeout=20)
    assert r.returncode == 1, r.stderr
    assert f"{path}:2: invalid " in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_largest_accepted_values_serve(tmp_path, gateway, backends, pki):
    """At every bound, ``serve`` starts and proxies (the timers and buffers take the values)."""
    from support import connect, recv_exactly

    b = backends("echo")
    plain, tls, tls12 = free_port(), free_port(), free_port()
    g = gateway(f"""\
        error_log: stderr info
        worker_shutdown_timeout: 9223372036854775807ms
        proxy_buffer_size: 1g
        proxy_timeout: 9223372036854775807ms
        proxy_connect_timeout: 9223372036854775807ms
        proxy_next_upstream_timeout: 9223372036854775807ms
        proxy_next_upstream_tries: 9223372036854775807
        servers:
          - listen: "127.0.0.1:{plain} backlog=2147483647 rcvbuf=2147483647 so_keepalive=32767:32767:127"
            proxy_pass: {b.address}
          - listen: 127.0.0.1:{tls} ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            ssl_handshake_timeout: 9223372036854775807ms
            ssl_session_timeout: 4294967295
            ssl_session_cache: builtin:9223372036854775807 shared:MAX:1m
            ssl_verify_depth: 2147483647
            proxy_pass: {b.address}
          - listen: 127.0.0.1:{tls12} ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            ssl_protocols: TLSv1.2
            ssl_session_tickets: off
            ssl_session_timeout: 4294967295
            ssl_session_cache: shared:MAX:1m
            proxy_pass: {b.address}
        """)
    with connect(plain) as c:
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
    for port in (tls, tls12):  # a ticket, then a session ID from the shared cache
        ctx = pki.client_context()
        session = None
        for attempt in range(2):  # the second resumes: the session was kept with that timeout
            with ctx.wrap_socket(connect(port), server_hostname="localhost",
                                 session=session) as c:
                c.sendall(b"ping")
                assert recv_exactly(c, 4) == b"ping"
                assert c.session_reused == (attempt == 1), (port, c.version())
                session = c.session
    assert g.stop() == 0
    assert "Traceback" not in g.stderr()


@pytest.mark.parametrize("directive", ["ssl_client_certificate", "ssl_trusted_certificate",
                                       "ssl_crl", "ssl_password_file", "proxy_ssl_password_file",
                                       "ssl_session_ticket_key", "proxy_ssl_trusted_certificate"])
def test_every_named_file_must_be_readable(tmp_path, pki, directive):
    """Found by the fuzz test: a missing client CA file was a traceback; a missing CRL,
    trusted-certificate or passphrase file was accepted while verification was off."""
    err = one_error(tmp_path, f"""\
        servers:
          - listen: 127.0.0.1:9000 ssl
            ssl_certificate: {pki.server}
            ssl_certificate_key: {pki.server_key}
            proxy_pass: 127.0.0.1:1
            {directive}: "on"
        """)
    assert err == (f'FILE:6: open() "{tmp_path}/on" failed (2: No such file or directory) '
                   f'in "{directive}"')


def test_a_log_target_that_is_a_directory(tmp_path):
    """check accepted these and serve failed: the master with a traceback (error_log), each
    worker in a restart loop (access_log)."""
    (tmp_path / "logs").mkdir()
    err = one_error(tmp_path, f"error_log: {tmp_path}/logs info\n" + BASE)
    assert err == f'FILE:1: log file "{tmp_path}/logs" is a directory'
    err = one_error(tmp_path, "log_format: {f: x}\n" + BASE + f"    access_log: {tmp_path}/logs f\n")
    assert err == f'FILE:5: log file "{tmp_path}/logs" is a directory'


@pytest.mark.parametrize("where", ["listen", "proxy_pass"])
def test_unix_socket_path_length(tmp_path, where):
    long = "unix:/" + "x" * 107
    err = one_error(tmp_path, BASE.replace({"listen": "127.0.0.1:9000",
                                            "proxy_pass": "127.0.0.1:1"}[where], long))
    assert f'too long path in the unix domain socket "{long}" (at most 107 bytes)' in err, err


def test_rcvbuf_zero_is_applied_not_ignored(tmp_path):
    from tlsgw.process import listeners

    path = tmp_path / "c.yaml"
    path.write_text(BASE.replace("127.0.0.1:9000", f"127.0.0.1:{free_port()} rcvbuf=0 sndbuf=0"))
    ls = load_config(str(path)).servers[0].listens[0]
    import socket

    with socket.socket() as plain:
        default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock = listeners.bind(ls)
    try:  # the kernel's minimum, well below its default
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < default
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < default
    finally:
        listeners.close(sock)


def test_a_fifo_or_device_as_a_certificate_is_refused(tmp_path, pki):
    """A FIFO would block the check forever, /dev/zero would be read without end."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        err = one_error(tmp_path, f"""\
            servers:
              - listen: 127.0.0.1:9000 ssl
                ssl_certificate: {pki.server}
                ssl_certificate_key: {pki.server_key}
                ssl_crl: {path}
                proxy_pass: 127.0.0.1:1
            """)
        assert err == f'FILE:5: "{path}" is not a regular file in "ssl_crl"'


def test_check_of_an_endless_file_is_bounded():
    r = run_cli("check", "-c", "/dev/zero")
    assert r.returncode == 1, r.stderr
    assert "/dev/zero: the file is larger than 16777216 characters" in r.stderr
