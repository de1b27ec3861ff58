"""Measure the per-layer latency table for variants with the `latency` rank policy (the table of
their sensitivity source, which may be a `greedy` variant): every layer it may factorize, alone, and its replacement at each candidate rank (the parameter fractions of
`rank.search.fractions`), and the whole start model, timed with ONNX Runtime on the policy's
target at the profile's first batch size and thread count, in interleaved, shuffled rounds; then
the calibration models (the whole model with sets of faster replacements in place) beside the whole
model, which map summed per-layer savings to measured ones.

Writes the table (JSON): per candidate the median and quartiles in ms, with what it was measured
under (start model sha256, target and its commands, batch, threads, ONNX Runtime, the CPU). The
decompose stage allocates ranks from it and the sensitivity cache.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="the variant's start model.pt")
    parser.add_argument("--variant", required=True, help="variant name in params variants (rank policy: latency)")
    parser.add_argument("--target", required=True, help="target name in params profile.targets")
    parser.add_argument("--out", required=True, type=Path, help="latency table (JSON) to write")


def run(args, params) -> None:
    import time

    import numpy as np

    from lwpar import LwparError
    from lwpar.decompose.factorize import factorized_layers, layer_info, select_layers
    from lwpar.decompose.latency import (TABLE_FORMAT, WHOLE_MODEL, Candidate, calibration_plans, candidates,
                                         plan_settings, structural_model, table_entries, time_on_target)
    from lwpar.decompose.search import curve_ranks
    from lwpar.io import sha256_file, write_json
    from lwpar.profile import machine_info
    from lwpar.structure import check_start_model, load_model

    recipe = params["variants"].get(args.variant, {}).get("decompose")
    if recipe is None or recipe["rank"]["policy"] not in ("greedy", "latency"):
        raise LwparError(f"--variant {args.variant!r}: not a decomposition variant whose rank policy scores "
                         f"candidate ranks (greedy or latency)")
    if args.target not in params["profile"]["targets"]:
        raise LwparError(f"--target {args.target!r}: not in params profile.targets "
                         f"({', '.join(params['profile']['targets'])})")
    target, profile = params["profile"]["targets"][args.target], params["profile"]
    batch, threads = plan_settings(profile)
    model, blob = load_model(args.model)
    earlier = check_start_model(args.model, blob, args.variant, params["variants"][args.variant]["base"])
    model.eval()
    size = blob["model_cfg"]["input_size"]
    names = select_layers(model, recipe["kinds"], recipe["include_first"], recipe["include_heads"],
                          factorized=factorized_layers(earlier))
    if not names:
        raise LwparError(f"variant {args.variant}: no layer of kinds {recipe['kinds']} to factorize in this model")
    info = layer_info(model, names, recipe["methods"], size)
    ranks = {e["layer"]: curve_ranks(e, recipe["rank"]["search"]["fractions"], recipe["rank"]["multiple"]) for e in info}
    table = candidates(model, info, ranks, batch)
    whole_key = Candidate(WHOLE_MODEL, None, None, (batch, 3, *size))
    table[whole_key] = model
    started = time.time()

    def timed_on_target(models):
        return time_on_target(models, target, batch, threads, profile, params["seed"])

    timed = timed_on_target(table)
    # second pass: the whole model with sets of layers replaced, beside the whole model as it is
    plans = calibration_plans(info, ranks, timed)
    keys = [Candidate(p["name"], None, None, whole_key.input_shape) for p in plans]
    models = {whole_key: model, **{key: structural_model(model, info, p["ranks"]) for key, p in zip(keys, plans)}}
    calibrated = timed_on_target(models)
    whole_again = calibrated[whole_key]["median_ms"]
    calibration = [{"name": p["name"], "layers": len(p["ranks"]), "raw_saving_ms": p["raw_saving_ms"],
                    **calibrated[key], "saving_ms": whole_again - calibrated[key]["median_ms"]}
                   for key, p in zip(keys, plans)]
    spread = [(t["q3_ms"] - t["q1_ms"]) / t["median_ms"] for t in timed.values() if t["median_ms"] > 0]
    whole = timed[whole_key]
    write_json(args.out, {
        "format": TABLE_FORMAT, "variant": args.variant, "model_sha256": sha256_file(args.model),
        "target": args.target, "target_settings": target, "batch": batch, "threads": threads,
        "rounds": profile["rounds"], "iters_per_round": profile["iters_per_round"], "machine": machine_info(),
        "seconds": round(time.time() - started, 1), "relative_iqr_median": float(np.median(spread)),
        "candidates": table_entries(timed), "calibration_model_ms": whole_again, "calibration": calibration})
    ratios = ", ".join(f"{c['saving_ms'] / c['raw_saving_ms']:.2f}" for c in calibration if c["raw_saving_ms"] > 0)
    print(f"{args.variant}: {len(timed)} candidates and {len(calibration)} calibration models timed on {args.target} "
          f"(batch {batch}, {threads} thread{'s' if threads > 1 else ''}) in {time.time() - started:.0f} s; whole model {whole['median_ms']:.2f} ms; "
          f"median relative IQR {np.median(spread):.3f}; measured over summed savings {ratios or '-'}")
