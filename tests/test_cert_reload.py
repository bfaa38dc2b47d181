"""Certificate hot reload (``config_watch``) and the expiry warnings of served certificates.

One gateway serves two TLS listeners: one with plain files rotated by atomic rename, one with
a Kubernetes secret's layout (``tls.crt -> ..data/tls.crt``, ``..data -> ..TIMESTAMP``) rotated by
swapping the ``..data`` symlink. Every wait is for a log line; the watch looks every 200 ms."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
from pathlib import Path

from cryptography import x509
from support import connect, recv_exactly

from tlsgw.process import watch

DAY = dt.timedelta(days=1)


def _issue(pki, directory: Path, name: str, days: float) -> tuple[int, Path, Path]:
    """A server certificate (localhost) valid for *days* more, and its key: (serial, pem, key)."""
    leaf = pki.ca_obj.issue_server(not_after=dt.datetime.now(dt.UTC) + days * DAY)
    pem, key = leaf.write(directory, name)
    return leaf.cert.serial_number, Path(pem), Path(key)


def _serial(port: int, host: str, ctx: ssl.SSLContext) -> int:
    with ctx.wrap_socket(connect(port, host=host), server_hostname="localhost") as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def _k8s_secret(secret: Path, version: str, pem: Path, key: Path) -> None:
    """Publish *pem*/*key* as the secret's next version, as the kubelet does: a new timestamped
    directory, then ``..data`` swapped to it by renaming a new symlink over it."""
    d = secret / f"..{version}"
    d.mkdir()
    shutil.copy(pem, d / "tls.crt")
    shutil.copy(key, d / "tls.key")
    tmp = secret / "..data_tmp"
    tmp.symlink_to(d.name)
    os.replace(tmp, secret / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (secret / name).is_symlink():
            (secret / name).symlink_to(f"..data/{name}")


def _replace(src: Path, dst: Path) -> None:
    """An atomic rename into place (what certbot's and most tools' writes come down to)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy(src, tmp)
    os.replace(tmp, dst)


def test_rotated_certificates_are_served_and_open_sessions_go_on(tmp_path, pki, backends,
                                                                  gateway):
    echo = backends("echo")
    made, live, secret = tmp_path / "made", tmp_path / "live", tmp_path / "secret"
    for d in (made, live, secret):
        d.mkdir()
    a, a_pem, a_key = _issue(pki, made, "a", 20)  # within 30 days: warned at start
    _replace(a_pem, live / "cert.pem")
    _replace(a_key, live / "key.pem")
    d, d_pem, d_key = _issue(pki, made, "d", 5)  # within 7 days
    _k8s_secret(secret, "2026_01", d_pem, d_key)
    gw = gateway(f"""
error_log: stderr info
config_watch: 200ms
servers:
  - listen: 127.0.0.1:0 ssl
    proxy_pass: {echo.address}
    ssl_certificate: {live}/cert.pem
    ssl_certificate_key: {live}/key.pem
  - listen: 127.0.0.2:0 ssl
    proxy_pass: {echo.address}
    ssl_certificate: {secret}/tls.crt
    ssl_certificate_key: {secret}/tls.key
""")
    one, two = gw.port(0), gw.port(1)
    ctx = pki.client_context()
    assert _serial(one, "127.0.0.1", ctx) == a
    assert _serial(two, "127.0.0.2", ctx) == d
    log = gw.wait_log(f'certificate "{live}/cert.pem" (serial {a:x}) expires within 30 days')
    assert f'certificate "{secret}/tls.crt" (serial {d:x}) expires within 7 days' in log
    held = ctx.wrap_socket(connect(one), server_hostname="localhost")  # an open session on a

    # rotation by atomic rename, key first: a look between the two renames sees a key that
    # does not belong to the certificate (rejected, retried at the next change), so wait for
    # the generation, not for the first reload line
    b, b_pem, b_key = _issue(pki, made, "b", 90)
    _replace(b_key, live / "key.pem")
    _replace(b_pem, live / "cert.pem")
    gw.wait_log("reconfigured: generation 1 of")
    assert _serial(one, "127.0.0.1", ctx) == b
    held.sendall(b"still here")
    assert recv_exactly(held, 10) == b"still here"  # the session opened before goes on

    # a Kubernetes secret's update: the ..data symlink swapped to a new directory
    e, e_pem, e_key = _issue(pki, made, "e", 0.5)
    _k8s_secret(secret, "2026_02", e_pem, e_key)
    gw.wait_log("reconfigured: generation 2 of")
    assert _serial(two, "127.0.0.2", ctx) == e
    log = gw.wait_log(f'certificate "{secret}/tls.crt" (serial {e:x}) expires within 1 day')
    assert (f'"{secret}/tls.crt", "{secret}/tls.key" changed, reconfiguring (config_watch)'
            in log)  # one swap, both files, one reload

    # a key that does not match: the old certificate stays, the reason is logged, and the
    # next change (the matching certificate) is applied
    c, c_pem, c_key = _issue(pki, made, "c", 90)
    _replace(c_key, live / "key.pem")
    log = gw.wait_log("rejected, the running configuration (generation 2) is unchanged")
    line = gw.config.read_text().splitlines().index(
        f"    ssl_certificate_key: {live}/key.pem") + 1
    assert (f'{gw.config}:{line}: the private key "{live}/key.pem" does not belong to the '
            f'certificate "{live}/cert.pem"') in log
    assert _serial(one, "127.0.0.1", ctx) == b
    _replace(c_pem, live / "cert.pem")
    gw.wait_log("reconfigured: generation 3 of")
    assert _serial(one, "127.0.0.1", ctx) == c
    held.sendall(b"and still")
    assert recv_exactly(held, 9) == b"and still"
    held.close()
    # each threshold once per certificate, however many reloads served it
    err = gw.stderr()
    assert err.count(f"(serial {d:x}) expires within 7 days") == 1
    assert err.count(f"(serial {e:x}) expires within 1 day") == 1
    assert gw.stop() == 0


def test_watch_sees_content_changes_renames_and_symlink_swaps_but_not_a_touch(tmp_path):
    f = tmp_path / "cert.pem"
    f.write_bytes(b"one")
    link_dir = tmp_path / "v1"
    link_dir.mkdir()
    (link_dir / "k").write_bytes(b"v1")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "k").symlink_to("..data/k")
    missing = tmp_path / "later.pem"
    w = watch.Watch([str(f), str(tmp_path / "k"), str(missing)], 1.0)
    assert w.changed() == []
    os.utime(f, ns=(1, 1))  # touched: stat moved, content did not
    assert w.changed() == []
    f.write_bytes(b"two")  # in place
    assert w.changed() == [str(f)]
    tmp = tmp_path / "cert.tmp"
    tmp.write_bytes(b"three")
    os.replace(tmp, f)  # renamed into place
    assert w.changed() == [str(f)]
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "k").write_bytes(b"v2")
    (tmp_path / "new").symlink_to("v2")
    os.replace(tmp_path / "new", tmp_path / "..data")  # the secret's swap
    assert w.changed() == [str(tmp_path / "k")]
    missing.write_bytes(b"here now")
    assert w.changed() == [str(missing)]
    missing.unlink()
    assert w.changed() == [str(missing)]


def test_expiry_warnings_once_per_threshold_and_certificate(tmp_path, pki):
    now = dt.datetime.now(dt.UTC)
    serial, pem, _ = _issue(pki, tmp_path, "soon", 40)
    warned: set = set()
    assert watch.expiry_warnings([str(pem)], now, warned) == []  # 40 days: nothing yet
    at = [now + dt.timedelta(days=k) for k in (11, 12, 34, 35, 39.5, 41)]
    lines = [watch.expiry_warnings([str(pem)], t, warned) for t in at]
    assert lines[0] == [f'certificate "{pem}" (serial {serial:x}) expires within 30 days, on '
                        f"{(now + 40 * DAY):%Y-%m-%d %H:%M} UTC"]
    assert lines[1] == []  # the same threshold: once
    assert "expires within 7 days" in lines[2][0] and lines[3] == []
    assert "expires within 1 day," in lines[4][0]
    assert lines[5] == [f'certificate "{pem}" (serial {serial:x}) expired on '
                        f"{(now + 40 * DAY):%Y-%m-%d %H:%M} UTC"]
    # a renewed certificate at the same path starts over
    (tmp_path / "renewed").mkdir()
    renewed, pem2, _ = _issue(pki, tmp_path / "renewed", "soon", 20)
    _replace(pem2, pem)
    assert [f"(serial {renewed:x}) expires within 30 days" in x
            for x in watch.expiry_warnings([str(pem)], now, warned)] == [True]


def test_config_watch_rejects_a_bad_interval(tmp_path):
    from support import run_cli

    path = tmp_path / "tlsgw.yaml"
    path.write_text("config_watch: soon\nservers:\n  - listen: 127.0.0.1:0\n"
                    "    proxy_pass: 127.0.0.1:1\n")
    r = run_cli("check", "-c", str(path))
    assert r.returncode == 1
    assert (f'{path}:1: invalid time "soon" (expected e.g. 500ms, 30s, 5m, 2h, 1d) in '
            '"config_watch"') in r.stderr, r.stderr


