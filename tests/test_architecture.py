"""The package's layering, read from the source with ``ast`` (fast, Ray-free, nothing imported).

The library (config, data, models, judge, mining, losses, eval, index, serving, train, rerank,
...) is what another application could reuse; the application is what runs this repository's
pipeline and demo: ``unime.pipeline`` (stages, runner, Ray plumbing), the demo scaffolding
(``unime.demo``), ``experiments`` and the ``unime`` command (``unime.cli``). The library
never imports the application, not even lazily inside a function: a lazy import still ties
the library to the pipeline's layout and drags the demo corpus into every reuse.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# whole subtrees that are application code (the package and everything under it)
# (unime.cli: the `unime` command, the entry point over the pipeline)
APPLICATION_TREES = ("unime.pipeline", "experiments", "unime.demo", "unime.cli")


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (a submodule where ``from pkg import sub`` names one)
    line: int
    module_level: bool  # runs when the importing module is imported (not inside a function)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the ``unime`` package under ``root``, by dotted name."""
    return {module_name(path, root): path for path in sorted((root / "unime").rglob("*.py"))}


def is_application(name: str) -> bool:
    return any(name == tree or name.startswith(tree + ".") for tree in APPLICATION_TREES)


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module of ``from X import ...``, relative forms included."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportCollector(ast.NodeVisitor):
    """Every import of a module, marked module-level or not. ``if TYPE_CHECKING:`` blocks
    never run, so they count for neither check."""

    def __init__(self, importer: str, is_package: bool, modules: set[str]):
        self.importer, self.is_package, self.modules = importer, is_package, modules
        self.found: list[Import] = []
        self.depth = 0  # enclosing functions

    def _add(self, target: str, node: ast.AST) -> None:
        self.found.append(Import(target, node.lineno, self.depth == 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node):
            self.generic_visit(node)
        else:
            for child in node.orelse:
                self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_from(node, self.importer, self.is_package)
        for alias in node.names:
            # ``from unime.demo import corpus`` imports the submodule, not only the package
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("unime.x") and __import__("unime.x") hide an import in a call
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def imports_of(name: str, path: Path, modules: set[str]) -> list[Import]:
    collector = _ImportCollector(name, path.name == "__init__.py", modules)
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return [found for found in collector.found if found.target == "unime" or found.target.startswith("unime.")]


def boundary_violations(modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    """``file:line: library imports application`` for every crossing, lazy ones included."""
    names = set(modules)
    return [f"{path.relative_to(root)}:{found.line}: {name} imports {found.target}"
            + ("" if found.module_level else " (inside a function)")
            for name, path in modules.items() if not is_application(name)
            for found in imports_of(name, path, names) if is_application(found.target)]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports at import time: line}.

    An edge goes to the module named, not to its parent packages: a package's ``__init__``
    has finished (or is the one importing) by the time its submodules run, so a submodule
    importing through its own package is no cycle unless it names the package itself.
    """
    names = set(modules)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for found in imports_of(name, path, names):
            if found.module_level and found.target in names and found.target != name:
                graph[name].setdefault(found.target, found.line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, set(component)) for component in components]


def _cycle_within(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A concrete cycle through the component's first module (breadth-first, so shortest)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    return paths[node] + [start]
                if succ in component and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component has one


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_library_never_imports_the_application():
    violations = boundary_violations(all_modules())
    assert not violations, "library modules import the application layer:\n" + "\n".join(violations)


def test_the_scan_sees_what_it_must_forbid(tmp_path):
    """The scan itself: absolute, relative, ``from pkg import sub``, lazy and ``import_module``
    forms of a library-to-application import are all caught, and TYPE_CHECKING ones are not."""
    source = {"__init__.py": "", "config.py": "from unime.pipeline import runner\n",
              "pipeline/__init__.py": "", "pipeline/runner.py": "from unime import config\n",
              "demo/__init__.py": "", "demo/x.py": "", "eval/__init__.py": "",
              "eval/a.py": "def f():\n    from ..pipeline.runner import run\n",
              "eval/b.py": "from unime.demo import x\n",
              "eval/c.py": "import importlib\nimportlib.import_module('unime.demo.tiny')\n",
              "eval/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import unime.pipeline\n"}
    for name, text in source.items():
        (tmp_path / "unime" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "unime" / name).write_text(text)
    found = boundary_violations(all_modules(tmp_path), tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "unime.config imports unime.pipeline.runner", "unime.eval.a imports unime.pipeline.runner (inside a function)",
        "unime.eval.b imports unime.demo.x", "unime.eval.c imports unime.demo.tiny"]
    assert found[0].startswith("unime/config.py:1: ")


def test_no_import_cycle_among_modules():
    graph = import_graph(all_modules())
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(describe(c, graph) for c in cycles)


def test_find_cycles_reports_one():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "c", "a"], graph) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


# the package root, the config, and library modules that import Ray, Ray Serve or FastAPI
LIBRARY_PROBES = ("unime", "unime.config", "unime.data", "unime.judge", "unime.eval.harness", "unime.data.ordering",
                  "unime.serving.deployments")


def test_importing_library_modules_starts_nothing():
    """A fresh interpreter imports each module in turn and Ray has not started: the library may
    import ``ray`` for its decorators and types, but only the application initialises it (Serve
    cannot start without it either). One interpreter for all, to keep the test fast."""
    probe = ("import importlib, sys\n"
             f"for name in {LIBRARY_PROBES!r}:\n"
             "    importlib.import_module(name)\n"
             "    ray = sys.modules.get('ray')\n"
             "    assert ray is None or not ray.is_initialized(), f'importing {name} started Ray'\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# what decides whether a stage runs, and records that it ran
MANIFEST_DECISIONS = {"write_manifest", "completed"}


def manifest_decisions(path: Path) -> list[str]:
    """``file:line: name`` for each call of a manifest decision in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in MANIFEST_DECISIONS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {called}")
    return found


def test_only_the_stage_runner_writes_manifests_or_decides_to_skip():
    """Stages declare inputs, a fingerprint and their work; ``unime.pipeline.stage.run_stage``
    alone checks a manifest and writes one (tools such as ``unime.demo.models`` keep their own
    build records, not stage manifests)."""
    runner = ROOT / "unime/pipeline/stage.py"
    assert manifest_decisions(runner), "the scan must see the runner's own calls"
    calls = [c for path in sorted((ROOT / "unime/pipeline").glob("*.py")) if path != runner
             for c in manifest_decisions(path) if not c.startswith("unime/pipeline/manifest.py")]
    assert not calls, calls


def test_no_stage_imports_the_runner():
    """The runner imports every stage; a stage (the report included) importing it back would be
    a cycle, even inside a function."""
    modules = all_modules()
    importers = [f"{name}:{imp.line}" for name, path in modules.items() if name.startswith("unime.pipeline.")
                 and name != "unime.pipeline.runner"
                 for imp in imports_of(name, path, set(modules)) if imp.target == "unime.pipeline.runner"]
    assert not importers, importers


# the pipeline modules that are the demo's own: the runner's demo set-up and the demo's checks
DEMO_AWARE = ("unime.pipeline.runner", "unime.pipeline.demo_checks")


def test_stages_find_the_demo_by_name_not_by_import():
    """A stage reaches the demo's eval groups and label judge through the registry's names; no
    stage module imports ``unime.demo`` (even inside a function)."""
    modules = all_modules()
    importers = [f"{name}:{imp.line}" for name, path in modules.items() if name.startswith("unime.pipeline.")
                 and name not in DEMO_AWARE
                 for imp in imports_of(name, path, set(modules))
                 if imp.target == "unime.demo" or imp.target.startswith("unime.demo.")]
    assert not importers, importers


def outside_imports(root: Path = ROOT) -> list[str]:
    """``file:line: module`` for every import in ``unime/`` of a top-level package the wheel
    does not ship (``experiments``, ``tests``, ``bench``, ``tools``)."""
    found = []
    for path in sorted((root / "unime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            found += [f"{path.relative_to(root)}:{node.lineno}: {name}" for name in names
                      if name.split(".")[0] in ("experiments", "tests", "bench", "tools")]
    return found


def test_the_package_imports_nothing_the_wheel_leaves_out(tmp_path):
    """The wheel holds ``unime*`` only (pyproject); the method experiment and the test helpers
    live beside it, so nothing in ``unime/`` may import them."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["unime*"]
    assert not outside_imports(), outside_imports()
    (tmp_path / "unime").mkdir()
    (tmp_path / "unime" / "x.py").write_text("def f():\n    from experiments.method_effect import run\n")
    assert outside_imports(tmp_path) == ["unime/x.py:2: experiments.method_effect"]
