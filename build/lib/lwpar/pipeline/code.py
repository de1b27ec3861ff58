"""Code dependencies: the package files a job runs, read from the sources (never imported), so that a
change to the code reruns exactly the jobs whose stage can execute it."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "src/lwpar"
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "config/params.schema.yaml"


@lru_cache(maxsize=None)
def package_imports(module: str, root: Path = ROOT) -> tuple[str, ...]:
    """The package files `module` runs: itself and every lwpar module it imports, directly or through
    others, at module level or inside functions (read from the source, not imported)."""
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or not (root / name).is_file():
            return
        seen.add(name)
        for node in ast.walk(ast.parse((root / name).read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lwpar":
                base = node.module.split(".")[1:]
                targets = ["/".join(base), *("/".join([*base, alias.name]) for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = ["/".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "lwpar"]
            for target in filter(None, targets):
                for candidate in (f"{target}.py", f"{target}/__init__.py"):
                    visit(candidate)
        parts = name.split("/")
        for depth in range(len(parts) - 1):  # a submodule's packages run first
            visit("/".join([*parts[:depth + 1], "__init__.py"]))
        if "/" not in name and name != "__init__.py":
            visit("__init__.py")

    visit(module)
    return tuple(sorted(seen))


@lru_cache(maxsize=1)
def common_modules() -> tuple[str, ...]:
    """What every `lwpar` command runs before its stage: the CLI, the configuration and the schema;
    a change to them reruns every job."""
    return tuple(sorted({*package_imports("cli.py"), SCHEMA}))
