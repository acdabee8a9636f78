"""The shape of the code (issue 21): src/lungxray has no import circle, its packages follow the pipeline and import only
downhill, and no module reaches for another module's underscore names. A circle or an uphill import ties modules
together, so that, e.g., an edit to serving code changed the train stage's code fingerprint and retrained every
model."""

from __future__ import annotations

from pathlib import Path

from lungxray.models.checkpoint import module_file, project_imports

from conftest import REPO

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


# the packages in pipeline order: each may import the ones before it (and itself), never one after it
LAYERS = ["core", "images", "data", "models", "train", "evaluate", "ensemble", "compare", "external", "serve",
          "registry", "report", "cli"]


def uphill(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a package to one later in :data:`LAYERS` (or a module outside every package)."""
    out = []
    for module, imported in graph.items():
        here = module.split(".")[0]
        for other in imported:
            there = other.split(".")[0]
            if here not in LAYERS or there not in LAYERS or LAYERS.index(there) > LAYERS.index(here):
                out.append(f"{module} -> {other}")
    return sorted(out)


def test_the_layer_check_finds_an_uphill_import():
    assert uphill({"train.fit": {"models.inference", "serve.predictor"}}) == ["train.fit -> serve.predictor"]
    assert uphill({"models.x": {"core.io"}}) == []


def test_every_module_sits_in_a_package_and_imports_only_downhill():
    graph = import_graph()
    assert set(LAYERS) <= set(graph)  # each layer is a package of src/lungxray
    found = uphill(graph)
    assert not found, "imports against the pipeline order " + " > ".join(LAYERS) + ": " + "; ".join(found)


def private_imports(package: Path = PACKAGE) -> list[str]:
    """``from <project module> import _name``: a module using another module's own (underscore) name."""
    import ast

    out = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("lungxray")):
                out += [f"{path.relative_to(package)}: {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_no_module_imports_another_modules_underscore_names():
    found = private_imports()
    assert not found, "make these public (and list them in the package's __init__): " + "; ".join(found)


# STYLE.md rule 6: a function reads in one screen, a module in a sitting
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def oversized(package: Path = PACKAGE) -> list[str]:
    """Every def (methods and nested defs too) longer than :data:`MAX_FUNCTION_LINES` lines, counted from its ``def``
    line (decorators left out) to its last line, and every module longer than :data:`MAX_MODULE_LINES` lines."""
    import ast

    out = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(package).as_posix()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            out.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    out.append(f"{name}:{node.lineno} {node.name}: {n} lines")
    return out


def test_the_size_check_finds_a_long_function_and_a_long_module(tmp_path):
    (tmp_path / "short.py").write_text("def f():\n    return 1\n")
    (tmp_path / "long.py").write_text("def g():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
                                      + "\n" * (MAX_MODULE_LINES - MAX_FUNCTION_LINES))
    assert oversized(tmp_path) == [f"long.py: {MAX_MODULE_LINES + 1} lines",
                                   f"long.py:1 g: {MAX_FUNCTION_LINES + 1} lines"]


def test_no_function_is_over_60_lines_and_no_module_over_400():
    found = oversized()
    assert not found, ("split these into named steps that read top to bottom (STYLE.md rule 6; a module: by "
                       "concern, into its package): " + "; ".join(found))
