"""The one command-line interface: `lwpar <stage> ...`, one subcommand per pipeline stage (and
`lwpar dvc`, which writes dvc.yaml).

Each stage module exposes `add_arguments(parser)` and `run(args, params)`. Snakemake rules and
DVC stages only call these subcommands; every input, output and parameter comes in as an argument.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from lwpar import LwparError, __version__

# subcommand -> (module, one-line help)
STAGES = {
    "data": ("lwpar.stages.data", "download and prepare a dataset into the canonical form"),
    "train": ("lwpar.stages.train", "train a baseline model on a prepared dataset"),
    "evaluate": ("lwpar.stages.evaluate", "score a PyTorch checkpoint or an ONNX model on a split"),
    "sensitivity": ("lwpar.stages.sensitivity", "measure per-layer rank sensitivity on validation (LWALM search, greedy)"),
    "latency": ("lwpar.stages.latency", "time a model's factorizable layers and their replacements on a target (latency policy)"),
    "decompose": ("lwpar.stages.decompose", "factorize a trained model's layers (CP, CPD-EPC, Tucker-2, SVD)"),
    "prune": ("lwpar.stages.prune", "prune a trained model (torch-pruning channels, or unstructured zeros)"),
    "finetune": ("lwpar.stages.finetune", "fine-tune a compressed model (BN recalibration, distillation)"),
    "export": ("lwpar.stages.export", "export a model to ONNX and check parity on real images"),
    "quantize": ("lwpar.stages.quantize", "INT8 quantization of an ONNX model with ONNX Runtime"),
    "card": ("lwpar.stages.card", "write an artifact's model card (card.json, card.md) from the pipeline's records"),
    "report": ("lwpar.stages.report", "comparison tables and plots from every variant's results"),
    "profile": ("lwpar.stages.profile", "measure latency, memory, size and MACs of ONNX artifacts on a target"),
}
# commands that are not stages of the pipeline
TOOLS = {
    "config": ("lwpar.config", "print the merged, validated configuration of a params file (or --reference: every key)"),
    "dvc": ("lwpar.pipeline", "write (or --check) dvc.yaml from the pipeline definition"),
    "slurm-profile": ("lwpar.stages.slurm_profile", "write (or --check) the SLURM profile from the pipeline definition"),
    "predict": ("lwpar.stages.predict", "attribute probabilities for images from an exported artifact (ONNX Runtime only)"),
    "bundle": ("lwpar.stages.bundle", "copy one artifact with its thresholds and model card to a folder for a device"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `chosen` stage's module is imported (its arguments, its --help), so
    `lwpar --help` and each stage start without loading the other stages' libraries."""
    parser = argparse.ArgumentParser(
        prog="lwpar", description="Lightweight pedestrian attribute recognition pipeline stages.")
    parser.add_argument("--version", action="version", version=f"lwpar {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (module_name, help_text) in {**STAGES, **TOOLS}.items():
        module = importlib.import_module(module_name) if name == chosen else None
        stage = sub.add_parser(name, help=help_text, description=module.__doc__ if module else help_text,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if module is not None:
            if getattr(module, "NEEDS_PARAMS", True):
                stage.add_argument("--params", default="params.yaml", help="the params file (validated against the schema)")
            module.add_arguments(stage)
            stage.set_defaults(_run=module.run)
    return parser


def check_dvc_yaml(params_file: str, params: dict) -> None:
    """Under `dvc repro` (DVC sets DVC_STAGE), refuse to run from a dvc.yaml that no longer matches the
    params files: DVC tracks only the keys each file set when dvc.yaml was written, so a key added
    since would change the job without DVC noticing."""
    root = os.environ.get("DVC_ROOT")
    if not os.environ.get("DVC_STAGE") or not root or not (Path(root) / "dvc.yaml").exists():
        return
    # Imported by name: the check decides whether a job runs, never what it computes, so the pipeline
    # definition is not a code input of every job (see pipeline.package_imports).
    render_dvc_yaml = importlib.import_module("lwpar.pipeline").render_dvc_yaml
    if (Path(root) / "dvc.yaml").read_text() != render_dvc_yaml(params, params_file):
        raise LwparError(f"dvc.yaml is stale for {params_file}: run `lwpar dvc --params {params_file}`, then `dvc repro`")


def main(argv: list[str] | None = None) -> int:
    from lwpar.config import load_params

    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    try:
        params = load_params(args.params) if hasattr(args, "params") else None
        if args.stage in STAGES:
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
