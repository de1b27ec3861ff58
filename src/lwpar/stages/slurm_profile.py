"""Write (or check) the SLURM profile, profiles/slurm/config.yaml: its per-rule threads and CPUs
come from the pipeline's stage entries (`lwpar.pipeline.stages`), as the rules' memory and time do.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("profiles/slurm/config.yaml"), help="file to write")
    parser.add_argument("--check", action="store_true", help="fail if the file differs from what it would be")


def run(args, params) -> None:
    from lwpar import LwparError
    from lwpar.io import write_text
    from lwpar.pipeline import slurm_profile

    text = slurm_profile(params)
    if args.check:
        if (args.out.read_text() if args.out.exists() else "") != text:
            raise LwparError(f"{args.out} is stale: run `lwpar slurm-profile --out {args.out}`")
        return
    write_text(args.out, text)
