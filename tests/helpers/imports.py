"""The project's modules and what each imports, read from the source (no module is imported)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from config.settings import REPO_ROOT

PACKAGES = ("config", "schemas", "pipeline", "agents", "tables", "api", "scripts", "bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


@cache
def imports_of(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules, outside top-level packages) that ``name`` imports, anywhere in its body."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours, outside = set(), set()

    def add(target: str) -> None:
        if target.split(".")[0] in PACKAGES:
            # the deepest project module named: ``a.b.c`` where ``c`` is a function of ``a.b`` counts as ``a.b``
            while target and target not in modules():
                target = target.rpartition(".")[0]
            if target and target != name:
                ours.add(target)
        else:
            outside.add(target.split(".")[0])

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            named = [f"{module}.{alias.name}" for alias in node.names]
            submodules = [m for m in named if m in modules()]
            for m in submodules:
                add(m)
            if len(submodules) < len(named):
                add(module)
    return frozenset(ours), frozenset(outside)
