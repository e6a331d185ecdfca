"""What the library imports, its install brings: a module imported anywhere under ``unime/``
comes from ``[project] dependencies`` (directly or through their own requirements), or from
the machine extras that both ``cpu`` and ``gpu`` give (torch, vLLM and FAISS builds); never
from ``dev`` alone, which a cluster image does not install."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys

import pytest

from tests.helpers import ROOT

# the cpu and gpu extras each bring a build of these (vllm brings torchvision)
MACHINE_EXTRA_MODULES = {"torch", "torchvision", "vllm", "faiss"}


def imported_modules() -> set[str]:
    found = set()
    for path in (ROOT / "unime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "unime"}


def requirement(spec: str) -> tuple[str, set[str], str]:
    """(normalised name, extras, marker) of a requirement string."""
    name, extras, marker = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[([^\]]*)\])?[^;]*(?:;(.*))?$", spec).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), {e.strip() for e in (extras or "").split(",") if e.strip()}, marker or ""


def installed_closure(specs: list[str]) -> set[str]:
    """Distributions the requirements bring, following installed metadata (extras included)."""
    seen, todo = set(), [requirement(s)[:2] for s in specs]
    while todo:
        name, extras = todo.pop()
        key = (name, frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            child, child_extras, marker = requirement(spec)
            wanted = re.findall(r'extra\s*==\s*"([^"]+)"', marker)
            if wanted and not set(wanted) & extras:
                continue
            todo.append((child, child_extras))
    return {name for name, _ in seen}


def test_every_module_the_library_imports_is_installed_by_its_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    brought = installed_closure(project["dependencies"])
    distributions = metadata.packages_distributions()
    missing = {}
    for module in sorted(imported_modules() - MACHINE_EXTRA_MODULES):
        names = {requirement(d)[0] for d in distributions.get(module, [module])}
        if not names & brought:
            missing[module] = sorted(names)
    assert not missing, f"imported by unime/ but not brought by [project] dependencies: {missing}"
