"""The house: no import circle inside the package (imports inside functions count too), and the README's layout
tree names every module there is."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seqdistill"


def package_modules() -> dict[str, Path]:
    """module -> its file, over the package and its layer subpackages (engines/, checking/, sources/, training/).
    A module is named by its file's stem (`engines/api.py` is api): no two files share one."""
    files = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    modules = {p.stem: p for p in files}
    assert len(modules) == len(files), "two modules share a name: name each for its job"
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its file (`from seqdistill.engines import api`,
    `from seqdistill.engines.api import X` and `import seqdistill.engines.api` all import api)."""
    modules = package_modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seqdistill":
                last = node.module.split(".")[-1]
                names = [last] if last in modules else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[-1] for a in node.names if a.name.startswith("seqdistill.")]
            else:
                continue
            edges[name].update(n for n in names if n in modules and n != name)
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


def test_layers_do_not_import_stages():
    """The subpackages are layers under the stages: no module in engines/, checking/, sources/ or training/
    imports a command's module, the CLI or the pipeline."""
    from seqdistill import commands

    stages = {c.module.rsplit(".", 1)[-1] for c in commands.COMMANDS.values()} | {"cli", "commands", "pipeline"}
    edges = import_graph()
    layered = [name for name, path in package_modules().items() if path.parent != PACKAGE]
    upward = sorted(f"{m} -> {s}" for m in layered for s in edges.get(m, set()) & stages)
    assert upward == []


def test_readme_layout_names_every_module():
    """Every module under its own folder: `  engines/`, then `    api.py` four spaces in."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    listed, folders = set(), []
    for line in layout.split("\nseqdistill/", 1)[1].splitlines()[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        if depth == 0:
            break
        name = line.split()[0]
        del folders[depth - 1:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            listed.add("/".join([*folders, name]))
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert listed == modules


def test_only_card_writes_model_cards():
    """card.py builds the model cards and writes them (sft and student call card.write_*): no stage builds or
    writes one of its own, so they cannot drift apart in where a card goes or what it says."""
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "card":
            text = path.read_text()
            assert "ModelCard" not in text and "_model_card(" not in text, path.name


def test_commands_are_listed_once():
    """commands.COMMANDS is the one list of commands (module, config class, help): the CLI, `seqdistill run`,
    the report and the settings docs read it; no other module spells out a list of them (a test of one or two
    names is fine), or their modules."""
    from seqdistill import cli, commands

    assert list(cli.RUNS) == list(commands.COMMANDS)  # what each command does, in the table's order
    names = set(commands.COMMANDS)
    for path in PACKAGE.rglob("*.py"):
        if path.stem == "commands":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                listed = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
                assert len(listed) < 3, f"{path.name}:{node.lineno} lists commands {listed}: read commands.py"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.fullmatch(r"seqdistill\.\w+", node.value), f"{path.name}:{node.lineno}"


def test_artifact_names_have_one_owner():
    """store.py names the files a finished stage leaves for the others (its config, stats.json, results.json,
    results.md); every other module uses its constants, so a renamed file can't leave a reader behind."""
    from seqdistill import store

    names = {store.CONFIG_FILE, store.STATS_FILE, store.RESULTS_FILE, store.RESULTS_TABLE}
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "store":
            spelled = [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names]
            assert not spelled, f"{path.name} spells {spelled}: use store's constants"


def test_package_imports_sit_at_the_top_of_modules():
    """Imports of the package's own modules inside functions only where the cost is measured and named: the CLI
    (`seqdistill --help` must not import the stages, torch or vLLM) and sft's KD trainer (it subclasses TRL's)."""
    allowed = {"cli", "sft"}
    inside = []
    for path in PACKAGE.rglob("*.py"):
        for f in ast.walk(ast.parse(path.read_text())):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(f):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "seqdistill":
                        if path.stem not in allowed or (path.stem == "sft" and node.module != "seqdistill.training.kd_trainer"):
                            inside.append(f"{path.stem}:{node.lineno} {node.module}")
    assert inside == []
