"""Comparison tables and plots from the results tree: every variant's evaluation and profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["dataset", "model", "variant", "method", "target", "batch", "threads", "mA", "mA_tuned", "accuracy", "precision", "recall",
           "f1", "ece", "mce", "params", "macs", "size_mb", "latency_ms_median", "latency_ms_p90", "speedup", "speedup_q1", "speedup_q3", "mac_reduction",
           "speedup_per_mac_reduction", "delta_mA", "control", "delta_control_mA"]


def collect(results: Path, params: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per dataset, model, variant, target, batch and threads; per-attribute mA deltas.
    With `params`, each compressed variant is also read against its matched control."""
    rows, attributes = [], []
    for dataset, model, run, profile in _profiles(results):
        base_attr = _per_attribute(run / "baseline")
        for variant, result in profile["variants"].items():
            metrics = _metrics(run / variant)
            for row in result["latency"]:
                rows.append({"dataset": dataset, "model": model, "variant": variant, "target": profile["target"],
                             "batch": row["batch"], "threads": row["threads"], **metrics,
                             "params": result.get("params"), "macs": result.get("macs"),
                             "size_mb": result["size_mb"], "latency_ms_median": row["median_ms"],
                             "latency_ms_p90": row["p90_ms"], "speedup": row["speedup"],
                             # quartiles of the per-round speed-ups (absent from profiles made before them)
                             "speedup_q1": row.get("speedup_q1", np.nan), "speedup_q3": row.get("speedup_q3", np.nan)})
            per = _per_attribute(run / variant)
            if per is not None and base_attr is not None and variant != "baseline":
                delta = per.set_index("attribute")["mA"] - base_attr.set_index("attribute")["mA"]
                attributes += [{"dataset": dataset, "model": model, "variant": variant, "attribute": a,
                                "delta_mA": d} for a, d in delta.items()]
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("mac_reduction", "speedup_per_mac_reduction",
                                                                         "delta_mA", "control", "delta_control_mA",
                                                                         "method")])
    return against_control(against_baseline(table), params), pd.DataFrame(attributes)


def pruning_plans(results: Path) -> pd.DataFrame:
    """Every latency-budget pruning's plan (its prune.json): the plan_* figures the decompose stage's
    rows carry, the pruned model timed beside the unpruned one while its channel ratio was searched."""
    rows = []
    for dataset, model, run, _ in _runs(results):
        for path in sorted(run.glob("*/prune.json")):
            summary = json.loads(path.read_text())
            if "plan_predicted_ms" in summary:
                rows.append({"dataset": dataset, "model": model, "variant": path.parent.name,
                             **{k: v for k, v in summary.items() if k.startswith("plan_")}})
    return pd.DataFrame(rows)


def latency_plans(table: pd.DataFrame, layers: pd.DataFrame, params: dict | None = None,
                  machines: dict | None = None, pruned: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every latency-planned variant (rank policy `latency`, pruning budget `latency`): the speed-up
    asked for, the one its plan predicted (decompositions: from the per-layer latency table,
    uncalibrated and calibrated, the decompose stage's rows in `decomposition_layers`; pruning: timed on
    the pruned model while searching its channel ratio, `pruning_plans`), and the one the profile measured
    on the exported model, on the plan's target, batch and threads; plan_error is measured over
    predicted, minus one. Fine-tuning and export do not change the architecture, so the error is the
    plan's, provided it and the profile were measured on the same CPU (`machines`: `profile_machines`;
    `table_cpu` names the plan's when they differ, as when a long run resumes on another machine)."""
    rows = []
    plans = [layers[layers.plan_predicted_ms.notna()]] if "plan_predicted_ms" in layers else []
    plans += [pruned] if pruned is not None and len(pruned) else []
    if not plans:
        return pd.DataFrame(rows)
    for (dataset, model, variant), group in pd.concat(plans).groupby(["dataset", "model", "variant"], sort=True):
        first = group.iloc[0]
        match = table[(table.dataset == dataset) & (table.model == model) & (table.variant == variant)
                      & (table.target == first.plan_target) & (table.batch == first.plan_batch)
                      & (table.threads == first.plan_threads)]
        planned = float(first.plan_model_ms / first.plan_predicted_ms)
        uncalibrated = float(first.plan_model_ms / first.plan_uncalibrated_ms) \
            if pd.notna(first.get("plan_uncalibrated_ms", np.nan)) else np.nan
        measured = float(match.speedup.iloc[0]) if len(match) else np.nan
        recipe = (params or {}).get("variants", {}).get(variant, {})
        asked = (recipe.get("decompose", {}).get("rank", {}) or recipe.get("prune", {})).get("speedup", np.nan)
        table_cpu = first.get("plan_cpu")
        profile_cpu = (machines or {}).get((dataset, model, first.plan_target))
        peers = table[(table.dataset == dataset) & (table.model == model) & (table.target == first.plan_target)
                      & (table.batch == first.plan_batch) & (table.threads == first.plan_threads)
                      & (table.method == mac_planned_label(params, variant))] if params else table.iloc[:0]
        rows.append({"dataset": dataset, "model": model, "variant": variant, "target": first.plan_target,
                     "table_cpu": table_cpu if isinstance(table_cpu, str) and profile_cpu and table_cpu != profile_cpu else "",
                     "batch": int(first.plan_batch), "threads": int(first.plan_threads),
                     "speedup_requested": asked,
                     "speedup_uncalibrated": uncalibrated, "speedup_planned": planned, "speedup_measured": measured,
                     "plan_error": measured / planned - 1,
                     "mA": match.mA.iloc[0] if len(match) else np.nan,
                     "delta_control_mA": match.delta_control_mA.iloc[0] if len(match) else np.nan,
                     **at_equal_speed(peers, measured)})
    return pd.DataFrame(rows)


def at_equal_speed(peers: pd.DataFrame, speedup: float) -> dict:
    """The MAC-planned variants of a method read at a latency-planned variant's measured speed-up: the
    two whose measured speed-ups bracket it (`mac_planned`) and their mA against the matched control,
    interpolated linearly in speed-up (`mac_planned_delta_control_mA`). Outside their range nothing is
    interpolated: the nearest is named, and the delta left blank."""
    peers = peers.dropna(subset=["speedup", "delta_control_mA"]).sort_values("speedup")
    if peers.empty or np.isnan(speedup):
        return {"mac_planned": "", "mac_planned_delta_control_mA": np.nan}
    faster, slower = peers[peers.speedup >= speedup], peers[peers.speedup <= speedup]
    if faster.empty or slower.empty:
        nearest = slower.iloc[-1] if faster.empty else faster.iloc[0]
        return {"mac_planned": f"none as {'fast' if faster.empty else 'slow'}; nearest {nearest.variant} "
                               f"({nearest.speedup:.2f}x)", "mac_planned_delta_control_mA": np.nan}
    low, high = slower.iloc[-1], faster.iloc[0]
    weight = 0.0 if high.speedup == low.speedup else (speedup - low.speedup) / (high.speedup - low.speedup)
    return {"mac_planned": f"{low.variant} ({low.speedup:.2f}x) - {high.variant} ({high.speedup:.2f}x)",
            "mac_planned_delta_control_mA": low.delta_control_mA + weight * (high.delta_control_mA - low.delta_control_mA)}


def against_baseline(table: pd.DataFrame) -> pd.DataFrame:
    """Adds what each row gains or loses against `baseline` on the same dataset, model, target, batch and
    threads: the MAC reduction, the measured speed-up over it and the mA delta."""
    table = table.copy()
    if len(table):
        base = table[table.variant == "baseline"].set_index(["dataset", "model", "target", "batch", "threads"])
        keys = list(zip(table.dataset, table.model, table.target, table.batch, table.threads))
        base_macs = [base["macs"].get(k, np.nan) for k in keys]
        # 1.0: the variant is as much faster as its MACs promise; below 1, MACs overstate the speed-up
        table["mac_reduction"] = np.asarray(base_macs, dtype=float) / table["macs"].astype(float)
        table["speedup_per_mac_reduction"] = table["speedup"] / table["mac_reduction"]
        table["delta_mA"] = [m - base["mA"].get(k, np.nan) for m, k in zip(table.mA, keys)]
    return table.reindex(columns=COLUMNS)


def against_control(table: pd.DataFrame, params: dict | None) -> pd.DataFrame:
    """Adds each compressed variant's matched control (the uncompressed model given the same
    fine-tuning schedule, `config.matched_control`) and its mA delta against it: what the compression
    costs once the extra training is paid for. An INT8 variant is read against the FP32 control."""
    from lwpar.config import matched_control

    table = table.copy()
    controls = [matched_control(params, v) if params and (v.removesuffix("+int8") in params["variants"]) else None
                for v in table.variant]
    table["control"] = controls
    table["method"] = [method_label(params, v) for v in table.variant]
    scores = table.set_index(["dataset", "model", "variant", "target", "batch", "threads"])["mA"]
    table["delta_control_mA"] = [
        m - scores.get((d, mo, c, ta, b, th), np.nan) if c else np.nan
        for m, d, mo, c, ta, b, th in zip(table.mA, table.dataset, table.model, controls, table.target, table.batch,
                                           table.threads)]
    return table.reindex(columns=COLUMNS)


def _metrics(folder: Path) -> dict:
    path = folder / "eval" / "metrics.json"
    if not path.exists():  # e.g. baseline_reference: the baseline's weights, not scored again
        return {k: np.nan for k in ("mA", "mA_tuned", "accuracy", "precision", "recall", "f1", "ece", "mce")}
    data = json.loads(path.read_text())
    calibrated = data.get("calibration", {})  # absent from evaluations made before it
    return {**{k: data[k] for k in ("mA", "accuracy", "precision", "recall", "f1")},
            "mA_tuned": data.get("tuned_thresholds", {}).get("mA", np.nan),
            "ece": calibrated.get("ece", np.nan), "mce": calibrated.get("mce", np.nan)}


def _per_attribute(folder: Path):
    path = folder / "eval" / "per_attribute.csv"
    return pd.read_csv(path) if path.exists() else None


def _profiles(results: Path):
    """(dataset, model, run folder, profile) of every profile in the results tree (one per target)."""
    for profile_path in sorted(results.glob("*/*/profile-*.json")):
        run = profile_path.parent
        yield run.parent.name, run.name, run, json.loads(profile_path.read_text())


def profile_machines(results: Path) -> dict[tuple[str, str, str], str | None]:
    """The CPU each profile was measured on, by (dataset, model, target)."""
    return {(dataset, model, profile["target"]): profile.get("machine", {}).get("cpu_model")
            for dataset, model, _, profile in _profiles(results)}


def _runs(results: Path):
    """The same, once per run folder (its first target's profile)."""
    seen = set()
    for dataset, model, run, profile in _profiles(results):
        if run not in seen:
            seen.add(run)
            yield dataset, model, run, profile


def compression(results: Path, params: dict | None = None) -> pd.DataFrame:
    """Per compressed variant: its method, MACs and parameters as fractions of the baseline's,
    validation mA before fine-tuning, after BatchNorm recalibration and after fine-tuning, and the
    test mA of its deployed artifact against the baseline's and (with `params`) its matched control's."""
    from lwpar.config import matched_control

    rows = []
    for dataset, model, run, profile in _runs(results):
        measured = profile["variants"]
        base = measured.get("baseline", {})
        base_test = _metrics(run / "baseline")["mA"]
        for summary_path in sorted(run.glob("*/finetune.json")):
            summary = json.loads(summary_path.read_text())
            variant = summary_path.parent.name
            figures = measured.get(variant, {})

            def fraction(key):
                return figures[key] / base[key] if figures.get(key) and base.get(key) else np.nan
            recalibrated = summary.get("val_after_bn_recalibration") or {}
            test = _metrics(run / variant)["mA"]
            control = matched_control(params, variant) if params and variant in params["variants"] else None
            rows.append({"dataset": dataset, "model": model, "variant": variant, "method": _method(run / variant),
                         "macs_fraction": fraction("macs"), "params_fraction": fraction("params"),
                         "val_mA_before_ft": (summary["val_before"] or {}).get("mA", np.nan),
                         "val_mA_after_bn_recalibration": recalibrated.get("mA", np.nan),
                         "val_mA_after_ft": summary["val_after"]["mA"], "ft_epochs": summary["epochs"],
                         "ft_best_epoch": summary["best_epoch"], "ft_seconds": summary["seconds"],
                         "test_mA": test, "test_delta_mA": test - base_test, "control": control,
                         "test_delta_control_mA": test - _metrics(run / control)["mA"] if control else np.nan})
    return pd.DataFrame(rows)


def _method(folder: Path) -> str:
    if (folder / "prune.json").exists():
        return "prune-" + json.loads((folder / "prune.json").read_text())["kind"]
    if (folder / "layers.csv").exists():
        return "+".join(pd.read_csv(folder / "layers.csv")["method"].unique())
    return "none (fine-tuning only)"


def decomposition_layers(results: Path) -> pd.DataFrame:
    """Every decomposition variant's per-layer table (the decompose stage's layers.csv), in one."""
    frames = []
    for dataset, model, run, _ in _runs(results):
        for path in sorted(run.glob("*/layers.csv")):
            table = pd.read_csv(path)
            table.insert(0, "variant", path.parent.name)
            table.insert(0, "model", model)
            table.insert(0, "dataset", dataset)
            frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def decomposition_summary(layers: pd.DataFrame) -> pd.DataFrame:
    """Per variant and method: layers, MACs of those layers before and after, reconstruction error,
    and for CP the sum of squared rank-one norms (||lambda||^2) and the sensitivity, summed over
    the layers, before and after Error Preserving Correction."""
    if layers.empty:
        return layers
    groups = layers.groupby(["dataset", "model", "variant", "method"], sort=False)
    summary = groups.agg(layers=("layer", "size"), macs_before=("macs_before", "sum"),
                         macs_after=("macs_after", "sum"), median_relative_error=("relative_error", "median"),
                         max_relative_error=("relative_error", "max"), seconds=("seconds", "sum"))
    for column in ("lambda_sq_before", "lambda_sq_after", "sensitivity_before", "sensitivity_after"):
        summary[column] = groups[column].sum(min_count=1) if column in layers else np.nan
    return summary.reset_index()


def reliability(results: Path) -> pd.DataFrame:
    """Every scored artifact's reliability bins (the evaluate stage's calibration), in one table."""
    rows = []
    for dataset, model, run, profile in _runs(results):
        for variant in profile["variants"]:
            path = run / variant / "eval" / "metrics.json"
            bins = json.loads(path.read_text()).get("calibration", {}).get("reliability", []) if path.exists() else []
            rows += [{"dataset": dataset, "model": model, "variant": variant, **b} for b in bins]
    return pd.DataFrame(rows)


def method_label(params: dict, variant: str) -> str:
    """What a variant does, without its budget: the name that groups one method's budgets (an INT8
    variant is its source's method with +int8)."""
    name = variant.removesuffix("+int8")
    suffix = "+int8" if variant.endswith("+int8") else ""
    recipe = params["variants"].get(name) if params else None
    if name == "baseline" or recipe is None:
        return name + suffix
    return _recipe_label(params, name, recipe) + suffix


def mac_planned_label(params: dict, variant: str) -> str | None:
    """The method label of a latency-planned variant's MAC-planned counterpart: the same pruning with a
    MAC budget, or the same decomposition with the `greedy` rank policy (the same sensitivity
    measurement, spent by MACs instead of measured milliseconds). None for other variants."""
    name = variant.removesuffix("+int8")
    recipe = params["variants"].get(name, {})
    if recipe.get("prune", {}).get("budget") == "latency":
        return _recipe_label(params, name, {**recipe, "prune": {**recipe["prune"], "budget": "macs"}})
    rank = recipe.get("decompose", {}).get("rank", {})
    if rank.get("policy") == "latency":
        decompose = {**recipe["decompose"], "rank": {**rank, "policy": "greedy"}}
        return _recipe_label(params, name, {**recipe, "decompose": decompose})
    return None


def _recipe_label(params: dict, name: str, recipe: dict) -> str:
    from lwpar.config import schedule

    if "prune" in recipe:
        prune = recipe["prune"]
        budget = " (latency)" if prune.get("budget") == "latency" else ""  # the method planned another way
        return f"prune {prune['kind']} {prune.get('importance', 'l1')}{budget}"  # unstructured: L1
    if "decompose" not in recipe:
        return "control"
    d = recipe["decompose"]
    kxk = f"{d['methods']['kxk']}{'-epc' if d.get('epc', {}).get('enabled') and d['methods']['kxk'] == 'cp' else ''}"
    parts = [kxk if "kxk" in d["kinds"] else None, d["methods"]["pointwise"] if {"pointwise", "linear"} & set(d["kinds"]) else None]
    stages = len(schedule(params, name))
    chain = f", {stages} stages" if stages > 1 else ""
    # CP's outcome depends on how long ALS ran (the dense sweep), so its cap is part of the method
    als_iter = d.get("epc", {}).get("als_iter")
    als = f", ALS {als_iter}" if "kxk" in d["kinds"] and d["methods"]["kxk"] == "cp" and als_iter else ""
    return f"{'+'.join(p for p in parts if p)} ({d['rank']['policy']}{als}{chain})"


def breaking_points(table: pd.DataFrame, params: dict | None, tolerance: float = 0.01) -> list[str]:
    """Per method, one sentence: the smallest MAC fraction at which it stays within `tolerance` of
    its matched control's mA, and the largest at which it falls further (its breaking point)."""
    if not params or table.empty:
        return []
    one = table[(table.batch == table.batch.min()) & (table.threads == table.threads.min())].dropna(subset=["delta_control_mA"])
    sentences = []
    for (dataset, model), group in one.groupby(["dataset", "model"], sort=False):
        group = group.assign(method=[method_label(params, v) for v in group.variant],
                             macs_fraction=1 / group.mac_reduction)
        for method, rows in group.groupby("method", sort=False):
            rows = rows.sort_values("macs_fraction", ascending=False)
            holds = rows[rows.delta_control_mA >= -tolerance]
            breaks = rows[rows.delta_control_mA < -tolerance]
            budgets = ", ".join(f"{f:.0%}: {d * 100:+.2f}" for f, d in zip(rows.macs_fraction, rows.delta_control_mA))
            if breaks.empty:
                verdict = f"within {tolerance * 100:g} point of its control at every budget measured"
            elif holds.empty:
                verdict = f"more than {tolerance * 100:g} point below its control at every budget measured"
            else:
                verdict = (f"holds down to {holds.macs_fraction.min():.0%} of the MACs and breaks at "
                           f"{breaks.macs_fraction.max():.0%}")
            sentences.append(f"{dataset} / {model}, {method}: {verdict} (MAC fraction: mA against control, points: {budgets}).")
    return sentences


def pareto_front(latency: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both lower latency and higher score."""
    front = np.ones(len(latency), dtype=bool)
    for i in range(len(latency)):
        better = (latency <= latency[i]) & (score >= score[i]) & ((latency < latency[i]) | (score > score[i]))
        front[i] = not better.any()
    return front


def latency_split(results: Path) -> pd.DataFrame:
    rows = []
    for dataset, model, _, profile in _profiles(results):
        for variant, result in profile["variants"].items():
            for row in result["latency"]:
                if "backbone_ms_median" in row:
                    rows.append({"dataset": dataset, "model": model,
                                 "variant": variant, "target": profile["target"], "batch": row["batch"],
                                 "threads": row["threads"], "total_ms": row["median_ms"],
                                 "backbone_ms": row["backbone_ms_median"], "heads_ms": row["heads_ms_median"]})
    return pd.DataFrame(rows)


def _percent(value) -> str:
    return "" if pd.isna(value) else f"{value * 100:.2f}"


def _times(value) -> str:
    return "" if pd.isna(value) else f"{value:.2f}x"


def markdown(table: pd.DataFrame, stamp: str, split: pd.DataFrame | None = None,
             compressed: pd.DataFrame | None = None, decomposed: pd.DataFrame | None = None,
             breaks: list[str] | None = None, plans: pd.DataFrame | None = None) -> str:
    shown = table.copy()
    shown["control"] = shown["control"].fillna("")
    for column in ("mA", "mA_tuned", "accuracy", "precision", "recall", "f1", "ece", "mce", "delta_mA", "delta_control_mA"):
        shown[column] = (shown[column] * 100).map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    shown["params"] = shown["params"].map(lambda v: "" if pd.isna(v) else f"{v / 1e6:.2f} M")
    shown["macs"] = shown["macs"].map(lambda v: "" if pd.isna(v) else f"{v / 1e6:.1f} M")
    for column in ("size_mb", "latency_ms_median", "latency_ms_p90"):
        shown[column] = shown[column].map(lambda v: f"{v:.2f}")
    shown["speedup"] = shown["speedup"].map(lambda v: f"{v:.2f}x")
    shown["mac_reduction"] = shown["mac_reduction"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}x")
    shown["speedup_per_mac_reduction"] = shown["speedup_per_mac_reduction"].map(
        lambda v: "" if pd.isna(v) else f"{v:.2f}")
    shown.insert(shown.columns.get_loc("speedup") + 1, "speedup_iqr", [
        "" if pd.isna(q1) else f"{q1:.2f}-{q3:.2f}" for q1, q3 in zip(shown.pop("speedup_q1"), shown.pop("speedup_q3"))])
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    text = (f"# Comparison\n\n{stamp}\n\nmA, accuracy, precision, recall, F1 and delta_mA in percent (test split, "
            f"scored on the deployed ONNX artifact at the one threshold 0.5, as the literature scores); mA_tuned: "
            f"test mA at per-attribute thresholds chosen on the validation split (each maximising its attribute's "
            f"balanced accuracy; `thresholds.json` beside each artifact, what `lwpar predict` uses); speed-up "
            f"against `baseline` on the same target, batch and threads, "
            f"measured in the same interleaved run (the ratio of the medians); speedup_iqr: the quartiles of the "
            f"per-round speed-ups, baseline and variant timed back to back in each round, which is how much the "
            f"machine's noise moves it; mac_reduction: the baseline's MACs over the variant's (INT8 variants count "
            f"their source's); speedup_per_mac_reduction: the measured speed-up over it (1.00 = as fast as the "
            f"MACs promise); control: the variant's matched control, the uncompressed model given the same "
            f"fine-tuning schedule, and delta_control_mA the mA against it (for INT8, against the FP32 control): "
            f"the cost of the compression with the extra training paid for; ece and mce: expected and maximum "
            f"calibration error of the attribute probabilities (percent, 15 bins; reliability diagram in "
            f"`plots/reliability.svg`).\n\n" + header + body)
    if breaks:
        text += ("\n## Where each method breaks\n\nAt batch 1 on the fewest threads: for each method, the MAC "
                 "budgets at which it stays within 1 point of mA of its matched control, and where it falls "
                 "further.\n\n" + "".join(f"- {sentence}\n" for sentence in breaks))
    if plans is not None and len(plans):
        text += ("\n## Latency plans: predicted against measured\n\nVariants whose ranks or channels were allocated by "
                 "measured latency (rank policy `latency`, pruning budget `latency`): the speed-up asked for; the one the plan predicted from the per-layer "
                 "latency table, from the summed per-layer savings alone (uncalibrated) and mapped through the table's "
                 "calibration models (predicted); and the one measured on the exported model on the plan's target, "
                 "batch and threads; plan error = measured / predicted - 1. For pruning by a latency budget, predicted "
                 "is the pruned model timed beside the unpruned one while its channel ratio was searched. The last two "
                 "columns read the variant at equal measured speed against its method planned by MACs (the same pruning "
                 "with a MAC budget; the same decomposition with rank policy `greedy`, from the same sensitivity "
                 "measurement): the two MAC-planned variants whose measured speed-ups bracket it, and their mA "
                 "against the matched control interpolated linearly at its speed-up.\n\n"
                 "| dataset | model | variant | target | batch | threads | asked | uncalibrated | predicted | measured "
                 "| plan error | mA | delta vs control | MAC-planned at equal speed | its delta vs control |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        text += "".join(f"| {r.dataset} | {r.model} | {r.variant} | {r.target} | {r.batch} | {r.threads} | "
                        f"{r.speedup_requested:.2f}x | {_times(r.speedup_uncalibrated)} | {r.speedup_planned:.2f}x | "
                        f"{r.speedup_measured:.2f}x | "
                        f"{r.plan_error * 100:+.1f} %{f' (table measured on {r.table_cpu})' if r.table_cpu else ''} | "
                        f"{_percent(r.mA)} | {_percent(r.delta_control_mA)} | {r.mac_planned} | "
                        f"{_percent(r.mac_planned_delta_control_mA)} |\n"
                        for r in plans.itertuples())
    if split is not None and len(split):
        text += ("\n## Where the time goes\n\nMedian latency (ms) of the whole model and of its backbone alone, "
                 "measured in the same run; the heads are the difference.\n\n"
                 "| dataset | model | variant | target | batch | threads | total | backbone | heads |\n"
                 "|---|---|---|---|---|---|---|---|---|\n")
        text += "".join(f"| {r.dataset} | {r.model} | {r.variant} | {r.target} | {r.batch} | {r.threads} | "
                        f"{r.total_ms:.2f} | {r.backbone_ms:.2f} | {r.heads_ms:.2f} |\n" for r in split.itertuples())
    if compressed is not None and len(compressed):
        text += ("\n## Compression and fine-tuning\n\nValidation mA (%) of each compressed model before fine-tuning "
                 "(blank unless `score_before_recalibration`), after re-estimating BatchNorm statistics, and after fine-tuning (the kept epoch); test mA (%) of its "
                 "deployed ONNX artifact and the change against the baseline's and against its matched control's.\n\n"
                 "| dataset | model | variant | method | MACs | params | val mA before FT | after BN recal. | after FT "
                 "| FT epochs | FT seconds | test mA | delta_mA | control | delta vs control |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        text += "".join(f"| {r.dataset} | {r.model} | {r.variant} | {r.method} | {r.macs_fraction:.3f} | "
                        f"{r.params_fraction:.3f} | {_percent(r.val_mA_before_ft)} | "
                        f"{_percent(r.val_mA_after_bn_recalibration)} | {_percent(r.val_mA_after_ft)} | {r.ft_epochs} | "
                        f"{r.ft_seconds:.0f} | {_percent(r.test_mA)} | {_percent(r.test_delta_mA)} | {r.control if isinstance(r.control, str) else ''} | "
                        f"{_percent(r.test_delta_control_mA)} |\n"
                        for r in compressed.itertuples())
    if decomposed is not None and len(decomposed):
        text += ("\n## Decomposition\n\nPer variant and method, over the factorized layers only: their MACs before "
                 "and after, the relative reconstruction error of their kernels, and for CP, summed over the layers, "
                 "||lambda||^2 (the squared norms of the rank-one terms) and the sensitivity before and after Error "
                 "Preserving Correction (equal when EPC is off), and the seconds the decomposition took. Every "
                 "layer's row is in `decomposition_layers.csv`.\n\n"
                 "| dataset | model | variant | method | layers | MACs before | MACs after | median rel. error "
                 "| max rel. error | ||lambda||^2 before | ||lambda||^2 after | sensitivity before | sensitivity after "
                 "| seconds |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        num = lambda v, f: "" if pd.isna(v) else format(v, f)  # noqa: E731
        text += "".join(f"| {r.dataset} | {r.model} | {r.variant} | {r.method} | {r.layers} | "
                        f"{r.macs_before / 1e6:.1f} M | {r.macs_after / 1e6:.1f} M | {r.median_relative_error:.4f} | "
                        f"{r.max_relative_error:.4f} | {num(r.lambda_sq_before, '.4g')} | {num(r.lambda_sq_after, '.4g')} | "
                        f"{num(r.sensitivity_before, '.4g')} | {num(r.sensitivity_after, '.4g')} | "
                        f"{r.seconds:.1f} |\n" for r in decomposed.itertuples())
    return text


def label_offsets(x: np.ndarray, y: np.ndarray, names: list[str], width_pt: float = 504, height_pt: float = 324) -> list:
    """Point-label offsets (points) that keep labels of nearby points apart: each label takes the first
    of a few positions whose box (about 4 pt per character, 8 pt high, on a width_pt x height_pt
    plot area) overlaps no label placed before it."""
    span_x, span_y = (np.ptp(x) or 1.0), (np.ptp(y) or 1.0)
    px, py = (x - x.min()) / span_x * width_pt, (y - y.min()) / span_y * height_pt
    placed, offsets = [], []
    for i in np.argsort(x, kind="stable"):
        width = 4.0 * len(names[i])
        for dx, dy in ((3, 3), (3, -10), (3, 12), (3, -19), (-width - 3, 3), (-width - 3, -10)):
            box = (px[i] + dx, py[i] + dy, px[i] + dx + width, py[i] + dy + 8)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        offsets.append((i, (dx, dy)))
    return [offset for _, offset in sorted(offsets, key=lambda pair: pair[0])]


def plots(table: pd.DataFrame, out_dir: Path, bins: pd.DataFrame | None = None) -> list[Path]:
    """mA against measured latency (with the Pareto front over every model) and against MACs, at batch 1
    on the fewest threads; one colour per method, its budgets joined. When INT8 models are present,
    FP32 and INT8 models get a panel each (same axes, same colours), so that neither hides the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    scored = table.dropna(subset=["mA"])
    one = scored[(scored.batch == scored.batch.min()) & (scored.threads == scored.threads.min())]
    one = one.assign(method=one.method.fillna(one.variant).astype(str))
    int8 = one.variant.str.endswith("+int8")
    panels = [("FP32", ~int8), ("INT8", int8)] if int8.any() and (~int8).any() else [("", int8 | ~int8)]
    prefix_models = one[["dataset", "model"]].drop_duplicates().shape[0] > 1
    families = sorted({m.removesuffix("+int8") for m in one.method})
    colors = dict(zip(families, [plt.get_cmap("tab20").colors[i % 20] for i in range(len(families))]))
    for kind, column, label in (("latency", "latency_ms_median", "median latency (ms), batch 1, 1 thread"),
                                ("macs", "macs", "MACs per image")):
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 5), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, (title, rows) in zip(axes[0], panels):
            for (dataset, model), everything in one.groupby(["dataset", "model"]):
                everything = everything.dropna(subset=[column])
                group = everything[rows.loc[everything.index]]
                prefix = f"{dataset} / {model}: " if prefix_models else ""
                for method, budgets in group.groupby("method", sort=True):  # one method's budgets, joined
                    budgets = budgets.sort_values(column)
                    family = method.removesuffix("+int8")
                    ax.plot(budgets[column], budgets["mA"] * 100, "o-" if len(budgets) > 1 else "o", lw=0.8, ms=5,
                            color=colors[family], label=prefix + family)
                x, y = group[column].to_numpy(float), group["mA"].to_numpy(float) * 100
                for name, xi, yi, offset in zip(group.variant, x, y, label_offsets(x, y, list(group.variant))):
                    ax.annotate(name.removesuffix("+int8"), (xi, yi), fontsize=6, xytext=offset,
                                textcoords="offset points")
                if kind == "latency" and len(everything):  # the front over every model, FP32 and INT8
                    ex, ey = everything[column].to_numpy(float), everything["mA"].to_numpy(float) * 100
                    front = pareto_front(ex, ey)
                    order = np.argsort(ex[front])
                    ax.plot(ex[front][order], ey[front][order], "--", lw=1, color="black", alpha=0.6,
                            label=f"{prefix}Pareto front (all models)")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test mA (%)")
        handles = {}
        for ax in axes[0]:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(name, handle)
        fig.legend(handles.values(), handles.keys(), fontsize=6, loc="center right")
        legend_inches = 0.6 + 0.05 * max(map(len, handles))  # 6-pt labels: about 0.05 in per character
        fig.tight_layout(rect=(0, 0, 1 - legend_inches / fig.get_figwidth(), 1))
        for suffix in ("png", "svg"):
            path = out_dir / f"mA_vs_{kind}.{suffix}"
            fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend outside the axes stays whole
            written.append(path)
        plt.close(fig)
    written += _reliability_plot(bins if bins is not None else pd.DataFrame(), out_dir, plt)
    return written


def _reliability_plot(bins: pd.DataFrame, out_dir: Path, plt) -> list[Path]:
    """Frequency of positive labels against mean predicted probability per bin, one line per artifact."""
    groups = list(bins.groupby(["dataset", "model"])) if len(bins) else []
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(6 * max(len(groups), 1), 5), squeeze=False)
    for ax, ((dataset, model), group) in zip(axes[0], groups):
        ax.plot([0, 1], [0, 1], ":", color="gray", lw=1, label="calibrated")
        for variant, rows in group.dropna(subset=["confidence"]).groupby("variant", sort=False):
            ax.plot(rows.confidence, rows.frequency, marker=".", lw=1, label=variant)
        ax.set_title(f"{dataset} / {model}", fontsize=9)
        ax.set_xlabel("mean predicted probability (bin)")
        ax.set_ylabel("fraction of positive labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    written = []
    for suffix in ("png", "svg"):
        path = out_dir / f"reliability.{suffix}"
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)
    return written
