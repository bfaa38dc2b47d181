"""What the phases that only decide (pre-access ``limit_conn``, access ``allow``/``deny``)
share: :class:`Gate`, the protocol that holds the raw transport for the decision, and the
session classes of listeners that use them.

A gate is the transport's protocol for ``connection_made`` only: it accepts the session
(counted, numbered, ``client ... connected``) unless the PROXY protocol reader did already,
runs its check and, when the check lets the session go on, hands the transport to the next
phase (``transport.set_protocol``) and calls its ``connection_made``. A check that refuses has
ended the session (``finalize``) and the gate stays the protocol of a closed transport.

The session of such a listener is a subclass (:func:`session_class`, chosen once per
listener): its ``accepted`` is the gate's (a no-op when the next phase calls it), it keeps
``$limit_conn_status`` and the ``limit_conn`` counts it holds, and its ``finalize`` gives those
back. Listeners without these phases and rates keep the plain session classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgw.proxy import rate
from tlsgw.proxy.handoff import abandon, replay
from tlsgw.proxy.pump import ENDED, NEW, Session

if TYPE_CHECKING:
    from tlsgw.proxy.phases import Listener


class Gate(asyncio.Protocol):
    """The raw transport's protocol while a deciding phase runs."""

    __slots__ = ("inner", "session", "check", "handed")
    wraps_next_phase = True  # tlsgw.proxy.handoff.abandon unwinds it

    def __init__(self, inner: Any, session: Any, check: Callable[[Any], bool]):
        self.inner = inner
        self.session = session
        self.check = check
        self.handed: Any = None  # the next phase, once it has the transport

    def connection_made(self, transport: Any) -> None:
        inner, session = self.inner, self.session
        self.inner = None
        if session.state is NEW:  # the first phase: no PROXY protocol reader before us
            Session.accepted(session, transport)
        if self.check(session):
            self.handed = inner
            transport.set_protocol(inner)
            inner.connection_made(transport)
        else:
            abandon(inner)

    def data_received(self, data: bytes) -> None:
        """The bytes the PROXY protocol reader replays (what followed the header) go on to the
        next phase; after a refusal, the transport is closing and they are dropped."""
        if self.handed is not None and not self.session.finished:
            replay(self.handed, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def wrap(inner: Callable[[], Any], check: Callable[[Any], bool]) -> Callable[[], Gate]:
    """A gate running ``check`` in front of ``inner``, the factory of the phases after it."""

    def make() -> Gate:
        protocol = inner()
        session = protocol if isinstance(protocol, Session) else protocol.session
        return Gate(protocol, session, check)

    return make


def _gated(base: type) -> type:
    class Gated(base):  # type: ignore[misc, valid-type]
        __slots__ = ("limit_conn_status", "limit_held")

        def __init__(self, *args: Any) -> None:
            base.__init__(self, *args)
            self.limit_conn_status: str | None = None
            self.limit_held: list[tuple[Any, bytes]] = []

        def accepted(self, transport: Any) -> None:
            """Done already, by the first gate (or the PROXY protocol reader)."""

        def finalize(self, status: int, abort: bool = False) -> None:
            if self.state is ENDED:
                return
            base.finalize(self, status, abort)
            held, self.limit_held = self.limit_held, []
            for zone, key in held:  # nginx's pool cleanup: the counts go back
                zone.give(key)

    Gated.__name__ = Gated.__qualname__ = f"Gated{base.__name__}"
    return Gated


_CLASSES: dict[tuple[type, bool, bool], type] = {}


def gated(listener: Listener) -> bool:
    """Whether the listener runs a deciding phase (its default server's settings decide)."""
    rt = listener.default
    return bool(rt.access or rt.limit_conn)


def session_class(listener: Listener, base: type) -> type:
    """The session class of a listener: ``base`` itself unless it uses ``limit_conn``,
    ``access`` or a rate limit (any of its servers: SNI may choose one)."""
    g = gated(listener)
    r = any(rt.upload_rate or rt.download_rate for rt in listener.servers.values())
    if not g and not r:
        return base
    key = (base, g, r)
    cls = _CLASSES.get(key)
    if cls is None:
        cls = base
        if g:
            cls = _gated(cls)
        if r:
            cls = rate.rated(cls)
        _CLASSES[key] = cls
    return cls
