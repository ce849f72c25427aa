"""The tree itself: no merge-conflict markers in what is tracked (a rebase once committed
them into the README, where no test reads them)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<<<<<<< |>>>>>>> |=======$)", re.M)


def test_no_conflict_markers_in_tracked_files():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    assert len(files) > 100, "git ls-files listed the repository"
    found = []
    for name in files:
        path = ROOT / name.decode()
        if not name or not path.is_file() or path.suffix in {".png", ".ico"}:
            continue
        for m in MARKER.finditer(path.read_bytes()):
            line = path.read_bytes()[:m.start()].count(b"\n") + 1
            found.append(f"{name.decode()}:{line}")
    assert not found, f"conflict markers: {found}"


DOC_CITATION = re.compile(r"\b(?:shared/)?DESIGN\.md\b|\bdocs/([\w.-]+\.md)\b")


def test_code_cites_documents_that_are_in_the_repository():
    """The code's citations point at docs/ in this repository (issue 17: DESIGN.md lived
    outside it), and every cited document exists."""
    outside, missing = [], []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for m in DOC_CITATION.finditer(line):
                where = f"{path.relative_to(ROOT)}:{number}"
                if m.group(1) is None:
                    outside.append(where)
                elif not (ROOT / "docs" / m.group(1)).is_file():
                    missing.append(f"{where} docs/{m.group(1)}")
    assert not outside, f"cites DESIGN.md (outside the repository): {outside}"
    assert not missing, f"cites a document that does not exist: {missing}"


# --- The import graph (issue 17): no cycles, and config/ does not import delivery/. ---------

SRC = ROOT / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported relaywarden module: at import time?}, from the source with ast.
    Imports inside functions count (they run, only later) and are marked False; imports
    under `if TYPE_CHECKING:` never run and are left out. `from package import name` is an
    edge to package.name when that is a module, else to the package."""
    modules = {_module_name(p): p for p in (SRC / "relaywarden").rglob("*.py")}
    graph: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, bool] = {}

        def add(target: str, eager: bool, name: str = name, edges: dict = edges) -> None:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("relaywarden") and target != name:
                edges[target] = edges.get(target, False) or eager

        def visit(node: ast.AST, eager: bool, package: str = package, add=add) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _type_checking_only(child):
                    continue
                now = eager and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                        ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        add(alias.name, now)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")
                        parts = parts[:len(parts) - child.level + 1]
                        base = ".".join(parts + ([base] if base else []))
                    for alias in child.names:
                        full = f"{base}.{alias.name}"
                        add(full if full in modules else base, now)
                visit(child, now)

        visit(ast.parse(path.read_text(), str(path)), True)
        graph[name] = edges
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_cycle():
    """The checker itself: a cycle through a lazy import is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_is_read():
    graph = import_graph()
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200
    assert graph["relaywarden.config.load"]["relaywarden.config.schema"] is True
    assert graph["relaywarden.admin.cli"]["relaywarden.app"] is False     # inside a command
    # Under TYPE_CHECKING (left out) and in the package's __getattr__ (lazy).
    assert graph["relaywarden.config"]["relaywarden.config.build"] is False


def test_no_import_cycles():
    """No cycle, counting imports inside functions too: a lazy import that closes a cycle
    only hides it until the day someone moves it to the top."""
    graph = import_graph()
    assert cycles({m: set(edges) for m, edges in graph.items()}) == []


def _imported_at_import_time(start: str, graph: dict[str, dict[str, bool]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parents = [module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)]
        todo += [t for t, eager in graph.get(module, {}).items() if eager] + parents
    return seen


def test_config_does_not_import_delivery():
    """config/ is what every part reads; delivery/ is one of its users (config/build.py makes
    the router, on demand). Statically, and in a fresh interpreter that loads a config."""
    graph = import_graph()
    pulled = _imported_at_import_time("relaywarden.config", graph)
    assert "relaywarden.config.schema" in pulled
    assert sorted(m for m in pulled if m.startswith("relaywarden.delivery")) == []
    code = ("import sys, relaywarden.config as c; c.load_config(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.startswith('relaywarden.')))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "examples" / "relay.example.toml")],
                         capture_output=True, text=True, check=True).stdout
    loaded = ast.literal_eval(out)
    assert "relaywarden.config.schema" in loaded
    assert [m for m in loaded if m.startswith("relaywarden.delivery")] == []
