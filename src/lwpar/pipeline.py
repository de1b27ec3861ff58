"""The pipeline, defined once: stage templates and the job grid from params.

The Snakefile's rules (workflow/rules/*.smk) take their inputs, outputs, parameters and commands
from here, and `python -m lwpar.pipeline dvc` writes dvc.yaml from the same definitions, one DVC
stage per Snakemake job. Neither engine owns a command line: both call the `lwpar` CLI.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

PACKAGE = "src/lwpar"
# Modules every stage runs (config, CLI, IO); a change to them reruns everything.
COMMON_MODULES = ["__init__.py", "cli.py", "config.py", "io.py", "schemas/params.schema.yaml"]


@dataclass
class Stage:
    name: str
    wildcards: tuple[str, ...]
    outputs: dict[str, str]                                  # key -> path pattern
    inputs: Callable[[dict, dict], dict[str, str]]           # (params, wildcards) -> key -> path
    param_keys: Callable[[dict, dict], list[str]]            # dotted keys of params.yaml the job reads
    args: Callable[[dict, dict, dict], list[str]]            # (inputs, outputs, wildcards) -> CLI args
    modules: list[str]                                       # package files the stage runs
    directories: tuple[str, ...] = ()                        # output keys that are folders
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    local: bool = False                                      # runs on the submitting host, not a cluster node
    log: str = ""
    benchmark: str = ""
    extra: dict = field(default_factory=dict)

    def format(self, pattern: str, wildcards: dict) -> str:
        return pattern.format(**wildcards)

    def job_outputs(self, wildcards: dict) -> dict[str, str]:
        return {k: self.format(v, wildcards) for k, v in self.outputs.items()}

    def job_name(self, wildcards: dict) -> str:
        return "-".join([self.name, *(wildcards[w] for w in self.wildcards)])

    def module_files(self) -> list[str]:
        return [f"{PACKAGE}/{m}" for m in [*COMMON_MODULES, *self.modules]]

    def command(self, params_file: str, params: dict, wildcards: dict) -> str:
        inputs = self.inputs(params, wildcards)
        outputs = self.job_outputs(wildcards)
        return " ".join(["lwpar", self.name, "--params", params_file, *self.args(inputs, outputs, wildcards)])


def _prepared(params: dict, dataset: str) -> str:
    return f"{params['paths']['data']}/prepared/{dataset}"


def _run_dir(params: dict) -> str:
    return f"{params['paths']['results']}/{{dataset}}/{{model}}"


def stages(params: dict) -> dict[str, Stage]:
    data_dir = params["paths"]["data"]
    run = _run_dir(params)
    return {s.name: s for s in [
        Stage(
            name="data", wildcards=("dataset",),
            outputs={"prepared": f"{data_dir}/prepared/{{dataset}}"},
            directories=("prepared",),
            inputs=lambda p, w: {},
            param_keys=lambda p, w: ["seed", f"datasets.{w['dataset']}"],
            args=lambda i, o, w: ["--dataset", w["dataset"], "--out", o["prepared"],
                                  "--download-dir", f"{data_dir}/downloads"],
            modules=["stages/data.py", "data/__init__.py", "data/prepare.py", "data/download.py",
                     "data/archive.py", "data/parsers.py", "data/peta.py"],
            local=True,
        ),
        Stage(
            name="train", wildcards=("dataset", "model"),
            outputs={"model": f"{run}/baseline/model.pt", "history": f"{run}/baseline/history.csv",
                     "summary": f"{run}/baseline/train.json"},
            inputs=lambda p, w: {"data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "train", "evaluate", f"models.{w['model']}"],
            args=lambda i, o, w: ["--dataset-dir", i["data"], "--model", w["model"],
                                  "--out", str(Path(o["model"]).parent)],
            modules=["stages/train.py", "train.py", "losses.py", "runtime.py", "evaluation.py", "metrics.py",
                     "data/loader.py", "models/__init__.py", "models/alm.py", "models/backbones.py",
                     "models/bninception.py", "models/weights.py"],
            metrics=("summary",), plots=("history",),
        ),
        Stage(
            name="evaluate", wildcards=("dataset", "model"),
            outputs={"metrics": f"{run}/baseline/eval/metrics.json",
                     "per_attribute": f"{run}/baseline/eval/per_attribute.csv"},
            inputs=lambda p, w: {"data": _prepared(p, w["dataset"]),
                                 "model": f"{p['paths']['results']}/{w['dataset']}/{w['model']}/baseline/model.pt"},
            param_keys=lambda p, w: ["evaluate"],
            args=lambda i, o, w: ["--dataset-dir", i["data"], "--model", i["model"], "--split", "test",
                                  "--out-dir", str(Path(o["metrics"]).parent)],
            modules=["stages/evaluate.py", "evaluation.py", "metrics.py", "runtime.py", "data/loader.py",
                     "models/__init__.py", "models/alm.py", "models/backbones.py", "models/bninception.py",
                     "models/weights.py"],
            metrics=("metrics",),
        ),
    ]}


def grid(params: dict) -> list[tuple[Stage, dict]]:
    """Every job of the experiment, in dependency order."""
    experiment = params["experiment"]
    all_stages = stages(params)
    jobs = [(all_stages["data"], {"dataset": d}) for d in experiment["datasets"]]
    for name in ("train", "evaluate"):
        jobs += [(all_stages[name], {"dataset": d, "model": m})
                 for d in experiment["datasets"] for m in experiment["models"]]
    return jobs


def final_targets(params: dict) -> list[str]:
    return [path for stage, w in grid(params) if stage.name == "evaluate" for path in stage.job_outputs(w).values()]


def dvc_yaml(params: dict, params_file: str) -> dict:
    """dvc.yaml: one stage per job, with the same command, deps, params and outs as the Snakemake job."""
    result = {}
    for stage, wildcards in grid(params):
        inputs = stage.inputs(params, wildcards)
        outputs = stage.job_outputs(wildcards)
        metric_keys = set(stage.metrics) | set(stage.plots)
        entry = {
            "cmd": stage.command(params_file, params, wildcards),
            "deps": sorted({*inputs.values(), *stage.module_files()}),
            "params": [{params_file: stage.param_keys(params, wildcards)}],
            "outs": [outputs[k] for k in outputs if k not in metric_keys],
        }
        if stage.metrics:
            entry["metrics"] = [{outputs[k]: {"cache": False}} for k in stage.metrics]
        if stage.plots:
            entry["plots"] = [{outputs[k]: {"cache": False}} for k in stage.plots]
        result[stage.job_name(wildcards)] = entry
    return {"stages": result}


def render_dvc_yaml(params: dict, params_file: str) -> str:
    header = ("# Generated by `python -m lwpar.pipeline dvc` from src/lwpar/pipeline.py, the definition the\n"
              "# Snakefile uses too. Do not edit: change the pipeline or params.yaml and regenerate.\n")
    return header + yaml.safe_dump(dvc_yaml(params, params_file), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    from lwpar.config import load_params
    from lwpar.io import write_text

    parser = argparse.ArgumentParser(prog="python -m lwpar.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dvc = sub.add_parser("dvc", help="write (or --check) dvc.yaml from the pipeline definition")
    dvc.add_argument("--params", default="params.yaml")
    dvc.add_argument("--out", default="dvc.yaml")
    dvc.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render_dvc_yaml(load_params(args.params), args.params)
    if args.check:
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `python -m lwpar.pipeline dvc --params {args.params}`", file=sys.stderr)
            return 1
        return 0
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
