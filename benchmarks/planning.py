"""Benchmark: how long planning takes, the wall time of `snakemake -n` (Snakemake's start, the params
file loaded and validated, the shape checks' remembered verdict, the DAG of every job) beside `lwpar
config` (the CLI and the configuration alone), on each params file given; the commands are run
interleaved, round by round, after one warm-up round that also fills the shape checks' cache
(`LWPAR_CACHE`: a fresh folder per run of this script, so the first round pays the checks once).

    .venv/bin/python benchmarks/planning.py params.yaml workflow/params/dense_sweep.yaml --rounds 5

Target: `snakemake -n` on the default experiment under 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lwpar.core.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="+", help="params files (relative to the repository root)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    return parser


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main(args) -> dict:
    commands = {}
    for params in args.params:
        commands[f"snakemake -n ({params})"] = [str(BIN / "snakemake"), "-n", "-q", "--config", f"params={params}"]
        commands[f"lwpar config ({params})"] = [str(BIN / "lwpar"), "config", "--params", params]
    with tempfile.TemporaryDirectory(prefix="lwpar-planning-") as cache:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "LWPAR_CACHE": cache}
        first = {name: timed(command, env) for name, command in commands.items()}  # warm-up: fills the cache
        seconds = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                seconds[name].append(timed(command, env))
    return {"machine": machine_info(), "rounds": args.rounds,
            "first_round_s": {name: round(s, 2) for name, s in first.items()},
            "median_s": {name: round(statistics.median(s), 2) for name, s in seconds.items()},
            "range_s": {name: [round(min(s), 2), round(max(s), 2)] for name, s in seconds.items()}}


if __name__ == "__main__":
    print(json.dumps(main(get_args_parser().parse_args()), indent=2))
