"""Latency plans read against what was measured: each latency-planned variant's asked, predicted and
measured speed-up, and its method planned by MACs read at the same measured speed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from lwpar.compress.recipes import mac_planned_label
from lwpar.report.inputs import Inputs


def pruning_plans(inputs: Inputs) -> pd.DataFrame:
    """Every latency-budget pruning's plan (its prune.json): the plan_* figures the decompose stage's
    rows carry, the pruned model timed beside the unpruned one while its channel ratio was searched."""
    rows = []
    for dataset, model, _ in inputs.runs():
        for variant, path in inputs.of_run("prune", dataset, model):
            summary = json.loads(path.read_text())
            if "plan_predicted_ms" in summary:
                rows.append({"dataset": dataset, "model": model, "variant": variant,
                             **{k: v for k, v in summary.items() if k.startswith("plan_")}})
    return pd.DataFrame(rows)


def profile_machines(inputs: Inputs) -> dict[tuple[str, str, str], str | None]:
    """The CPU each profile was measured on, by (dataset, model, target)."""
    return {(dataset, model, profile["target"]): profile.get("machine", {}).get("cpu_model")
            for dataset, model, profile in inputs.profile_files()}


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
