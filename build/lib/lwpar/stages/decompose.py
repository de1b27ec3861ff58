"""Factorize the start model's layers as the variant's recipe says (CP, CPD-EPC, Tucker-2, SVD).

Writes the decomposed model (architecture + weights, loadable without decomposing again) and a
per-layer table: layer, method, shape, rank, parameters and MACs before and after, relative
reconstruction error, ||lambda||^2 and sensitivity before and after EPC, seconds taken; with a
calibrated fit, the output error on held-out calibration images (and the sequential fit's capture time).
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, variant, start_model

FLAGS = [
    start_model(),
    variant(),
    flag("--out", "decomposed model file to write", "output:model", type=Path, required=True),
    flag("--table", "per-layer table (CSV) to write", "output:table", type=Path, required=True),
    flag("--sensitivity", "sensitivity cache (measured rank policies: search, greedy, latency)", "input:sensitivity",
         type=Path),
    flag("--latency-table", "per-layer latency table (rank policy latency)", "input:latency_table", type=Path),
    flag("--calibration", "the start model's calibration statistics (fit: covariance or sequential)",
         "input:calibration", type=Path),
    flag("--dataset-dir", "prepared dataset whose calibration images the sequential fit runs (fit: sequential)",
         "input:data", type=Path),
]


def run(args, params) -> None:
    import pandas as pd

    from lwpar.compress import steps
    from lwpar.compress.ranks.sensitivity import SensitivityProbe, cache_settings, load_cache
    from lwpar.compress.recipes import RANK_POLICIES
    from lwpar.core.errors import LwparError
    from lwpar.core.io import read_json, sha256_file, write_csv
    from lwpar.core.modelfile import lineage, save_model

    begun = steps.start(args.model, params, args.variant, "decompose")
    recipe = params["variants"][args.variant]["decompose"]
    policy = RANK_POLICIES[recipe["rank"]["policy"]]
    probe = latency_table = None
    if policy.measured:
        if args.sensitivity is None:
            raise LwparError(f"variant {args.variant}: rank policy {recipe['rank']['policy']!r} needs --sensitivity")
        # the baseline the cache was measured on, and the settings, must be this plan's
        settings = cache_settings(params, recipe, args.model, args.calibration if recipe["fit"] != "weights" else None)
        probe = SensitivityProbe(begun.model, cache=load_cache(args.sensitivity, settings))
    if policy.timed:
        if args.latency_table is None:
            raise LwparError(f"variant {args.variant}: rank policy {recipe['rank']['policy']!r} needs --latency-table")
        latency_table = read_json(args.latency_table)
        if latency_table.get("model_sha256") != sha256_file(args.model):
            raise LwparError(f"{args.latency_table}: measured on another start model than {args.model}: "
                             f"run `lwpar latency` again")
    statistics = steps.calibrated(recipe, args, params)
    done = steps.decompose(begun, args.variant, recipe, params["seed"], probe, latency_table, statistics,
                           steps.sequential(recipe, args, params, begun))
    write_csv(args.table, pd.DataFrame(done.rows))
    save_model(args.out, done.model, begun.blob["model_cfg"], begun.blob["attributes"], structure=done.structure,
               macs=done.macs, params=done.params,
               lineage=lineage(begun.blob, stage="decompose", variant=args.variant, recipe=recipe))
    rows, macs, weights = done.rows, done.macs, done.params
    if latency_table is not None:
        print(f"{args.variant}: planned {rows[0]['plan_model_ms']:.2f} ms -> {rows[0]['plan_predicted_ms']:.2f} ms on "
              f"{latency_table['target']} ({rows[0]['plan_model_ms'] / rows[0]['plan_predicted_ms']:.2f}x, asked "
              f"{recipe['rank']['speedup']:g}x)")
    print(f"{args.variant}: {len(rows)} layers factorized; MACs {macs['before'] / 1e6:.1f} M -> {macs['after'] / 1e6:.1f} M "
          f"({macs['after'] / macs['before']:.3f}); parameters {weights['before'] / 1e6:.2f} M -> "
          f"{weights['after'] / 1e6:.2f} M")
