"""The admin endpoint's server actions (``POST /upstreams/NAME/servers/SERVER/drain|disable|
enable``), the servers' states in status.json, and the status page's files.

An action is the master's to take (:meth:`tlsgw.process.master.Master.steer`: it records the
state, logs it and tells every worker): the admin process writes a request on its control
channel, wakes the master with SIGUSR2 (:data:`tlsgw.process.control.REQUEST_SIGNAL`) and waits
for the reply on the same channel (:class:`MasterLink`). The master publishes the states on its
board, where status.json reads them (:func:`annotate`) with the health check's verdict, read
from the health zone this process shares with the helper.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from tlsgw.admin.http import HTTPError, Request, Response
from tlsgw.process import control

#: how long an action waits for the master's reply (it answers between two signals; a reload
#: in progress delays it by the reload's length)
REPLY_WAIT = 15.0


class MasterLink:
    """Requests to the master on the admin process's control channel, and their replies."""

    def __init__(self, channel: socket.socket | None, master_pid: int):
        self.channel = channel
        self.master_pid = master_pid
        self.buffer = b""
        self.number = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes from the master: replies go to their requests; the byte commands (REOPEN) are
        returned for the caller."""
        commands, self.buffer = control.split(self.buffer + data)
        out: list[bytes] = []
        for command in commands:
            if isinstance(command, dict):
                waiter = self.pending.pop(command.get("reply", -1), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(command)
            else:
                out.append(command)
        return out

    async def steer(self, upstream: str, server: str, action: str) -> dict[str, Any]:
        """The master's reply to *action* on *server* of *upstream*."""
        if self.channel is None:
            raise HTTPError(503, "no channel to the master process")
        self.number += 1
        number = self.number
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[number] = waiter
        try:
            try:
                self.channel.send(control.steer_request(upstream, server, action, number))
                os.kill(self.master_pid, control.REQUEST_SIGNAL)
            except ProcessLookupError:
                raise HTTPError(503, "the master process is gone")
            except OSError as exc:
                raise HTTPError(503, f"cannot reach the master process ({exc.strerror})")
            try:
                return await asyncio.wait_for(waiter, REPLY_WAIT)
            except TimeoutError:
                raise HTTPError(504, f"the master did not answer in {REPLY_WAIT:g}s")
        finally:
            self.pending.pop(number, None)


async def steer(link: MasterLink, req: Request) -> Response:
    """``POST /upstreams/NAME/servers/SERVER/ACTION``: SERVER is the ``server`` text as written
    in the configuration (percent-encode a ``/`` of a ``unix:`` path, or not: the last segment is
    the action)."""
    upstream, server, action = req.params["upstream"], req.params["server"], req.params["action"]
    answer = await link.steer(upstream, server, action)
    if answer.get("status") != 200:
        raise HTTPError(int(answer.get("status", 500)), str(answer.get("error", "failed")))
    return Response.json({"upstream": upstream, "server": server, "state": answer["state"],
                          "changed": answer["changed"]})


def annotate(doc: dict[str, Any], steering: list[list[str]],
             health: Any = None) -> dict[str, Any]:
    """Add each upstream peer's state to status.json's *doc* (in place): ``admin_state``
    (enabled, draining, disabled), ``health`` (up, down; absent without ``health_check``) and
    the one ``state`` the page shows: disabled, down (``down`` in the configuration or the health
    check), failed (``max_fails``: a ``state`` of ``failed`` the stats put there before), draining,
    up. *health* is a callable ``upstream -> (buffer, {peer: slot}) | None``."""
    states = {(u, s): st for u, s, st in steering}
    for u in doc.get("upstreams", []):
        checked = health(u["name"]) if health is not None else None
        for p in u.get("peers", []):
            admin = states.get((u["name"], p["server"]), "enabled")
            p["admin_state"] = admin
            why = []
            if checked is not None and p["peer"] in checked[1]:
                p["health"] = "up" if checked[0][checked[1][p["peer"]]] else "down"
            if admin == "disabled":
                state = "disabled"
            elif p.get("down"):
                state, why = "down", ["down in the configuration"]
            elif p.get("health") == "down":
                state, why = "down", ["health check"]
            elif p.get("failed") or p.get("state") == "failed":
                state, why = "failed", ["max_fails"]
            elif admin == "draining":
                state = "draining"
            else:
                state = "up"
            if admin != "enabled" and state != admin:
                why.append(admin)
            p["state"] = state
            p["why"] = "; ".join(why)
    doc["steering"] = [{"upstream": u, "server": s, "state": st} for u, s, st in steering]
    return doc
