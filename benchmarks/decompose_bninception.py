"""Benchmark: decompose every eligible layer of ALM-BN-Inception with CPD-EPC (k x k) + SVD (1 x 1).

The check: with random weights, at a fixed ratio, the whole model decomposes in under 15
minutes on 2 cores, and the decomposed model's outputs stay finite and it exports to ONNX.
Prints one JSON line: layers by method, seconds, MACs and parameters before/after, the ONNX
check, and the largest relative reconstruction error.

    .venv/bin/python benchmarks/decompose_bninception.py --fraction 0.5 --height 128 --width 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.5, help="parameters each layer keeps (ratio policy)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--attributes", type=int, default=35)
    parser.add_argument("--include-heads", action="store_true", help="also the attribute modules' 1x1 layers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lwpar.evaluation.complexity import count_macs, count_params
    from lwpar.compress.decompose.factorize import apply_plan, plan_ranks, select_layers
    from lwpar.deploy.export import export_onnx
    from lwpar.models import build_model

    torch.manual_seed(args.seed)
    size = (args.height, args.width)
    model = build_model("alm", "bn_inception", args.attributes, pretrained=False).eval()
    macs_before, params_before = count_macs(model, size), count_params(model)
    names = select_layers(model, ["kxk", "pointwise"], include_first=True, include_heads=args.include_heads)
    methods = {"kxk": "cp", "pointwise": "svd"}
    chosen = plan_ranks(model, names, methods, size, {"policy": "ratio", "fraction": args.fraction, "multiple": 8})
    epc = {"enabled": True, "objective": "norm", "iterations": 100, "als_iter": 100}  # params.yaml defaults
    started = time.perf_counter()
    rows = apply_plan(model, chosen, seed=args.seed, epc=epc)
    seconds = time.perf_counter() - started
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        finite = bool(torch.isfinite(model(x)).all())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, size, path)
        import onnx
        onnx.checker.check_model(str(path))
        exported_mb = path.stat().st_size / 2 ** 20
    errors = [r["relative_error"] for r in rows]
    print(json.dumps({
        "layers": dict(Counter(r["method"] for r in rows)), "seconds": round(seconds, 1),
        "cp_seconds": round(sum(r.get("seconds", 0) for r in rows if r["method"] == "cp"), 1),
        "macs_before": macs_before, "macs_after": count_macs(model, size),
        "params_before": params_before, "params_after": count_params(model),
        "outputs_finite": finite, "onnx_checked": True, "onnx_mb": round(exported_mb, 2),
        "max_relative_error": round(float(np.max(errors)), 4) if errors else None,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
