"""Benchmark: one training step of ALM (forward, weighted BCE over the deep-supervision outputs,
backward, Adam) with the backbone's first stages frozen (`train.frozen_stages`) or not, and the
frozen stages' BatchNorms folded into their convolutions as training does, or not (`--fold`), in
float32 or under bfloat16 autocast as `runtime.amp: bf16` trains (`--precision`).

The models are timed interleaved, round by round, on one fixed random batch (the data loader is
left out: it costs the same for every setting); the first round is warm-up, the rest give a median
per setting and its ratio to the first setting.

    .venv/bin/python benchmarks/train_step.py --height 192 --width 96 --frozen 0 3 4
    .venv/bin/python benchmarks/train_step.py --height 256 --width 128 --frozen 4 --fold off on
    .venv/bin/python benchmarks/train_step.py --backbone resnet50_half --height 256 --width 192 --frozen 3 \
        --precision float32 bfloat16
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from contextlib import ExitStack

import torch

from lwpar.training.losses import WeightedBCE
from lwpar.models import build_model
from lwpar.models.backbones import folded_frozen_batchnorm, freeze_stages
from lwpar.core.machine import cpu_flags


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--attributes", type=int, default=35)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frozen", type=int, nargs="+", default=[0, 3], help="stage counts to compare")
    parser.add_argument("--fold", nargs="+", choices=["on", "off"], default=["on"],
                        help="frozen BatchNorms folded into their convolutions (as `lwpar train` runs), or not")
    parser.add_argument("--precision", nargs="+", choices=["float32", "bfloat16"], default=["float32"],
                        help="autocast dtype of the step (bfloat16: runtime.amp bf16)")
    parser.add_argument("--rounds", type=int, default=6)
    return parser


def main(args) -> dict:
    torch.manual_seed(0)
    setups, folding = {}, ExitStack()
    for count, fold, precision in itertools.product(args.frozen, args.fold, args.precision):
        # pretrained=False: the weights do not change the time, and the benchmark must run offline
        model = build_model("alm", args.backbone, args.attributes).to(memory_format=torch.channels_last)
        frozen = freeze_stages(model.main_branch, count)
        if fold == "on":
            folding.enter_context(folded_frozen_batchnorm(model.main_branch, frozen))
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4)
        name = " ".join([f"{count}", *([f"fold {fold}"] if len(args.fold) > 1 else []),
                         *([precision] if len(args.precision) > 1 else [])])
        setups[name] = (model, frozen, optimizer, getattr(torch, precision))
    criterion = WeightedBCE(torch.full((args.attributes,), 0.3), "rethinking")
    images = torch.randn(args.batch, 3, args.height, args.width).contiguous(memory_format=torch.channels_last)
    targets = (torch.rand(args.batch, args.attributes) < 0.3).float()
    with folding:
        seconds = _time_rounds(setups, criterion, images, targets, args.rounds)
    medians = {name: statistics.median(times[1:]) for name, times in seconds.items()}
    first = medians[next(iter(setups))]
    result = {"backbone": args.backbone, "input": [args.height, args.width], "batch": args.batch,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"}),
              "frozen_stages": {name: {"ms_per_step": round(m * 1000, 1), "images_per_s": round(args.batch / m, 1),
                                       "speedup": round(first / m, 2)} for name, m in medians.items()}}
    print(json.dumps(result, indent=2))
    return result


def _time_rounds(setups: dict, criterion, images, targets, rounds: int) -> dict[str, list[float]]:
    """Seconds per training step of every setup, interleaved round by round."""
    seconds = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (model, frozen, optimizer, dtype) in setups.items():
            model.train()
            for module in frozen:
                module.eval()
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds[name].append(time.perf_counter() - started)
    return seconds


if __name__ == "__main__":
    main(get_args_parser().parse_args())
