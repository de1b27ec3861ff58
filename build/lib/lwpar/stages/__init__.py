"""One module per `lwpar` subcommand, each the same three parts:

- its description: the module docstring, whose first line is the one-line help of `lwpar --help`
  and the Snakemake rule's description;
- its arguments, declared once as `FLAGS`: the CLI builds its parser from them, and the pipeline
  derives every job's command line from them (`Flag.fill` says which of the job's inputs, outputs,
  wildcards or options fills each one);
- `run(args, params)`: the arguments in, one library call, the outputs written atomically.

Modules here import only this file and the standard library at module level, so that the CLI and
the planner read them without loading torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# How a pipeline job fills a flag (`Flag.fill`, "<how>:<key>"):
FILLS = {
    "input": "the path of the job's input <key>",
    "output": "the path of the job's output <key>",
    "folder": "the folder holding the job's output <key>",
    "wildcard": "the job's wildcard <key>",
    "inputs": "the paths of every input named <key>:<anything>",
    "pairs": "NAME=PATH for every input named <key>:NAME",
    "option": "the value (or values) the stage entry's `options` gives (omitted when None)",
}


@dataclass(frozen=True)
class Flag:
    """One command-line argument: its argparse settings, and how a pipeline job fills it (`fill`:
    "<how>:<key>", see FILLS; None: the pipeline never passes it)."""

    name: str
    help: str
    fill: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)   # argparse keywords: type, required, nargs, ...

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def how(self) -> str | None:
        return self.fill.split(":", 1)[0] if self.fill else None

    @property
    def key(self) -> str:
        """The input, output or wildcard name the pipeline fills it from (default: its dest)."""
        return self.fill.split(":", 1)[1] if self.fill and ":" in self.fill else self.dest

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(self.name, help=self.help, **self.settings)


def flag(name: str, help: str, fill: str | None = None, **settings) -> Flag:
    """A `Flag`; `settings` are argparse's keywords (type, required, nargs, choices, default, ...)."""
    if fill is not None and fill.split(":", 1)[0] not in FILLS:
        raise ValueError(f"{name}: unknown fill {fill!r} (known: {', '.join(FILLS)})")
    return Flag(name, help, fill, settings)


def dataset_dir(used_for: str = "") -> Flag:
    """--dataset-dir: the prepared dataset a job reads, given as its manifest (what the pipeline's jobs depend on)."""
    return flag("--dataset-dir", f"prepared dataset{f' ({used_for})' if used_for else ''}: its folder or its manifest",
                "input:data", type=Path, required=True)


def variant(used_for: str = "") -> Flag:
    return flag("--variant", f"variant name in params variants{f' ({used_for})' if used_for else ''}",
                "wildcard:variant", required=True)


def start_model() -> Flag:
    """--model of a compression stage: the model its variant starts from (the baseline, or its base's)."""
    return flag("--model", "the variant's start model.pt", "input:model", type=Path, required=True)


def runtime_flags() -> list[Flag]:
    """--runtime and --inference-precision: what runs an ONNX model, and the precision OpenVINO runs it in."""
    from lwpar.core.machine import INFERENCE_PRECISIONS as PRECISIONS, RUNTIMES  # light: imports no runtime

    return [flag("--runtime", "runtime that runs the ONNX model", "option", default=RUNTIMES[0], choices=list(RUNTIMES)),
            flag("--inference-precision", "OpenVINO: the precision its CPU plugin runs FP32 layers in", "option",
                 default=PRECISIONS[0], choices=list(PRECISIONS))]


def summary(module) -> str:
    """A subcommand's one-line description: the first line of its module docstring."""
    return (module.__doc__ or "").strip().splitlines()[0].rstrip(".")


def named_paths(items: list[str], what: str) -> dict:
    """NAME=PATH arguments as {name: Path}; a malformed one is an LwparError naming it."""
    from lwpar.core.errors import LwparError

    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise LwparError(f"--{what} {item!r}: expected NAME=PATH")
        pairs[name] = Path(path)
    return pairs


def write_or_check(path, text: str, check: bool, command: str) -> None:
    """Write a generated file, or with `check` fail when the file on disk differs from `text`."""
    from lwpar.core.errors import LwparError
    from lwpar.core.io import write_text

    if check:
        if (path.read_text() if path.exists() else "") != text:
            raise LwparError(f"{path} is stale: run `{command}`")
        return
    write_text(path, text)
