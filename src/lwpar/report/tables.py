"""The comparison tables: one row per dataset, model, artifact, target, batch and threads (scores,
size, MACs, measured latency, speed-up against the baseline and the MAC reduction, the mA delta
against the baseline and against the matched control), per-attribute deltas, compression and
fine-tuning per variant, every decomposed layer, reliability bins, the backbone/head latency split,
and where each method breaks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from lwpar.compress.recipes import control_reference, matched_control, method_label
from lwpar.core.names import fp32_name
from lwpar.report.inputs import Inputs

COLUMNS = ["dataset", "model", "variant", "method", "target", "runtime", "scored_on", "batch", "threads", "mA", "mA_tuned", "accuracy", "precision", "recall",
           "f1", "ece", "mce", "params", "macs", "size_mb", "latency_ms_median", "latency_ms_p90", "speedup", "speedup_q1", "speedup_q3", "mac_reduction",
           "speedup_per_mac_reduction", "delta_mA", "control", "delta_control_mA"]


def collect(inputs: Inputs, params: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per dataset, model, variant, target, batch and threads; per-attribute mA deltas.
    With `params`, each compressed variant is also read against its matched control."""
    rows, attributes = [], []
    for dataset, model, profile in inputs.profile_files():
        base_attr = inputs.attribute_scores(dataset, model, "baseline")
        for variant, result in profile["variants"].items():
            metrics = inputs.scores(dataset, model, variant, profile["target"])
            for row in result["latency"]:
                rows.append({"dataset": dataset, "model": model, "variant": variant, "target": profile["target"],
                             # profiles made before the second runtime were all ONNX Runtime's
                             "runtime": profile.get("target_config", {}).get("runtime", "onnxruntime"),
                             "batch": row["batch"], "threads": row["threads"], **metrics,
                             "params": result.get("params"), "macs": result.get("macs"),
                             "size_mb": result["size_mb"], "latency_ms_median": row["median_ms"],
                             "latency_ms_p90": row["p90_ms"], "speedup": row["speedup"],
                             # quartiles of the per-round speed-ups (absent from profiles made before them)
                             "speedup_q1": row.get("speedup_q1", np.nan), "speedup_q3": row.get("speedup_q3", np.nan)})
            per = inputs.attribute_scores(dataset, model, variant)
            if per is not None and base_attr is not None and variant != "baseline":
                delta = per.set_index("attribute")["mA"] - base_attr.set_index("attribute")["mA"]
                attributes += [{"dataset": dataset, "model": model, "variant": variant, "attribute": a,
                                "delta_mA": d} for a, d in delta.items()]
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("mac_reduction", "speedup_per_mac_reduction",
                                                                         "delta_mA", "control", "delta_control_mA",
                                                                         "method")])
    return against_control(against_baseline(table), params), pd.DataFrame(attributes)


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
    fine-tuning schedule, `recipes.matched_control`) and its mA delta against it: what the compression
    costs once the extra training is paid for. An INT8 variant is read against the FP32 control, or
    after quantization-aware fine-tuning against the control's INT8 form."""
    table = table.copy()
    controls = [control_reference(params, v) if params and (fp32_name(v) in params["variants"]) else None
                for v in table.variant]
    table["control"] = controls
    table["method"] = [method_label(params, v) for v in table.variant]
    scores = table.set_index(["dataset", "model", "variant", "target", "batch", "threads"])["mA"]
    table["delta_control_mA"] = [
        m - scores.get((d, mo, c, ta, b, th), np.nan) if c else np.nan
        for m, d, mo, c, ta, b, th in zip(table.mA, table.dataset, table.model, controls, table.target, table.batch,
                                           table.threads)]
    return table.reindex(columns=COLUMNS)


def compression(inputs: Inputs, params: dict | None = None) -> pd.DataFrame:
    """Per compressed variant: its method, MACs and parameters as fractions of the baseline's,
    validation mA before fine-tuning, after BatchNorm recalibration and after fine-tuning, and the
    test mA of its deployed artifact against the baseline's and (with `params`) its matched control's."""
    rows = []
    for dataset, model, profile in inputs.runs():
        measured = profile["variants"]
        base = measured.get("baseline", {})
        base_test = inputs.scores(dataset, model, "baseline")["mA"]
        for variant, summary_path in inputs.of_run("finetune", dataset, model):
            summary = json.loads(summary_path.read_text())
            figures = measured.get(variant, {})

            def fraction(key):
                return figures[key] / base[key] if figures.get(key) and base.get(key) else np.nan
            recalibrated = summary.get("val_after_bn_recalibration") or {}
            test = inputs.scores(dataset, model, variant)["mA"]
            control = matched_control(params, variant) if params and variant in params["variants"] else None
            rows.append({"dataset": dataset, "model": model, "variant": variant, "method": inputs.method(dataset, model, variant),
                         "macs_fraction": fraction("macs"), "params_fraction": fraction("params"),
                         "val_mA_before_ft": (summary["val_before"] or {}).get("mA", np.nan),
                         "val_mA_after_bn_recalibration": recalibrated.get("mA", np.nan),
                         "val_mA_after_ft": summary["val_after"]["mA"], "ft_epochs": summary["epochs"],
                         "ft_best_epoch": summary["best_epoch"], "ft_seconds": summary["seconds"],
                         "test_mA": test, "test_delta_mA": test - base_test, "control": control,
                         "test_delta_control_mA": test - inputs.scores(dataset, model, control)["mA"] if control else np.nan})
    return pd.DataFrame(rows)


def decomposition_layers(inputs: Inputs) -> pd.DataFrame:
    """Every decomposition variant's per-layer table (the decompose stage's layers.csv), in one."""
    frames = []
    for dataset, model, _ in inputs.runs():
        for variant, path in inputs.of_run("layers", dataset, model):
            table = pd.read_csv(path)
            table.insert(0, "variant", variant)
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


def int8_errors(inputs: Inputs, params: dict | None = None, worst: int = 3, large_drop_db: float = 6.0) -> pd.DataFrame:
    """Per INT8 artifact, from its node_error.csv (`deploy.quant_error`): how far its output is from its
    FP32 source's (the accumulated SQNR of its last quantized tensor), the `worst` layers where that
    error is born (largest drops, named by the module that computes them), how many tensors drop by at
    least `large_drop_db`, its weakest weight, and the test mA it loses against the FP32 source."""
    rows = []
    for dataset, model, _ in inputs.runs():
        for artifact, path in inputs.of_run("int8_errors", dataset, model):
            # a header alone (nothing measured: NNCF's forms, dynamic INT8) reads as text columns
            table = pd.read_csv(path, dtype={c: float for c in ("own_sqnr_db", "accumulated_sqnr_db", "drop_db")})
            activations = table[table["kind"] == "activation"].dropna(subset=["accumulated_sqnr_db"])
            born = activations.dropna(subset=["drop_db"]).nlargest(worst, "drop_db")
            weights = table.loc[table["kind"] == "weight", "own_sqnr_db"]
            source = fp32_name(artifact)
            last = activations.loc[activations["order"].idxmax()] if len(activations) else None
            mA = inputs.scores(dataset, model, artifact)["mA"]
            rows.append({"dataset": dataset, "model": model, "variant": artifact,
                         "method": method_label(params, artifact) if params else "",
                         "output_sqnr_db": last["accumulated_sqnr_db"] if last is not None else np.nan,
                         "largest_drops": "; ".join(f"{module_of(r.tensor)} ({r.op}) {r.drop_db:.1f} dB"
                                                    for r in born.itertuples()),
                         "tensors_dropping": int((activations["drop_db"] >= large_drop_db).sum()),
                         "tensors": len(activations),
                         "min_weight_sqnr_db": weights.min() if len(weights) else np.nan,
                         "mA": mA, "delta_fp32_mA": mA - inputs.scores(dataset, model, source)["mA"]})
    return pd.DataFrame(rows)


def module_of(tensor: str) -> str:
    """The module that computes an exported tensor, from its name (`/main_branch/layer1/layer1.0/conv2/conv2.1/
    Conv_output_0` -> `main_branch.layer1.0.conv2.1`; a name without a module path is returned as it is)."""
    scopes = [p for p in tensor.split("/") if p][:-1]
    if not scopes:
        return tensor
    path = [scopes[0]]
    for outer, scope in zip(scopes, scopes[1:]):  # a container's child scope repeats its name: layer1 / layer1.0
        path.append(scope.removeprefix(f"{outer}."))
    return ".".join(path)


def reliability(inputs: Inputs) -> pd.DataFrame:
    """Every scored artifact's reliability bins (the evaluate stage's calibration), in one table."""
    rows = []
    for dataset, model, profile in inputs.runs():
        for variant in profile["variants"]:
            bins = inputs.reliability_bins(dataset, model, variant)
            rows += [{"dataset": dataset, "model": model, "variant": variant, **b} for b in bins]
    return pd.DataFrame(rows)


def latency_split(inputs: Inputs) -> pd.DataFrame:
    """Per artifact and setting: the whole model's median latency, its backbone's alone, and the heads' share."""
    rows = []
    for dataset, model, profile in inputs.profile_files():
        for variant, result in profile["variants"].items():
            for row in result["latency"]:
                if "backbone_ms_median" in row:
                    rows.append({"dataset": dataset, "model": model,
                                 "variant": variant, "target": profile["target"], "batch": row["batch"],
                                 "threads": row["threads"], "total_ms": row["median_ms"],
                                 "backbone_ms": row["backbone_ms_median"], "heads_ms": row["heads_ms_median"]})
    return pd.DataFrame(rows)


def breaking_points(table: pd.DataFrame, params: dict | None, tolerance: float = 0.01) -> list[str]:
    """Per method, one sentence: the smallest MAC fraction at which it stays within `tolerance` of
    its matched control's mA, and the largest at which it falls further (its breaking point)."""
    if not params or table.empty:
        return []
    one = table[(table.batch == table.batch.min()) & (table.threads == table.threads.min())].dropna(subset=["delta_control_mA"])
    one = one[one.target == one.target.iloc[0]] if len(one) else one  # accuracy: one target's runtime says it
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


ACROSS_COLUMNS = ["dataset", "model", "variant", "threads", "method", "reference", "reference_runtime", "target", "runtime",
                  "speedup_reference", "speedup_target", "speedup_ratio", "mac_reduction", "mA_reference", "mA_target",
                  "delta_mA"]


def across_targets(table: pd.DataFrame) -> pd.DataFrame:
    """Each artifact's speed-up and mA on every target against the first target's (the reference), at
    batch 1 (or the smallest batch) and each thread count: whether a speed-up holds on another runtime."""
    targets = list(dict.fromkeys(table.target))
    if len(targets) < 2:
        return pd.DataFrame(columns=ACROSS_COLUMNS)
    one = table[table.batch == table.batch.min()]
    keys = ["dataset", "model", "variant", "threads"]
    reference = one[one.target == targets[0]][[*keys, "method", "target", "runtime", "speedup", "mac_reduction", "mA"]]
    others = one[one.target != targets[0]][[*keys, "target", "runtime", "speedup", "mA"]]
    pairs = reference.merge(others, on=keys, suffixes=("_reference", "_target"))  # the artifacts both measured
    across = pairs.rename(columns={"target_reference": "reference", "runtime_reference": "reference_runtime",
                                   "target_target": "target", "runtime_target": "runtime"})
    across["speedup_ratio"] = across.speedup_target / across.speedup_reference
    across["delta_mA"] = across.mA_target - across.mA_reference
    order = {t: i for i, t in enumerate(targets)}  # the targets in the experiment's order, then the artifacts'
    across = across.sort_values("target", key=lambda t: t.map(order), kind="stable")
    return across.reset_index(drop=True).reindex(columns=ACROSS_COLUMNS)


def runtime_verdicts(across: pd.DataFrame, tolerance: float = 0.10) -> list[str]:
    """Per method, one sentence: whether its speed-ups on each other target stay within `tolerance`
    of the reference target's, at the fewest threads."""
    if across.empty:
        return []
    one = across[(across.threads == across.threads.min()) & (across.variant != "baseline")]
    sentences = []
    for (dataset, model, target, method), rows in one.groupby(["dataset", "model", "target", "method"], sort=False):
        off = rows[(rows.speedup_ratio - 1).abs() > tolerance]
        pairs = ", ".join(f"{v}: {a:.2f}x / {b:.2f}x" for v, a, b in zip(rows.variant, rows.speedup_reference,
                                                                         rows.speedup_target))
        verdict = (f"holds (within {tolerance:.0%})" if off.empty else
                   f"does not hold for {len(off)} of {len(rows)} (speed-up ratio "
                   f"{off.speedup_ratio.min():.2f}-{off.speedup_ratio.max():.2f})")
        sentences.append(f"{dataset} / {model}, {method}: its speed-up on {target} ({rows.runtime.iloc[0]}) against "
                         f"{rows.reference.iloc[0]} ({rows.reference_runtime.iloc[0]}) {verdict}; {pairs}.")
    return sentences


def pareto_front(latency: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both lower latency and higher score."""
    front = np.ones(len(latency), dtype=bool)
    for i in range(len(latency)):
        better = (latency <= latency[i]) & (score >= score[i]) & ((latency < latency[i]) | (score > score[i]))
        front[i] = not better.any()
    return front
