"""The code's shape, checked: no import cycles among glidekit's modules (imports inside
functions included), no function over 100 lines, no test file importing another."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[1] / "glidekit"
TESTS = Path(__file__).resolve().parent


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among the modules of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycles():
    graph = grimp.build_graph("glidekit")
    # A package's __init__ re-exporting its submodules is not a cycle of code: look at the
    # modules that hold code, with each package's re-exports left out.
    for module in list(graph.modules):
        if graph.is_module_squashed(module):
            continue
        path = PACKAGE.parent / (module.replace(".", "/") + "/__init__.py")
        if path.is_file():
            for child in graph.find_children(module):
                if graph.direct_import_exists(importer=module, imported=child):
                    graph.remove_import(importer=module, imported=child)
    assert _cycle(graph) is None


def test_no_function_over_100_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 100:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert long == []


def test_no_test_file_imports_another():
    names = {p.stem for p in TESTS.rglob("test_*.py")}
    offenders = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in names:
                offenders.append(f"{path.name} imports {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.name} imports {a.name}" for a in node.names if a.name in names
                ]
    assert offenders == []


def test_what_the_readme_commands_write_is_ignored_by_git(tmp_path):
    """Issue 19 item 7: `outputs/` (the first command) and `runs/` (glidekit train)."""
    import subprocess

    repo = PACKAGE.parent
    if not (repo / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    for path in ("outputs/a.png", "runs/shapes-base-32-small/checkpoint.pt"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=repo)
        assert done.returncode == 0, path
