"""Benchmark: ALM on each backbone at its input size: parameters, MACs (torch.utils.flop_counter) and
ONNX Runtime latency, measured as `lwpar profile` measures (one worker process per model, warm-up,
interleaved rounds, medians), batch 1 and one thread by default.

Weights are random (latency and counts do not depend on them) so the benchmark runs offline; the
exported graphs are the ones `lwpar export` writes (folded constants, fused sibling convolutions).
Latencies are also given as ratios to the first model, measured in the same run.

    .venv/bin/python benchmarks/backbones.py efficientnet_lite0:256x128 resnet50_half:256x192 \
        mobilenet_v2:256x192 vgg16:256x192 bn_inception:128x64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lwpar.evaluation.complexity import count_macs, count_params
from lwpar.deploy.export import export_onnx
from lwpar.models import build_model
from lwpar.core.machine import machine_info
from lwpar.deploy.benchmark import benchmark

LOCAL = {"copy_command": None, "command_prefix": None, "remote_dir": None, "providers": ["CPUExecutionProvider"],
         "runtime": "onnxruntime", "inference_precision": "f32"}


def model_size(text: str) -> tuple[str, list[int]]:
    backbone, _, size = text.partition(":")
    try:
        height, width = (int(v) for v in size.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BACKBONE:HEIGHTxWIDTH") from None
    return backbone, [height, width]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=model_size, help="BACKBONE:HEIGHTxWIDTH, the first is the reference")
    parser.add_argument("--attributes", type=int, default=35)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters-per-round", type=int, default=5)
    return parser


def main(args) -> dict:
    torch.manual_seed(0)
    counts, artifacts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, size in args.models:
            name = f"{backbone} {size[0]}x{size[1]}"
            model = build_model("alm", backbone, args.attributes).eval()
            counts[name] = {"params_m": round(count_params(model) / 1e6, 2),
                            "gmacs": round(count_macs(model, size) / 1e9, 3)}
            artifacts[name] = export_onnx(model, size, Path(tmp) / f"{len(artifacts):02d}.onnx")
        latency = benchmark(artifacts, LOCAL, {"threads": args.threads, "batch_sizes": args.batch, "warmup": 3,
                                               "iters_per_round": args.iters_per_round, "rounds": args.rounds})
    first = next(iter(latency))
    models = {}
    for name, result in latency.items():
        rows = []
        for row, reference in zip(result["latency"], latency[first]["latency"]):
            rows.append({"batch": row["batch"], "threads": row["threads"], "median_ms": round(row["median_ms"], 2),
                         "iqr_ms": round(row["iqr_ms"], 2), "ratio_to_first": round(row["median_ms"] / reference["median_ms"], 2)})
        models[name] = {**counts[name], "latency": rows}
    result = {"machine": machine_info(), "models": models}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
