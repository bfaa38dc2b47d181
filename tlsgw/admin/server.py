"""The admin process: forked by the master beside the workers when ``admin`` is set; serves the
admin endpoint on its own uvloop loop, so no worker's event loop ever renders a page.

It reads the master's board and the stats table (shared memory made before the fork); it
acts only by signalling the master (``POST /reload`` is SIGHUP, then waits on the board for
the attempt's outcome). Like the health check helper it watches its control channel (EOF: the
master is gone, exit), has the parent-death signal, and the master restarts it if it dies.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import socket
import time
from typing import Any

from prometheus_client.exposition import choose_encoder

from tlsgw import logs, statuspage
from tlsgw.admin import guard, routes, steering
from tlsgw.admin import metrics as admin_metrics
from tlsgw.admin import table as stats_table
from tlsgw.admin.board import Board, health_lookup
from tlsgw.admin.http import MAX_LINE, HTTPError, Request, Response, Server
from tlsgw.process import beside, control

#: signals meant for the master that a stray kill must not act on here
#: how long POST /reload waits for the master's outcome
RELOAD_WAIT = 30.0


class Token:
    """The bearer token: the first line of ``token_file``, re-read when the file changes."""

    def __init__(self, path: str | None):
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.value: bytes | None = None

    def current(self) -> bytes | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self.stamp:
                with open(self.path, "rb") as f:
                    self.value = f.read(4096).split(b"\n", 1)[0].strip() or None
                self.stamp = stamp
        except OSError:
            self.value, self.stamp = None, None  # no file: nobody gets in
        return self.value

    def allows(self, req: Request) -> bool:
        if self.path is None:
            return True
        want = self.current()
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if want is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1", "replace"), want)


class App:
    """The endpoint's handlers (see :data:`tlsgw.admin.routes.ROUTES`)."""

    def __init__(self, generation: Any, board: Board, master_pid: int, log: logs.ErrorLog,
                 health_buf: Any = None):
        self.generation = generation
        self.health_buf = health_buf  # the master's health zone (one mapping for its lifetime)
        self.cfg = generation.cfg
        self.board = board
        self.master_pid = master_pid
        self.log = log
        self.token = Token(self.cfg.admin.token_file if self.cfg.admin else None)
        self.unix = self.cfg.admin is not None and self.cfg.admin.listen.family == socket.AF_UNIX
        self.reloading = asyncio.Lock()
        self.registry = self.collector = None
        if stats_table.TABLE is not None:
            self.collector = admin_metrics.TlsgwCollector(stats_table.TABLE, board, health_buf)
            self.registry = admin_metrics.registry(self.collector)
        self.link = steering.MasterLink(None, master_pid)  # the channel is set by AdminProcess

    async def dispatch(self, req: Request) -> Response:
        page = statuspage.asset(req.path) if req.method in ("GET", "HEAD") else None
        if page is not None:  # the page's files hold no state: the token guards what it reads
            return Response(200, page[1], page[0])
        if not self.token.allows(req):
            raise HTTPError(401, "a valid bearer token is required (Authorization: Bearer "
                            "TOKEN, the first line of token_file)",
                            {"WWW-Authenticate": 'Bearer realm="tlsgw"'})
        guard.check(req, token=self.token.path is not None, unix=self.unix)
        route, allowed = routes.find(req.method, req.path)
        if route is None:
            if allowed:
                raise HTTPError(405, f"{req.method} is not allowed on {req.path} "
                                f"(allowed: {', '.join(allowed)})",
                                {"Allow": ", ".join(allowed)})
            known = ", ".join(f"{r.method} {r.shown or r.pattern.pattern.replace(chr(92), '')}"
                              for r in routes.ROUTES)
            raise HTTPError(404, f"no such endpoint: {req.path} (there are: {known})")
        m = route.pattern.fullmatch(req.path)
        assert m is not None
        req.params = m.groupdict()
        handler = getattr(self, route.handler)
        return await handler(req)

    # ---- state --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        board = self.board.read()
        now = time.time()
        doc = {"time": now, "master": {"pid": board.get("master_pid")},
               "generation": board.get("generation", {}),
               "reloads": board.get("reloads", {}),
               "workers": board.get("workers", []),
               **board.get("config", {})}
        for cert in doc.get("certificates", []):  # as of now, not of the last reload
            if "expiry_timestamp" in cert:
                cert["days_left"] = round((cert["expiry_timestamp"] - now) / 86400, 1)
        if self.collector is not None:
            admin_metrics.live(self.collector, doc)
        return steering.annotate(doc, board.get("steering", []),
                                 health_lookup(self.health_buf, board))

    async def status_json(self, req: Request) -> Response:
        return Response.json(self.status())

    async def metrics(self, req: Request) -> Response:
        """The Prometheus text exposition (OpenMetrics when the scraper asks for it)."""
        assert self.registry is not None
        encoder, content_type = choose_encoder(req.headers.get("accept", ""))
        return Response(200, encoder(self.registry), content_type)

    async def page(self, req: Request) -> Response:  # served before the token check
        found = statuspage.asset(req.path)
        assert found is not None
        return Response(200, found[1], found[0])

    # ---- actions ------------------------------------------------------------------------
    async def steer(self, req: Request) -> Response:
        return await steering.steer(self.link, req)

    async def reload(self, req: Request) -> Response:
        """SIGHUP to the master, then the attempt's outcome from its board."""
        async with self.reloading:
            before = self.board.read().get("reloads", {}).get("attempts", 0)
            try:
                os.kill(self.master_pid, signal.SIGHUP)
            except ProcessLookupError:
                raise HTTPError(503, "the master process is gone")
            deadline = time.monotonic() + RELOAD_WAIT
            while time.monotonic() < deadline:
                reloads = self.board.read().get("reloads", {})
                if reloads.get("attempts", 0) > before:
                    last = reloads.get("last", {})
                    ok = bool(last.get("ok"))
                    doc = {"result": "ok" if ok else "failed",
                           "generation": self.board.read().get("generation", {}).get("number"),
                           "lines": last.get("lines", [])}
                    return Response.json(doc, 200 if ok else 422)
                await asyncio.sleep(0.05)
            raise HTTPError(504, f"the master did not report the reload in {RELOAD_WAIT:g}s")


class AdminProcess:
    def __init__(self, generation: Any, channel: socket.socket | None, master_pid: int,
                 sock: socket.socket, board: Board, health_buf: Any = None):
        cfg = generation.cfg
        self.channel = channel
        self.sock = sock
        self.log = logs.ErrorLog(logs.sink(cfg.error_log.target), cfg.error_log_level)
        logs.install(self.log)
        self.app = App(generation, board, master_pid, self.log, health_buf)
        self.app.link.channel = channel
        self.done = asyncio.Event()

    async def run(self) -> None:
        beside.watch_master(self.done, self.channel, self.from_master, 65536)
        http = Server(self.app.dispatch, self.log.log)
        server = await asyncio.start_server(http.handle, sock=self.sock, limit=MAX_LINE + 2)
        await self.done.wait()
        server.close()

    def from_master(self, data: bytes) -> None:
        if control.REOPEN in self.app.link.feed(data):  # and the master's replies
            logs.reopen_all()


def run_admin(generation: Any, channel: socket.socket | None, master_pid: int,
              sock: socket.socket, board: Board, health_buf: Any = None) -> int:
    """Entry point in the forked child (the master's signals still blocked)."""
    return beside.run("tlsgw: admin process", "tlsgw: admin", master_pid,
                      lambda: AdminProcess(generation, channel, master_pid, sock, board,
                                           health_buf).run())
