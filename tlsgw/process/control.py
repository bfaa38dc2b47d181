"""The master's control channel to each worker: one ``AF_UNIX`` socket pair per worker.

The master keeps one end (non-blocking: a stuck worker never stalls it), the worker the other,
and the worker's event loop watches its end. Two things travel on it:

* commands from the master: one byte each (:data:`REOPEN`: reopen every log file), or a
  framed message (:data:`RELOAD`: serve a new generation, :func:`reload_message`) whose new
  listening sockets travel with it as ``SCM_RIGHTS`` descriptors, or :data:`STEER` (a
  server's runtime state, :func:`steer_message`); and from the worker, one
  byte :data:`SERVING` once it serves its listeners, and a reload's answer (:data:`ANSWER`:
  :data:`ADOPTED` or :data:`FAILED` with the generation number). Signals
  meant for the master are ignored by workers, so an operator's stray ``kill -USR1 <worker>``
  or a terminal's SIGHUP to the whole process group does nothing there;
* the master's death: when the master exits in any way (even ``kill -9``) the kernel closes its
  end and the worker reads EOF, stops accepting and exits at once, so no orphan keeps the ports.

A socket pair rather than a pipe so that descriptors (``SCM_RIGHTS``) can travel with the
messages: a reload hands its new listening sockets to running workers this way.
"""

from __future__ import annotations

import json
import signal
import socket
import struct

REOPEN = b"r"
RELOAD = b"g"
#: a server's runtime state changed (drain/disable/enable): framed like RELOAD, no descriptors
STEER = b"t"
#: the master's answer to a child's request (the admin process's STEER): framed like RELOAD
REPLY = b"y"
COMMANDS = {REOPEN: "reopen logs", RELOAD: "reload", STEER: "server state", REPLY: "reply"}
_FRAMED = (RELOAD, STEER, REPLY)
#: the signal a child (the admin process) sends the master after writing a request on its
#: channel; from anyone else the master logs and ignores it, as before
REQUEST_SIGNAL = signal.SIGUSR2
#: from a worker to the master, once: it serves its listening sockets (systemd's READY=1 waits
#: for every worker's)
SERVING = b"s"
#: after RELOAD: the length of the JSON body that follows
_LENGTH = struct.Struct("!I")
HEADER = 1 + _LENGTH.size


def reload_message(number: int, file: str, digest: str, listeners: list[str],
                   health: list[tuple[str, str, int]] | None = None) -> bytes:
    """RELOAD and its body: generation *number* is built from *file* (whose SHA-256 the master
    validated is *digest*); *listeners* are the route keys of the descriptors sent with it, in
    their order; *health* the ``(upstream, peer, slot)`` of every checked server in the health
    zone, as the master assigned them."""
    body = json.dumps({"generation": number, "file": file, "sha256": digest,
                       "listeners": listeners, "health": list(health or ())}).encode()
    return RELOAD + _LENGTH.pack(len(body)) + body


def steer_message(upstream: str, server: str, state: str) -> bytes:
    """STEER and its body: *server* (its text as written) of *upstream* is now *state*."""
    body = json.dumps({"steer": [upstream, server, state]}).encode()
    return STEER + _LENGTH.pack(len(body)) + body


def steer_request(upstream: str, server: str, action: str, number: int) -> bytes:
    """What the admin process asks the master: apply *action* (``drain``, ``disable``,
    ``enable``) to *server* of *upstream*; the master's :func:`reply` carries *number* back."""
    body = json.dumps({"steer": [upstream, server, action], "request": number}).encode()
    return STEER + _LENGTH.pack(len(body)) + body


def reply(number: int, status: int, **fields: object) -> bytes:
    """The master's answer to request *number*: an HTTP-like *status* and what it says."""
    body = json.dumps({"reply": number, "status": status, **fields}).encode()
    return REPLY + _LENGTH.pack(len(body)) + body


#: a worker's answer to RELOAD: ADOPTED or FAILED, then the generation number (4 bytes)
ADOPTED = b"A"
FAILED = b"F"
ANSWER = struct.Struct("!cI")


def from_worker(buffer: bytes) -> tuple[list[bytes | tuple[bytes, int]], bytes]:
    """The complete messages from a worker at the start of *buffer* (:data:`SERVING`, or an
    answer as ``(ADOPTED | FAILED, generation)``) and what is left over (an answer not fully
    received yet). A worker says SERVING when it starts, whenever that is: the bytes of
    both kinds can be on the channel when the master reads it."""
    out: list[bytes | tuple[bytes, int]] = []
    i = 0
    while i < len(buffer):
        if buffer[i:i + 1] == SERVING:
            out.append(SERVING)
            i += 1
            continue
        if len(buffer) - i < ANSWER.size:
            break
        out.append(ANSWER.unpack_from(buffer, i))
        i += ANSWER.size
    return out, buffer[i:]


def split(buffer: bytes) -> tuple[list[bytes | dict], bytes]:
    """The complete commands at the start of *buffer* (a byte command, or a RELOAD or STEER
    body as a dict) and what is left over (a message not fully received yet)."""
    out: list[bytes | dict] = []
    i = 0
    while i < len(buffer):
        command = buffer[i:i + 1]
        if command not in _FRAMED:
            out.append(command)
            i += 1
            continue
        if len(buffer) - i < HEADER:
            break
        (length,) = _LENGTH.unpack_from(buffer, i + 1)
        if len(buffer) - i - HEADER < length:
            break
        out.append(json.loads(buffer[i + HEADER:i + HEADER + length]))
        i += HEADER + length
    return out, buffer[i:]


def receive(channel: socket.socket, size: int) -> bytes | None:
    """A child's read of its non-blocking channel end: what the master sent, ``b""`` once the
    master is gone (EOF or an error), None if nothing is there yet."""
    try:
        return channel.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def pair() -> tuple[socket.socket, socket.socket]:
    """``(master_end, worker_end)``; the master closes ``worker_end`` after forking and the
    worker closes every master end it inherited (its own included, or EOF would never come)."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_end.setblocking(False)
    worker_end.setblocking(False)
    return master_end, worker_end
