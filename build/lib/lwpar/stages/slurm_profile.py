"""Write (or --check) the SLURM profile from the pipeline definition.

profiles/slurm/config.yaml: its per-rule threads and CPUs come from the stage table
(`lwpar.pipeline.table`), as the rules' memory and time do.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag

FLAGS = [
    flag("--out", "file to write", type=Path, default=Path("profiles/slurm/config.yaml")),
    flag("--check", "fail if the file differs from what it would be", action="store_true"),
]


def run(args, params) -> None:
    from lwpar.pipeline.slurm import slurm_profile
    from lwpar.stages import write_or_check

    write_or_check(args.out, slurm_profile(params), args.check, f"lwpar slurm-profile --out {args.out}")
