"""The layer order holds: a module imports only from its own layer or below, and no modules import each other.

    core < codecs < gen < pipelines < eval < train < app, cli

Every `import` / `from ... import` of a soundsmith module counts, at top level or inside a function: an
import deferred into a function still makes the lower layer depend on the upper one. The check reads the
source (AST), so it needs no imports and sees code paths the tests never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder -> (package, layer); lower layers may not import higher ones. soundsmith/ holds the package
# root (only the version and lazy re-exports, layer 0) and the CLI (the top).
FOLDERS = {"core": 0, "codecs": 1, "gen": 2, "pipelines": 3, "eval": 4, "train": 5, "app": 6}
LAYER_NAMES = {0: "core", 1: "codecs", 2: "gen", 3: "pipelines", 4: "eval", 5: "train", 6: "app/cli"}
TOP_MODULES = {"soundsmith.cli": 6, "soundsmith": 0}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "soundsmith":
        return ".".join(parts)
    return ".".join(["soundsmith", *parts])


def layer_of(module: str) -> int | None:
    if module in TOP_MODULES:
        return TOP_MODULES[module]
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FOLDERS:
        return FOLDERS[parts[1]]
    return None


def source_files(root: Path) -> list[Path]:
    files = [p for folder in FOLDERS if (root / folder).is_dir() for p in (root / folder).rglob("*.py")]
    files += [p for p in (root / "soundsmith").glob("*.py")] if (root / "soundsmith").is_dir() else []
    return sorted(files)


def resolve(target: str, known: set[str]) -> str:
    """The longest known module that `target` (a module or module.attribute) names."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in known:
            return name
    return target


def imports_of(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported soundsmith module, line) for every import in the file, wherever it sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{alias.name}" for alias in node.names] if stem else []
        else:
            continue
        for name in names:
            if name == "soundsmith" or name.startswith("soundsmith."):
                found.append((resolve(name, known), node.lineno))
    return found


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> modules it imports, and the climbing imports as messages."""
    files = source_files(root)
    modules = {module_name(p, root): p for p in files}
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    climbs: list[str] = []
    for module, path in modules.items():
        own = layer_of(module)
        for target, line in imports_of(path, module, known):
            if target != module and target in known:
                graph[module].add(target)
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                climbs.append(f"{path.relative_to(root)}:{line}: {module} ({LAYER_NAMES[own]}) imports {target} "
                              f"({LAYER_NAMES[theirs]})")
    return graph, climbs


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# -------------------------------------------------------------------------------------------- tests


def test_no_import_climbs_a_layer():
    _, climbs = import_graph(ROOT)
    assert not climbs, "imports that climb the layer order:\n" + "\n".join(climbs)


def test_no_import_cycles_between_modules():
    graph, _ = import_graph(ROOT)
    found = cycles(graph)
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_folder_has_a_layer():
    """A new top-level folder of code must be placed in the order (else its imports are not checked); a
    package that only carries data (models/) has no modules besides its `__init__`."""
    code = {p.parent.name for p in ROOT.glob("*/*.py") if p.name != "__init__.py"}
    folders = {name for name in code if (ROOT / name / "__init__.py").is_file()} - {"soundsmith", "tests", "benchmarks"}
    assert folders <= set(FOLDERS), f"folders without a layer: {sorted(folders - set(FOLDERS))}"


@pytest.mark.parametrize("source, climbs", [
    ("from soundsmith.gen.model import Thing\n", True),  # top level
    ("def f():\n    from soundsmith.gen import model\n", True),  # deferred into a function: still counts
    ("import soundsmith.gen.model\n", True),
    ("from ..gen.model import Thing\n", True),  # relative, across the folder mapping
    ("from soundsmith.core.base import helper\n", False),  # own layer
])
def test_a_planted_climbing_import_is_caught(tmp_path, source, climbs):
    for folder in ("core", "gen"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "core" / "base.py").write_text("def helper():\n    pass\n")
    (tmp_path / "core" / "planted.py").write_text(source)
    (tmp_path / "gen" / "model.py").write_text("from soundsmith.core.base import helper\nThing = helper\n")
    _, found = import_graph(tmp_path)
    assert bool(found) == climbs, found
    if climbs:
        assert "core/planted.py" in found[0] and "soundsmith.gen" in found[0]


def test_a_planted_cycle_is_caught(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "__init__.py").write_text("")
    (tmp_path / "eval" / "a.py").write_text("def f():\n    from .b import g\n")  # hidden inside a function
    (tmp_path / "eval" / "b.py").write_text("from soundsmith.eval.a import f\ng = f\n")
    graph, climbs = import_graph(tmp_path)
    assert not climbs
    assert cycles(graph) == [["soundsmith.eval.a", "soundsmith.eval.b"]]
