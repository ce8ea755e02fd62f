"""The package's layout (issue 14): imports flow one way, read from the source with ast.

    data <- train, data <- eval, models <- both; eval imports nothing from train; no cycles.

A unit is a sub-package (reviewgpt/data, train, eval, env, commands) or a top-level module
(reviewgpt/models/, run.py, recipe/, ...). Imports inside functions count too: a lazy import
is still a dependency. `reviewgpt/__init__.py` (the public facade, re-exports only) is not a unit.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reviewgpt"
FACADE = {"reviewgpt"}
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: dict) -> set:
    """The reviewgpt modules `name` imports (a `from X import y` of a sub-module counts as X.y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    source = path.read_text(encoding="utf-8")
    loads_by_name = "importlib" in source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Constant) and node.value in known and node.value != name and loads_by_name:
            targets = [node.value]  # a module named in a string: what importlib.import_module loads (cli's commands)
        else:
            continue
        found.update(t for t in targets if t == "reviewgpt" or t.startswith("reviewgpt."))
    return found


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def unit_graph() -> dict:
    known = modules()
    graph = {}
    for name, path in known.items():
        if name in FACADE:
            continue
        for target in imported(name, path, known):
            if target in FACADE:
                continue
            graph.setdefault(unit(name), {}).setdefault(unit(target), set()).add(f"{name} -> {target}")
    return graph


def edges_from(graph: dict, source: str, forbidden: set) -> list:
    return sorted(e for target, why in graph.get(source, {}).items() if target in forbidden for e in why)


def test_data_imports_nothing_above_it():
    graph = unit_graph()
    assert set(graph.get("data", {})) <= {"data", "errors", "files"}, graph["data"]


def test_eval_imports_nothing_from_train():
    assert edges_from(unit_graph(), "eval", {"train", "commands", "cli", "merge"}) == []


def test_models_import_nothing_from_the_pipeline():
    graph = unit_graph()
    for low in ("models", "run", "recipe", "memory", "speed_options", "torch_support", "llama_mask"):
        assert edges_from(graph, low, {"train", "eval", "commands", "cli", "env"}) == [], low


def test_train_and_eval_use_data_and_models():
    graph = unit_graph()
    assert {"data", "models"} <= set(graph["train"]) and {"data", "models"} <= set(graph["eval"])


def test_no_cycles_between_units():
    graph = {source: set(targets) - {source} for source, targets in unit_graph().items()}
    done, path = set(), []

    def visit(node):
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_modules_named_for_importlib_count_as_imports():
    known = modules()
    assert "reviewgpt.commands.quickstart" in imported("reviewgpt.cli", known["reviewgpt.cli"], known)


def test_no_cycles_between_modules():
    known = modules()
    graph = {name: imported(name, path, known) - FACADE for name, path in known.items() if name not in FACADE}
    # a package's own __init__ re-exporting its modules is not a cycle with them
    graph = {n: {t for t in ts if not (n.startswith(t + ".") and known[t].name == "__init__.py")}
             for n, ts in graph.items()}
    state = {}

    def visit(node, path):
        if state.get(node) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_modules_are_small_or_say_why():
    """No module over 300 lines unless its docstring says why (a line starting "Over 300 lines:")."""
    too_long = []
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if lines > MAX_LINES and "Over 300 lines:" not in doc:
            too_long.append(f"{name} ({lines})")
    assert too_long == []


def test_the_package_stands_alone():
    """The product cites neither the project's private files (../shared, REFERENCE.md, BASELINE.md) nor
    its issue numbers: a user has neither; what a comment needs from them it says itself."""
    import re

    cited = re.compile(r"\.\./shared|\bshared/|REFERENCE\.md|BASELINE\.md|\bissues? #?\d", re.IGNORECASE)
    found = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*")) if path.suffix in (".py", ".yaml", ".md", ".txt")
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if cited.search(line)]
    assert found == []
