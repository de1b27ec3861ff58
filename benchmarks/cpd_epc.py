"""Benchmark: CPD-EPC on a 256 x 256 x 3 x 3 conv kernel at rank 64.

CP-ALS first (LWALM layout: the kernel as a C_in x C_out x 9 tensor), then Error Preserving
Correction from it, twice with the same seed. Prints one JSON line: both relative errors and their
ratio (target <= 1.001), ||lambda||^2 and sensitivity before/after with reduction factors, seconds
of each step, and whether the two seeded runs agree bit for bit.

    .venv/bin/python benchmarks/cpd_epc.py --objective norm
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--objective", choices=["norm", "sensitivity"], default="norm")
    parser.add_argument("--als-iter", type=int, default=100)
    parser.add_argument("--epc-iter", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lwpar.compress.decompose import cp_als, cpd_epc, relative_error, sensitivity, sum_of_squared_norms

    torch.manual_seed(args.seed)
    conv = torch.nn.Conv2d(args.channels, args.channels, 3)   # PyTorch's default (Kaiming-uniform) init
    weight = conv.weight.detach().double().numpy()
    cout, cin, kh, kw = weight.shape
    tensor = weight.transpose(1, 0, 2, 3).reshape(cin, cout, kh * kw)
    started = time.perf_counter()
    als = cp_als(tensor, args.rank, seed=args.seed, n_iter_max=args.als_iter)
    als_seconds = time.perf_counter() - started
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        epc = cpd_epc(tensor, args.rank, seed=args.seed, init=als, objective=args.objective, n_iter_max=args.epc_iter)
        runs.append((epc, time.perf_counter() - started))
    (epc, epc_seconds), (again, _) = runs
    same = all(np.array_equal(a, b) for a, b in zip(epc.factors, again.factors)) and np.array_equal(epc.weights, again.weights)
    before, after = relative_error(tensor, als), relative_error(tensor, epc)
    print(json.dumps({
        "shape": [cout, cin, kh, kw], "rank": args.rank, "objective": args.objective,
        "als_relative_error": round(before, 6), "epc_relative_error": round(after, 6),
        "error_ratio": round(after / before, 6),
        "lambda_sq": [sum_of_squared_norms(als), sum_of_squared_norms(epc)],
        "lambda_sq_reduction": round(sum_of_squared_norms(als) / sum_of_squared_norms(epc), 2),
        "sensitivity": [sensitivity(als), sensitivity(epc)],
        "sensitivity_reduction": round(sensitivity(als) / sensitivity(epc), 2),
        "als_seconds": round(als_seconds, 1), "epc_seconds": round(epc_seconds, 1), "same_seed_same_result": same,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
