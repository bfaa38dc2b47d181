"""The start of a process the master forks beside its workers (the health check helper, the
admin process): what each does before its own event loop runs (:func:`run`), and how it then
listens to the master (:func:`watch_master`).

Such a process takes no operator signal (the master's job), ends on SIGTERM/SIGQUIT or when the
master is gone (parent-death signal), and runs one uvloop loop until its main coroutine returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from tlsgw import logs
from tlsgw.process import control, procctl

#: the signals such a process ignores (the master handles them for the whole gateway)
IGNORED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGPIPE, signal.SIGALRM, signal.SIGINT)


def run(title: str, name: str, master_pid: int,
        main: Callable[[], Coroutine[Any, Any, Any]]) -> int:
    """Entry point in the forked child (the master's signals still blocked): set up, then run
    ``main()`` on a new loop. Returns the exit status (1 if the master is already gone)."""
    import uvloop

    logs.reset_after_fork()
    procctl.set_title(title, name)
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGRTMIN, signal.SIG_DFL)  # the parent-death signal: exit
    procctl.set_parent_death_signal(signal.SIGRTMIN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if master_pid and os.getppid() != master_pid:
        return 1
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
        return 0
    finally:
        logs.flush_all()
        loop.close()


def watch_master(done: asyncio.Event, channel: Any, on_data: Callable[[bytes], None],
                 size: int) -> None:
    """On the running loop: *done* is set on SIGTERM or SIGQUIT, or once the master is gone
    (its end of *channel* closed); what the master sends (up to *size* bytes a read) goes to
    *on_data*."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(sig, done.set)
    if channel is None:
        return

    def readable() -> None:
        data = control.receive(channel, size)
        if data is None:
            return
        if not data:  # the master is gone
            loop.remove_reader(channel.fileno())
            done.set()
            return
        on_data(data)

    loop.add_reader(channel.fileno(), readable)
