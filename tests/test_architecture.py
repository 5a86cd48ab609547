"""The layout rules of DESIGN.md and STYLE.md, checked: import direction, module size, mypy --strict,
owned tasks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmproxy"


def test_import_direction_follows_the_layer_contract() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_longer_than_400_lines() -> None:
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert too_long == {}


def test_package_init_files_are_empty_but_the_version() -> None:
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    assert inits and all(p.read_text().strip() == "" for p in inits)


def test_mypy_strict_passes_on_the_package() -> None:
    """pyproject's [tool.mypy]: strict, over llmproxy/; the failure lists every error."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


_SPAWNERS = frozenset({"create_task", "ensure_future"})


def _unowned_tasks(source: str) -> list[int]:
    """Lines where a task is created and its result dropped (a bare expression statement): nothing
    holds, cancels or awaits it. A TaskGroup's own ``create_task`` is owned by the group."""
    tree = ast.parse(source)
    groups = {
        item.optional_vars.id
        for node in ast.walk(tree)
        if isinstance(node, ast.With | ast.AsyncWith)
        for item in node.items
        if isinstance(item.optional_vars, ast.Name)
        and isinstance(item.context_expr, ast.Call)
        and ast.unparse(item.context_expr.func).endswith("TaskGroup")
    }
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        in_group = (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in groups
        )
        if name in _SPAWNERS and not in_group:
            lines.append(node.lineno)
    return lines


def test_the_task_rule_finds_a_dropped_task_and_passes_an_owned_one() -> None:
    source = (
        "async def f(loop, coro):\n"
        "    asyncio.get_running_loop().create_task(coro)\n"  # dropped: RUF006 misses this form
        "    asyncio.ensure_future(coro)\n"  # dropped
        "    self._task = loop.create_task(coro)\n"
        "    tasks.append(loop.create_task(coro))\n"
        "    await asyncio.create_task(coro)\n"
        "    async with asyncio.TaskGroup() as group:\n"
        "        group.create_task(coro)\n"
    )
    assert _unowned_tasks(source) == [2, 3]


def test_every_task_created_is_owned() -> None:
    """STYLE.md 6: every create_task/ensure_future result is kept (assigned, stored or awaited)."""
    dropped = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in PACKAGE.rglob("*.py")
        for line in _unowned_tasks(path.read_text())
    }
    assert dropped == set()
