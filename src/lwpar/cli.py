"""The one command-line interface: `lwpar <command> ...`, one subcommand per pipeline stage and per tool.

Each subcommand is a module of `lwpar.stages` (its docstring, its `FLAGS`, its `run(args, params)`).
Snakemake rules and DVC stages only call these subcommands; every input, output and parameter comes
in as an argument.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from lwpar import __version__
from lwpar.core.errors import LwparError

# The subcommands, in the order `lwpar --help` lists them: the pipeline's stages, then the tools.
COMMANDS = ("data", "train", "calibrate", "sensitivity", "latency", "decompose", "prune", "finetune", "export", "quantize",
            "evaluate", "profile", "card", "report", "config", "dvc", "slurm-profile", "predict", "bundle",
            "node-profile")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each flag's default."""


def module_of(command: str):
    return importlib.import_module(f"lwpar.stages.{command.replace('-', '_')}")


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser. Only the chosen subcommand's module is imported (its flags, its --help), so that each
    command runs only its own code; without one (`lwpar --help`) every module's one-line help is read."""
    from lwpar.stages import summary

    parser = argparse.ArgumentParser(prog="lwpar", description="Lightweight pedestrian attribute recognition "
                                     "pipeline: one subcommand per stage, and the tools around it.")
    parser.add_argument("--version", action="version", version=f"lwpar {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<command>", required=True)
    listing = chosen is None or chosen not in COMMANDS
    for name in COMMANDS:
        module = module_of(name) if name == chosen or listing else None
        command = sub.add_parser(name, help=summary(module) if module else None,
                                 description=module.__doc__ if module else None,
                                 formatter_class=_Formatter)
        if module is not None and name == chosen:
            if getattr(module, "NEEDS_PARAMS", True):
                command.add_argument("--params", default="params.yaml",
                                     help="the params file (validated against the schema)")
            for flag in module.FLAGS:
                flag.add_to(command)
            command.set_defaults(_run=module.run)
    return parser


def check_dvc_yaml(params_file: str, params: dict) -> None:
    """Under `dvc repro` (DVC sets DVC_STAGE), refuse to run from a dvc.yaml that no longer matches the
    params files: DVC tracks only the keys each file set when dvc.yaml was written, so a key added
    since would change the job without DVC noticing."""
    root = os.environ.get("DVC_ROOT")
    if not os.environ.get("DVC_STAGE") or not root or not (Path(root) / "dvc.yaml").exists():
        return
    # Imported by name: the check decides whether a job runs, never what it computes, so the pipeline
    # definition is not a code input of every job (see pipeline.code.package_imports).
    render = importlib.import_module("lwpar.pipeline.dvc").render
    if (Path(root) / "dvc.yaml").read_text() != render(params, params_file):
        raise LwparError(f"dvc.yaml is stale for {params_file}: run `lwpar dvc --params {params_file}`, then `dvc repro`")


def main(argv: list[str] | None = None) -> int:
    from lwpar.config import load_params

    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    try:
        params = load_params(args.params) if hasattr(args, "params") else None
        if params is not None:
            check_dvc_yaml(args.params, params)
        args._run(args, params)
    except LwparError as exc:
        print(f"lwpar {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # anything not already turned into a named error: still one line, naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lwpar {args.stage}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lwpar {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0
