"""Benchmark: the fused ALM head against the published computation and the backbone alone.

Measures, in one run on this machine:
- ONNX Runtime latency (batch 1, 1 thread; medians of interleaved rounds) of the ALM with the fused
  head, the same weights with the reference head, and the backbone alone (its three pyramid maps,
  globally pooled so that nothing is dead code);
- training throughput (images/s, forward + backward + Adam step) of fused and reference.

Targets: fused >= 20x faster than reference, within 2x of the backbone alone; training
throughput >= 3x the reference's.

With `--svd-heads F [F ...]`, also the fused ALM whose attention convs (every attribute's C -> C/16
and C/16 -> C) are replaced by their truncated SVD keeping fraction F of their parameters (the
decompose stage's `include_heads`): the heads' weights, read once per image, are what batch-1 time
is spent on.

    .venv/bin/python benchmarks/fused_head.py --height 128 --width 64
    .venv/bin/python benchmarks/fused_head.py --height 128 --width 64 --svd-heads 0.5 0.25
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def onnx_latency(models: dict, size, rounds: int, per_round: int) -> dict:
    import onnxruntime as ort

    from lwpar.deploy.export import export_onnx

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, size, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    times = {name: [] for name in sessions}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, {"images": x})
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(per_round if name != "reference" else 1):  # the reference is ~25x slower
                started = time.perf_counter()
                session.run(None, {"images": x})
                times[name].append(time.perf_counter() - started)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def train_throughput(model, size, batch: int, steps: int) -> float:
    from lwpar.training.losses import WeightedBCE

    model.train().to(memory_format=torch.channels_last)
    criterion = WeightedBCE(torch.full((model.finalfc.out_features,), 0.3))
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, model.finalfc.out_features) > 0.7).float()
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - started)


def with_svd_heads(model, fraction: float):
    """A copy whose attention convs are factorized by truncated SVD at a parameter fraction."""
    import copy

    from lwpar.compress.decompose.factorize import apply_plan, layer_info, select_layers
    from lwpar.compress.decompose.methods import rank_for_fraction

    model = copy.deepcopy(model)
    names = [n for n in select_layers(model, ["pointwise"], include_heads=True) if ".att_list." in n]
    plan = layer_info(model, names, {"kxk": "cp", "pointwise": "svd"}, (64, 32))
    for entry in plan:
        entry["rank"] = rank_for_fraction("svd", entry["shape"], fraction, 8)
    apply_plan(model, plan)
    return model.eval()


def main() -> None:
    from lwpar.deploy.export import PooledBackbone
    from lwpar.models import build_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--attributes", type=int, default=35)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--svd-heads", type=float, nargs="*", default=[],
                        help="also time the fused ALM with its attention convs SVD-factorized at these parameter fractions")
    parser.add_argument("--skip-training", action="store_true", help="latency only")
    args = parser.parse_args()
    size = (args.height, args.width)
    torch.manual_seed(0)
    fused = build_model("alm", args.backbone, args.attributes, pretrained=False).eval()
    reference = build_model("alm", args.backbone, args.attributes, pretrained=False, alm_head="reference").eval()
    reference.load_state_dict(fused.state_dict())
    models = {"backbone": PooledBackbone(fused.main_branch), "fused": fused, "reference": reference}
    models.update({f"fused_svd_heads_{f:g}": with_svd_heads(fused, f) for f in args.svd_heads})
    latency = onnx_latency(models, size, args.rounds, per_round=5)
    result = {
        "input": list(size), "backbone": args.backbone, "attributes": args.attributes,
        "onnx_ms_batch1_1thread": latency,
        "reference_over_fused": latency["reference"] / latency["fused"],
        "fused_over_backbone": latency["fused"] / latency["backbone"],
        **{f"{name}_over_backbone": latency[name] / latency["backbone"] for name in latency if "svd_heads" in name},
        "torch_threads": torch.get_num_threads(),
    }
    if not args.skip_training:
        fused_train = train_throughput(fused, size, args.batch, args.steps)
        reference_train = train_throughput(reference, size, args.batch, max(2, args.steps // 2))
        result.update({"train_images_per_s": {"fused": fused_train, "reference": reference_train},
                       "train_fused_over_reference": fused_train / reference_train})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
