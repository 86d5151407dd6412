"""The house: no import circle inside the package (imports inside functions count too), and the README's layout
tree names every module there is."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seqdistill"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its file."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seqdistill":
                names = ([a.name for a in node.names if a.name in modules] if node.module == "seqdistill"
                         else [node.module.split(".")[1]])
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("seqdistill.")]
            else:
                continue
            edges[path.stem].update(n for n in names if n != path.stem)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_guard_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_bottom_modules_import_nothing_above_them():
    """Answer extraction and the sampling types are the floors others build on."""
    edges = import_graph()
    assert edges.get("answers", set()) == set()
    assert edges.get("sampling", set()) <= {"config"}
    assert "engine" not in edges["api"] and "verify" not in edges["code"] and "verify" not in edges["problems"]
    assert not edges["report"] & {"sft", "generate"}  # helpers don't import stages


def test_readme_layout_names_every_module():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    listed = set(re.findall(r"^  ([a-z_]+\.py)", layout, flags=re.M))
    modules = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert listed == modules
