"""Score the start model with one layer at a time factorized (measured rank policies).

For a variant whose rank policy is measured (`search`, the LWALM binary search; `greedy`, the
AIMET-style budget allocation; `latency`, allocation by measured latency): the validation score of
the start model with one layer at a time factorized at a given rank, BatchNorm re-estimated on
training batches. Never touches the test split. Writes the sensitivity cache (JSON): the scores,
keyed by layer, method and rank, and the settings they were measured under; the decompose stage
plans from it, for this variant or any variant that names it in `rank.search.sensitivity_from`.

Every probe is also written to `<out>.partial` as it is measured: the same command run again after
an interruption measures only the probes that file lacks (a file from other settings is discarded).
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir, variant, start_model

FLAGS = [
    start_model(),
    dataset_dir("train and val splits"),
    variant(),
    flag("--out", "sensitivity cache (JSON) to write", "output:cache", type=Path, required=True),
    flag("--calibration", "the start model's calibration statistics (fit: covariance)", "input:calibration", type=Path),
]


def run(args, params) -> None:
    import time

    import torch

    from lwpar.compress.recipes import MEASURED_POLICIES, RANK_POLICIES, is_measured
    from lwpar.compress.ranks.sensitivity import cache_settings, measure_sensitivity
    from lwpar.compress.steps import calibrated, start
    from lwpar.core.errors import LwparError
    from lwpar.core.runtime import configure, run_precision, seed_everything
    from lwpar.data.loader import Prepared
    from lwpar.evaluation.complexity import count_macs
    from lwpar.training.loop import Run

    recipe = params["variants"].get(args.variant, {})
    if not is_measured(recipe):
        raise LwparError(f"--variant {args.variant!r}: not a decomposition variant with a measured rank policy "
                         f"({' or '.join(MEASURED_POLICIES)})")
    recipe = recipe["decompose"]
    device = configure(params)
    seed_everything(params["seed"])
    begun = start(args.model, params, args.variant, "decompose")
    model, size = begun.model.to(device, memory_format=torch.channels_last), begun.input_size
    precision = run_precision(model, params["runtime"]["amp"], size, device)
    statistics = calibrated(recipe, args, params)
    settings = {**cache_settings(params, recipe, args.model, statistics and args.calibration), "variant": args.variant,
                **({"precision": str(precision)} if precision != torch.float32 else {})}
    started = time.time()
    probe, done = measure_sensitivity(
        model, args.model, Prepared(args.dataset_dir), recipe, begun.names, size, count_macs(model, size),
        Run(device, precision, seed=params["seed"], eval_batch=params["evaluate"]["batch_size"],
            threshold=params["evaluate"]["threshold"]),
        params["train"]["batch_size"], settings, args.out, statistics)
    resumed = f" ({done['resumed']} more resumed)" if done["resumed"] else ""
    print(f"{args.variant}: {probe.measured} probes in {time.time() - started:.0f} s{resumed}; "
          + ("the ranks are chosen with the latency table" if RANK_POLICIES[recipe["rank"]["policy"]].timed
             else f"{len(done['chosen'])} of {len(begun.names)} layers get a rank"))
