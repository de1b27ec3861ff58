"""Factorize a trained model's layers as a variant's recipe says (CP, CPD-EPC, Tucker-2, SVD).

Writes the decomposed model (architecture + weights, loadable without decomposing again) and a
per-layer table: layer, method, shape, rank, parameters and MACs before and after, relative
reconstruction error, ||lambda||^2 and sensitivity before and after EPC, seconds taken.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--variant", required=True, help="variant name in params variants")
    parser.add_argument("--out", required=True, type=Path, help="decomposed model file to write")
    parser.add_argument("--table", required=True, type=Path, help="per-layer table (CSV) to write")
    parser.add_argument("--sensitivity", type=Path, help="sensitivity cache (measured rank policies: search, greedy, latency)")
    parser.add_argument("--latency-table", type=Path, help="per-layer latency table (rank policy latency)")


def run(args, params) -> None:
    import pandas as pd
    import torch
    from tqdm import tqdm

    from lwpar import LwparError
    from lwpar.complexity import count_macs, count_params
    from lwpar.config import MEASURED_POLICIES
    from lwpar.decompose.factorize import (apply_plan, factorized_layers, factorized_macs, original_macs,
                                           select_layers)
    from lwpar.decompose.search import SensitivityProbe, cache_settings, load_cache, plan
    from lwpar.io import read_json, sha256_file, write_csv
    from lwpar.runtime import lineage, save_model
    from lwpar.structure import check_start_model, load_model

    if "decompose" not in params["variants"].get(args.variant, {}):
        raise LwparError(f"--variant {args.variant!r}: not a decomposition variant in params variants")
    recipe = params["variants"][args.variant]["decompose"]
    model, blob = load_model(args.model)
    earlier = check_start_model(args.model, blob, args.variant, params["variants"][args.variant]["base"])
    model.eval()
    size = blob["model_cfg"]["input_size"]
    torch.manual_seed(params["seed"])
    macs_before, params_before = count_macs(model, size), count_params(model)
    names = select_layers(model, recipe["kinds"], recipe["include_first"], recipe["include_heads"],
                          factorized=factorized_layers(earlier))
    if not names:
        raise LwparError(f"variant {args.variant}: no layer of kinds {recipe['kinds']} to factorize in this model")
    probe = None
    if recipe["rank"]["policy"] in MEASURED_POLICIES:
        if args.sensitivity is None:
            raise LwparError(f"variant {args.variant}: rank policy {recipe['rank']['policy']!r} needs --sensitivity")
        # the baseline the cache was measured on, and the settings, must be this plan's
        probe = SensitivityProbe(model, cache=load_cache(args.sensitivity, cache_settings(params, recipe, args.model)))
    latency_table = None
    if recipe["rank"]["policy"] == "latency":
        if args.latency_table is None:
            raise LwparError(f"variant {args.variant}: rank policy 'latency' needs --latency-table")
        latency_table = read_json(args.latency_table)
        if latency_table.get("model_sha256") != sha256_file(args.model):
            raise LwparError(f"{args.latency_table}: measured on another start model than {args.model}: "
                             f"run `lwpar latency` again")
    chosen = plan(model, names, recipe["methods"], size, recipe["rank"], macs_before, probe, latency_table)
    if not chosen:
        raise LwparError(f"variant {args.variant}: the rank policy leaves every layer as it is")
    bar = tqdm(total=len(chosen), desc=f"decompose {args.variant}", disable=None)
    rows = apply_plan(model, chosen, seed=params["seed"], epc=recipe.get("epc"), progress=lambda *_: bar.update())
    bar.close()
    for row in rows:
        if latency_table is not None:  # where the plan's prediction holds, for the report to check it there
            row.update(plan_target=latency_table["target"], plan_batch=latency_table["batch"],
                       plan_threads=latency_table["threads"], plan_cpu=latency_table["machine"].get("cpu_model"))
        shape = row.pop("shape")
        row["shape"] = f"{shape['out']}x{shape['in']}x{shape['kh']}x{shape['kw']}"
        row["macs_before"] = original_macs(shape, row["io"])
        row["macs_after"] = factorized_macs(row["method"], shape, row["rank"], row.pop("io"))
    macs_after, params_after = count_macs(model, size), count_params(model)
    structure = [*earlier, {"op": "decompose", "variant": args.variant,
                  "plan": [{"layer": r["layer"], "method": r["method"], "rank": r["rank"]} for r in rows]}]
    table = pd.DataFrame(rows)
    write_csv(args.table, table)
    save_model(args.out, model, blob["model_cfg"], blob["attributes"], structure=structure,
               macs={"before": macs_before, "after": macs_after}, params={"before": params_before, "after": params_after},
               lineage=lineage(blob, stage="decompose", variant=args.variant, recipe=recipe))
    if latency_table is not None:
        print(f"{args.variant}: planned {rows[0]['plan_model_ms']:.2f} ms -> {rows[0]['plan_predicted_ms']:.2f} ms on "
              f"{latency_table['target']} ({rows[0]['plan_model_ms'] / rows[0]['plan_predicted_ms']:.2f}x, asked "
              f"{recipe['rank']['speedup']:g}x)")
    print(f"{args.variant}: {len(rows)} layers factorized; MACs {macs_before / 1e6:.1f} M -> {macs_after / 1e6:.1f} M "
          f"({macs_after / macs_before:.3f}); parameters {params_before / 1e6:.2f} M -> {params_after / 1e6:.2f} M")
