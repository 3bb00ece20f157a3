"""The house holds: the library imports no Prefect, flows, tasks or CLI; wings import only the wings
below them (docs/ARCHITECTURE.md); no import loop; no private name crosses a module; no product file
over 400 lines and no function over 60. Pure AST walks over the source: nothing is imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("reinflow", "cli", "flows", "tasks", "agents", "judges")

WING_FLOORS = {
    "reinflow.errors": 0, "reinflow.faults": 0,
    "reinflow.config": 1,
    "reinflow.engines": 2, "reinflow.sandbox": 2,
    "reinflow.rollout": 3,
    "reinflow.data": 4, "reinflow.judging": 4, "reinflow.training": 4, "reinflow.tracking": 4, "reinflow.endpoint": 4,
    "reinflow.distributed": 5,
    "reinflow.run": 6,
    "reinflow.logview": 7,
    "reinflow.workflow": 8, "reinflow.python_tool": 8, "reinflow": 8,
}
"""Floor of each wing of the library (docs/ARCHITECTURE.md): a module imports only its own wing
and wings on lower floors. The front door (``reinflow``, ``reinflow.workflow``) sits on top."""

OUTSIDE_THE_LIBRARY = ("prefect", "flows", "tasks", "cli", "agents", "judges")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_files() -> list[Path]:
    return sorted(f for package in PRODUCT_PACKAGES for f in (ROOT / package).rglob("*.py"))


MODULES = {module_name(path): path for path in product_files()}


def imports_of(path: Path, root: Path = ROOT) -> Iterator[tuple[str, str | None]]:
    """``(module, imported name)`` for every import statement (``TYPE_CHECKING`` and lazy ones too)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base), alias.name


def owner(name: str) -> str | None:
    """The product module that ``name`` (a module or a name inside one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def wing(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (ROOT / parts[0] / parts[1]).is_dir() else module


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for target, _ in imports_of(path):
            found = owner(target)
            if found and found != module and not (path.name == "__init__.py" and found.startswith(module)):
                graph[module].add(found)
    return graph


LIBRARY = [module for module in MODULES if module.split(".")[0] == "reinflow"]


def test_the_library_imports_no_prefect_flows_tasks_or_cli():
    breaks = [f"{module} imports {target}" for module in LIBRARY for target, _ in imports_of(MODULES[module])
              if target.split(".")[0] in OUTSIDE_THE_LIBRARY]
    assert breaks == []


def test_every_library_module_sits_on_a_known_floor():
    assert sorted({wing(module) for module in LIBRARY} - set(WING_FLOORS)) == []


def test_wings_import_only_their_own_floor_or_lower():
    graph = edges()
    upward = [f"{module} ({WING_FLOORS[wing(module)]}) imports {target} ({WING_FLOORS[wing(target)]})"
              for module in LIBRARY for target in graph[module]
              if target in LIBRARY and wing(target) != wing(module)
              and WING_FLOORS[wing(target)] >= WING_FLOORS[wing(module)]]
    assert upward == []


def test_no_import_loop():
    graph, loops = edges(), []

    def visit(module: str, trail: list[str]) -> None:
        for target in graph[module]:
            if target in trail:
                loops.append(trail[trail.index(target):] + [target])
            elif target not in done:
                visit(target, trail + [target])
        done.add(module)

    done: set[str] = set()
    for module in MODULES:
        if module not in done:
            visit(module, [module])
    assert loops == []


def test_no_private_name_crosses_a_module():
    crossings = [f"{module} takes {name} from {owner(target)}"
                 for module, path in MODULES.items() for target, name in imports_of(path)
                 if name and name.startswith("_") and not name.startswith("__") and owner(target) not in (None, module)]
    assert crossings == []


def test_no_product_file_over_the_limit():
    long = {str(path.relative_to(ROOT)): lines for path in product_files()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_over_the_limit():
    long = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


@pytest.mark.parametrize("bad, expected", [
    ("import prefect\n", "prefect"),
    ("from flows.train import train\n", "flows.train"),
    ("from cli.app import main\n", "cli.app"),
])
def test_the_walk_sees_a_forbidden_import(tmp_path, bad, expected):
    """The checks above would catch a library module that starts importing the application."""
    (tmp_path / "reinflow").mkdir()
    planted = tmp_path / "reinflow" / "planted.py"
    planted.write_text(bad)
    found = [target for target, _ in imports_of(planted, tmp_path)]
    assert found and found[0].startswith(expected) and found[0].split(".")[0] in OUTSIDE_THE_LIBRARY
