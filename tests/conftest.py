from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mockio import Harness  # noqa: E402
from support import PKI, Backend, Gateway  # noqa: E402


@pytest.fixture
def backends() -> Iterator[callable]:
    """Factory: ``backends("echo", name="a")`` → a started :class:`Backend`; all closed after."""
    made: list[Backend] = []

    def make(mode: str = "echo", **kw: object) -> Backend:
        b = Backend(mode, **kw)
        made.append(b)
        return b

    yield make
    for b in reversed(made):
        b.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[callable]:
    """Factory: ``gateway(yaml_text, workers=1)`` → a started ``tlsgw serve`` subprocess."""
    made: list[Gateway] = []

    def make(config: str, workers: int = 1, start: bool = True) -> Gateway:
        d = tmp_path / f"gw{len(made)}"
        d.mkdir()
        g = Gateway(d, config, workers)
        made.append(g)
        return g.start() if start else g

    yield make
    for g in reversed(made):
        if g.proc is not None and g.proc.poll() is None:
            g.stop(timeout=10)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A lab PKI (see :class:`support.PKI`), made once per test run."""
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[type[Harness]]:
    """Factory: ``harness(server_yaml, **kw)`` → a socket-free :class:`mockio.Harness` (a session
    on a fake loop and mock transports); all closed after."""
    made: list[Harness] = []

    def make(server: str = "", **kw: object) -> Harness:
        h = Harness(tmp_path, server, **kw)  # type: ignore[arg-type]
        made.append(h)
        return h

    yield make  # type: ignore[misc]
    for h in made:
        h.close()
