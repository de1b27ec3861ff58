"""Write (or --check) dvc.yaml from the pipeline definition.

One DVC stage per Snakemake job of the params file's experiment, with the same command, dependencies
(inputs and code), params keys and outputs (`lwpar.pipeline.dvc`).
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag

FLAGS = [
    flag("--out", "file to write", type=Path, default=Path("dvc.yaml")),
    flag("--check", "fail if the file differs from what it would be", action="store_true"),
]


def run(args, params) -> None:
    from lwpar.pipeline.dvc import render
    from lwpar.stages import write_or_check

    write_or_check(args.out, render(params, args.params), args.check, f"lwpar dvc --params {args.params} --out {args.out}")
