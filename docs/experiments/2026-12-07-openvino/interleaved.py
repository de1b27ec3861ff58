"""Every artifact on both runtimes in one interleaved run (issue 44): one benchmark worker per artifact
and runtime (lwpar.deploy.benchmark.Worker, as `lwpar profile` uses), warmed up, then rounds in which
every worker runs in turn; medians per artifact and runtime, and speed-ups against the FP32 baseline
on ONNX Runtime and on the same runtime, as ratios of medians from this one run.

    python interleaved.py OUT.json NAME=MODEL.onnx ... [--batch 1] [--threads 1] [--rounds 15] [--iters 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lwpar.core.machine import machine_info
from lwpar.deploy.benchmark import Worker

RUNTIMES = ("onnxruntime", "openvino")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.models)
    workers = {}
    for name, path in models.items():
        for runtime in RUNTIMES:
            target = {"runtime": runtime, "inference_precision": "f32", "providers": ["CPUExecutionProvider"],
                      "command_prefix": None, "copy_command": None, "remote_dir": None}
            workers[name, runtime] = Worker(Path(path), target)
    try:
        for worker in workers.values():
            worker.run(args.batch, args.threads, 5)
        samples = {key: [] for key in workers}
        for _ in range(args.rounds):
            for key, worker in workers.items():
                samples[key] += worker.run(args.batch, args.threads, args.iters)
    finally:
        for worker in workers.values():
            worker.close()
    median = {key: float(np.median(s)) * 1000 for key, s in samples.items()}
    base = {runtime: median["baseline", runtime] for runtime in RUNTIMES}
    rows = [{"artifact": name, "runtime": runtime, "median_ms": ms,
             "speedup_same_runtime": base[runtime] / ms, "speedup_vs_onnxruntime_fp32": base["onnxruntime"] / ms,
             "peak_rss_mb": workers[name, runtime].peak_rss_mb} for (name, runtime), ms in median.items()]
    result = {"batch": args.batch, "threads": args.threads, "rounds": args.rounds, "iters_per_round": args.iters,
              "machine": machine_info(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"{row['artifact']:>24} {row['runtime']:>11}: {row['median_ms']:7.2f} ms, "
              f"{row['speedup_same_runtime']:.2f}x on its runtime, {row['speedup_vs_onnxruntime_fp32']:.2f}x vs ORT FP32")


if __name__ == "__main__":
    main()
