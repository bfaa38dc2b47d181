"""Imports flow one way (issue 8): no module-level cycle in the package, imports go down the
layers of docs/design.md (cli -> process -> data path -> runtime -> tls, logs -> config -> pure),
the data path's leaf modules depend on nothing of tlsgw, and no data-path function imports at
call time.

Read from the source with ``ast``: imports under ``if TYPE_CHECKING:`` are for annotations
only and do not count; imports inside functions are "lazy" and counted separately.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tlsgw"
LEAVES = ("tlsgw.proxy.flow", "tlsgw.proxy.messages", "tlsgw.proxy.record",
          "tlsgw.proxy.context", "tlsgw.proxy.proxyproto")

# The layers, top first; a module belongs to the layer of its longest matching prefix. Modules
# of no layer (certs, gencert, lab, probe, remap: tools beside the gateway) are not checked.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cli", ("tlsgw.cli", "tlsgw.__main__")),
    ("process", ("tlsgw.process", "tlsgw.health.helper", "tlsgw.admin")),
    ("data path", ("tlsgw.proxy", "tlsgw.tls.transport", "tlsgw.health")),
    ("runtime", ("tlsgw.runtime",)),
    ("tls", ("tlsgw.tls", "tlsgw.logs")),
    ("config", ("tlsgw.config",)),
    ("pure", ("tlsgw.balancer", "tlsgw.variables", "tlsgw.errors", "tlsgw.health.checker")),
)


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of tlsgw modules."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top: set[str] = set()
    lazy: set[str] = set()

    def names(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                    and child.test.id == "TYPE_CHECKING"):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = {n for n in names(child) if n.split(".")[0] == "tlsgw"}
                (lazy if in_function else top).update(found)
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                               ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return top, lazy


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    top: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        top[_module(path)], lazy[_module(path)] = _imports(path)
    known = set(top)
    return ({m: {d for d in deps if d in known and d != m} for m, deps in top.items()},
            {m: {d for d in deps if d in known} for m, deps in lazy.items()})


def test_no_import_cycles():
    graph, _ = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                walk(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), rank)
    return None if best is None else best[1]


def _upward(graph: dict[str, set[str]], below: str) -> dict[str, set[str]]:
    """Imports by modules under the layer named ``below`` of modules in it or above it."""
    names = [name for name, _ in LAYERS]
    limit = names.index(below)
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        rank = _layer(m)
        if rank is None or rank <= limit:
            continue
        bad = {d for d in deps if (r := _layer(d)) is not None and r <= limit}
        if bad:
            out[m] = bad
    return out


def test_layers_are_known():
    assert _layer("tlsgw.tls.transport") == _layer("tlsgw.proxy.pump")  # the data path
    assert _layer("tlsgw.tls.sni") == _layer("tlsgw.logs")
    assert _layer("tlsgw.gencert") is None


def test_only_cli_imports_cli_and_only_process_imports_process():
    graph, _ = _graph()
    assert _upward(graph, "cli") == {}
    assert _upward(graph, "process") == {}


def test_nothing_below_the_data_path_imports_it():
    """runtime, tls, logs, config and the pure modules import no proxy module and no
    tls.transport: the data path uses them, never the reverse."""
    graph, _ = _graph()
    assert _upward(graph, "data path") == {}


def test_tls_transport_does_not_import_the_proxy():
    """Same layer, one way: the proxy's phases wrap sessions in TLSAccept; the TLS glue takes
    the session it is given and knows nothing of the pump."""
    graph, _ = _graph()
    assert {d for d in graph["tlsgw.tls.transport"] if d.startswith("tlsgw.proxy")} == set()


def test_config_imports_no_data_path_runtime_or_process():
    graph, _ = _graph()
    for m, deps in graph.items():
        if _layer(m) == _layer("tlsgw.config"):
            assert {d for d in deps if _layer(d) is not None and _layer(d) < _layer("tlsgw.tls.sni")} \
                == set(), m


def test_pure_modules_import_only_pure_modules():
    graph, _ = _graph()
    assert _upward(graph, "config") == {}


def test_data_path_leaves_depend_on_nothing_of_tlsgw():
    graph, _ = _graph()
    for leaf in LEAVES:
        assert graph[leaf] - {"tlsgw.proxy"} == set(), (leaf, graph[leaf])
    assert "tlsgw.proxy.pump" not in graph["tlsgw.proxy.connect"]  # the pump calls connect


def test_no_imports_inside_data_path_functions():
    _, lazy = _graph()
    offenders = {m: deps for m, deps in lazy.items() if m.startswith("tlsgw.proxy") and deps}
    assert offenders == {}


#: what a pure configuration must not reach: tlsgw's upper layers and the system's TLS,
#: memory mappings, sockets and event loops
_IMPURE_TLSGW = ("tlsgw.tls", "tlsgw.runtime", "tlsgw.proxy", "tlsgw.process", "tlsgw.logs")
_IMPURE_STDLIB = ("ssl", "mmap", "socket", "asyncio", "uvloop", "ctypes", "selectors")
#: the TLS contexts are built by tlsgw/runtime/; load.py's ``tls()`` still asks the TLS library
#: two facts for a rule of checks.py (which suites work before TLS 1.2, OpenSSL's major
#: version), at call time: the one method allowed to
_BUILDING = {"tls"}


def _all_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, enclosing function or None) of every import in the file, stdlib ones too."""
    out: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                out.extend([(child.module, function)]
                           + [(f"{child.module}.{a.name}", function) for a in child.names])
            else:
                inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    else function
                visit(child, inner)

    visit(ast.parse(path.read_text()), None)
    return out


def _impure(name: str) -> bool:
    return (name.split(".")[0] in _IMPURE_STDLIB
            or any(name == m or name.startswith(m + ".") for m in _IMPURE_TLSGW))


def test_config_is_pure():
    """tlsgw.config turns text into a model and touches no ssl, mmap, socket or event loop
    (issue 8); addresses.py may use socket's constants and resolve host names, as nginx
    resolves them when it reads its configuration."""
    offenders = []
    for path in sorted((PACKAGE / "config").rglob("*.py")):
        module = _module(path)
        for name, function in _all_imports(path):
            if not _impure(name):
                continue
            if module == "tlsgw.config.addresses" and name == "socket":
                continue
            if module == "tlsgw.config.load" and function in _BUILDING:
                continue
            offenders.append((module, function, name))
    assert offenders == []


def test_proxy_protocol_codec_is_pure():
    """tlsgw/proxy/proxyproto.py parses and builds headers without I/O: nothing of tlsgw (it is
    a leaf), no TLS, event loop or mapping; ``socket`` only for its address conversions."""
    path = PACKAGE / "proxy" / "proxyproto.py"
    assert [name for name, _ in _all_imports(path) if _impure(name) and name != "socket"] == []
