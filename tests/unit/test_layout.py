"""The package's layers, checked from the sources: core at the bottom imports nothing above it, core and
training import nothing from compression, compression nothing from deployment, no library imports
the stages or the pipeline, and what the planner and the configuration load imports no torch."""

from __future__ import annotations

import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "lwpar"
LIBRARIES = ("core", "config", "data", "models", "training", "evaluation", "compress", "deploy", "report")


def _modules(folder: str) -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / folder).rglob("*.py"))


def _imports(module: str) -> set[str]:
    """The lwpar modules `module` imports anywhere in it (directly, not through others)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lwpar"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lwpar"))
    return found


def _top_level_imports(module: str) -> set[str]:
    """Every module `module` imports at module level (not inside functions)."""
    found = set()
    for node in ast.parse((PACKAGE / module).read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


ALLOWED = {  # what each layer may import from the others (itself always)
    "core": set(),
    "config": {"core", "compress.recipes"},
    "data": {"core", "config"},
    "models": {"core", "config", "data"},
    "evaluation": {"core", "config", "data", "models"},
    "training": {"core", "config", "data", "models", "evaluation"},
    "compress": {"core", "config", "data", "models", "evaluation", "training"},
    "deploy": {"core", "config", "data", "models", "evaluation"},
    "report": {"core", "compress.recipes"},
}


@pytest.mark.parametrize("layer", LIBRARIES)
def test_each_layer_imports_only_the_layers_below_it(layer):
    wrong = {}
    for module in _modules(layer):
        for name in _imports(module):
            target = _package(name)
            allowed = ALLOWED[layer]
            if target and target != layer and target not in allowed and name.removeprefix("lwpar.") not in allowed:
                wrong.setdefault(module, []).append(name)
    assert wrong == {}


def test_no_library_imports_the_stages_the_pipeline_or_the_cli():
    for layer in LIBRARIES:
        for module in _modules(layer):
            assert not {n for n in _imports(module) if _package(n) in ("stages", "pipeline", "cli")}, module


def test_recipes_and_the_compress_package_import_nothing():
    """`lwpar.compress.recipes` is read by the configuration and the planner: importing it must not
    import torch, numpy or any of compression's code."""
    assert _top_level_imports("compress/__init__.py") == set()
    assert _top_level_imports("compress/recipes.py") <= {"__future__", "dataclasses", "lwpar.core.names"}
    assert _top_level_imports("core/names.py") == {"__future__"}


def _loaded_on_import(module: str) -> set[str]:
    """The package files importing `module` runs: its module-level lwpar imports, followed."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or not (PACKAGE / name).is_file():
            continue
        seen.add(name)
        parts = name.removesuffix(".py").split("/")
        todo += ["/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts))] + ["__init__.py"]
        for imported in _top_level_imports(name):
            if imported.startswith("lwpar"):
                path = imported.replace(".", "/").removeprefix("lwpar").lstrip("/")
                todo += [f"{path}.py", f"{path}/__init__.py"]
    return seen


@pytest.mark.parametrize("entry", ["config/__init__.py", "pipeline/__init__.py", "pipeline/plannable.py", "cli.py"])
def test_what_the_planner_and_the_configuration_load_imports_no_torch(entry):
    heavy = {"torch", "numpy", "onnx", "onnxruntime", "tensorly", "pandas", "torch_pruning", "timm", "torchvision"}
    loaded = _loaded_on_import(entry)
    assert "compress/recipes.py" in loaded or entry == "cli.py"
    for module in loaded:
        assert not {name.split(".")[0] for name in _top_level_imports(module)} & heavy, module


def test_every_subcommand_module_is_light_and_declares_its_flags():
    """A subcommand's module imports only the standard library and `lwpar.stages` at module level (the CLI
    and the planner read them all), declares its flags and describes itself in one first line."""
    from lwpar.cli import COMMANDS, module_of
    from lwpar.stages import summary

    stdlib = {"__future__", "argparse", "pathlib", "dataclasses", "typing", "lwpar.stages"}
    for command in COMMANDS:
        module = module_of(command)
        assert _top_level_imports(f"stages/{command.replace('-', '_')}.py") <= stdlib, command
        assert module.FLAGS and callable(module.run) and summary(module), command
