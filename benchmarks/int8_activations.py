"""Benchmark: FP32 against static INT8 with int8 and with uint8 activations, on one ALM.

Exports the model, quantizes it twice with lwpar's quantizer (per-channel int8 weights, calibration
on seeded random batches: this measures speed, not accuracy), then reports what ONNX Runtime really
executes (convs left in FP32 versus fused QLinearConv, from the optimized graph) and the median
latency of each, measured interleaved (batch 1, 1 thread). Prints one JSON line.

    .venv/bin/python benchmarks/int8_activations.py --backbone efficientnet_lite0
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--attributes", type=int, default=35)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort

    from lwpar.config import load_params
    from lwpar.deploy.export import export_onnx
    from lwpar.models import build_model
    from lwpar.deploy.quantize import quantize_model

    defaults = load_params(Path(__file__).resolve().parents[1] / "params.yaml")["quantize"]
    model = build_model("alm", args.backbone, args.attributes, pretrained=args.pretrained).eval()
    x = torch.rand(1, 3, args.height, args.width)
    rng = np.random.default_rng(0)
    result = {"backbone": args.backbone, "input": [args.height, args.width]}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": Path(tmp) / "fp32.onnx"}
        export_onnx(model, (args.height, args.width), paths["fp32"])  # the graph the pipeline deploys
        for activations in ["int8", "uint8"]:
            cfg = {**defaults, "mode": "static", "calibration_images": 64, "activations": activations}
            batches = [rng.random((16, 3, args.height, args.width), dtype=np.float32) for _ in range(4)]
            paths[activations] = Path(tmp) / f"{activations}.onnx"
            quantize_model(paths["fp32"], paths[activations], cfg, iter(batches))
        sessions = {}
        for name, path in paths.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.optimized_model_filepath = str(Path(tmp) / f"{name}.optimized.onnx")
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
            result[f"{name}_executed_ops"] = {op: n for op, n in sorted(ops.items()) if "Conv" in op or "Quant" in op}
    feed = {"images": x.numpy()}
    for session in sessions.values():
        for _ in range(args.iters):
            session.run(None, feed)
    times = collections.defaultdict(list)
    for _ in range(args.rounds):  # interleaved: each variant in turn, every round
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                session.run(None, feed)
            times[name].append((time.perf_counter() - start) / args.iters * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    result["median_ms"] = {name: round(m, 3) for name, m in medians.items()}
    result["speedup_vs_fp32"] = {name: round(medians["fp32"] / m, 3) for name, m in medians.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
