"""The pre-access phase: ``limit_conn`` (nginx's ``ngx_stream_limit_conn_module``).

For each limit of the listener's default server, in order: the key is made (after realip);
an empty key is not counted, one longer than 255 bytes is logged and not counted; then the
zone (:class:`tlsgw.runtime.conn_zone.ConnZone`, shared by all workers) counts the session
unless the key has its number of sessions already. Over a limit: ``limiting connections by
zone "NAME"`` at ``limit_conn_log_level``, the counts already taken are given back, and the
session ends with ``$status`` 503 (``$limit_conn_status`` ``REJECTED``); with
``limit_conn_dry_run`` it is logged and goes on (``REJECTED_DRY_RUN``). A full zone refuses a
new key with 503 and no log line, as nginx. The counts a session took are given back when it
ends (:class:`tlsgw.proxy.gate` sessions' ``finalize``).

A listener whose default server has no ``limit_conn`` never sees this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgw.proxy import gate
from tlsgw.proxy.record import Status
from tlsgw.runtime.conn_zone import FULL, OVER, PASSED, Limit

if TYPE_CHECKING:
    from tlsgw.proxy.phases import Listener

MAX_KEY = 255


def checker(limits: tuple[Limit, ...], level: str, dry_run: bool) -> Callable[[Any], bool]:
    def check(session: Any) -> bool:
        held: list[tuple[Any, bytes]] = []
        status = "PASSED"
        for limit in limits:
            key = limit.key(session)
            if not key:
                continue
            if len(key) > MAX_KEY:
                shown = key.decode("utf-8", "backslashreplace")
                session.error("error", f'the value of the "{limit.key_text}" key is more than '
                              f'{MAX_KEY} bytes: "{shown}" while initializing session', proxy=False)
                continue
            got = limit.zone.take(key, limit.number)
            if got == PASSED:
                held.append((limit.zone, key))
                continue
            if got == OVER:
                dry = ", dry run," if dry_run else ""
                session.error(level, f'limiting connections{dry} by zone "{limit.name}" while '
                              "initializing session", proxy=False)
                if dry_run:
                    status = "REJECTED_DRY_RUN"
                    continue
            elif got != FULL:  # BUSY: the zone's lock was not had in time; not counted
                continue
            for zone, k in held:
                zone.give(k)
            session.limit_conn_status = "REJECTED"
            session.finalize(Status.SERVICE_UNAVAILABLE)
            return False
        session.limit_held = held
        session.limit_conn_status = status
        return True

    return check


def preaccess(listener: Listener, inner: Callable[[], Any]) -> Callable[[], Any] | None:
    """The pre-access phase of :mod:`tlsgw.proxy.phases`, for a listener whose default server
    has ``limit_conn`` (None otherwise)."""
    rt = listener.default
    if not rt.limit_conn:
        return None
    s = rt.cfg.s
    return gate.wrap(inner, checker(rt.limit_conn, s.limit_conn_log_level, s.limit_conn_dry_run))
