"""The master's control channel to each worker: one ``AF_UNIX`` socket pair per worker.

The master keeps one end (non-blocking: a stuck worker never stalls it), the worker the other,
and the worker's event loop watches its end. Two things travel on it:

* commands, one byte each, from the master (:data:`REOPEN`: reopen every log file), and one
  byte the other way, :data:`SERVING`, once the worker serves its listeners. Signals
  meant for the master are ignored by workers, so an operator's stray ``kill -USR1 <worker>``
  or a terminal's SIGHUP to the whole process group does nothing there;
* the master's death: when the master exits in any way (even ``kill -9``) the kernel closes its
  end and the worker reads EOF, stops accepting and exits at once, so no orphan keeps the ports.

A socket pair rather than a pipe so that descriptors (``SCM_RIGHTS``) can travel the same way
when in-process reload needs to hand new listening sockets to running workers.
"""

from __future__ import annotations

import socket

REOPEN = b"r"
COMMANDS = {REOPEN: "reopen logs"}
#: from a worker to the master, once: it serves its listening sockets (systemd's READY=1 waits
#: for every worker's)
SERVING = b"s"


def pair() -> tuple[socket.socket, socket.socket]:
    """``(master_end, worker_end)``; the master closes ``worker_end`` after forking and the
    worker closes every master end it inherited (its own included, or EOF would never come)."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_end.setblocking(False)
    worker_end.setblocking(False)
    return master_end, worker_end
