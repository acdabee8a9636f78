"""The shape of the code: no import circle in src/lungxray (issue 21). A circle ties the modules on it together, so
that, e.g., an edit to serving code changed the train stage's code fingerprint and retrained every model."""

from __future__ import annotations

from conftest import REPO

from lungxray.checkpoint import module_file, project_imports

PACKAGE = REPO / "src" / "lungxray"


def import_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (anywhere in it: top level or inside functions). A
    sub-package's module "imports" its own package (``from .x import``, which :func:`project_imports` counts as the
    package's ``__init__`` too); Python loads the package first, so that edge is no circle and is left out."""
    modules = {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py")}
    modules.discard("__init__")

    def ancestors(m: str) -> set[str]:
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    return {m: project_imports(module_file(m, PACKAGE), PACKAGE) - {m} - ancestors(m) for m in sorted(modules)}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_src_lungxray_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40  # the walk saw the package
    found = circles(graph)
    assert not found, "import circles (each: modules that import each other, directly or not): " + "; ".join(
        " <-> ".join(c) for c in found)
