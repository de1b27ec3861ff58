"""comparison.md: the comparison table with its legend, then one section each on where each method
breaks, latency plans, where the time goes, compression and fine-tuning, decomposition and INT8 error; every
table written by one function (`_table`)."""

from __future__ import annotations

import pandas as pd

LEGEND = (
    "mA, accuracy, precision, recall, F1 and delta_mA in percent (test split, scored on the deployed ONNX artifact "
    "at the one threshold 0.5, as the literature scores); mA_tuned: test mA at per-attribute thresholds chosen on "
    "the validation split (each maximising its attribute's balanced accuracy; `thresholds.json` beside each "
    "artifact, what `lwpar predict` uses); speed-up against `baseline` on the same target, batch and threads, "
    "measured in the same interleaved run (the ratio of the medians); speedup_iqr: the quartiles of the per-round "
    "speed-ups, baseline and variant timed back to back in each round, which is how much the machine's noise "
    "moves it; mac_reduction: the baseline's MACs over the variant's (INT8 variants count their source's); "
    "speedup_per_mac_reduction: the measured speed-up over it (1.00 = as fast as the MACs promise); control: the "
    "variant's matched control, the uncompressed model given the same fine-tuning schedule, and delta_control_mA "
    "the mA against it (for INT8, against the FP32 control; after quantization-aware fine-tuning, against the "
    "control's INT8 form): the cost of the compression with the extra training "
    "paid for; ece and mce: expected and maximum calibration error of the attribute probabilities (percent, 15 "
    "bins; reliability diagram in `plots/reliability.svg`).")


def _percent(value) -> str:
    return "" if pd.isna(value) else f"{value * 100:.2f}"


def _times(value) -> str:
    return "" if pd.isna(value) else f"{value:.2f}x"


def _number(value, spec: str) -> str:
    return "" if pd.isna(value) else format(value, spec)


def _table(columns, rows) -> str:
    return ("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            + "".join("| " + " | ".join(str(cell) for cell in row) + " |\n" for row in rows))


def _section(title: str, intro: str, body: str) -> str:
    return f"\n## {title}\n\n{intro}\n\n{body}"


def markdown(table: pd.DataFrame, stamp: str, split: pd.DataFrame | None = None,
             compressed: pd.DataFrame | None = None, decomposed: pd.DataFrame | None = None,
             breaks: list[str] | None = None, plans: pd.DataFrame | None = None,
             int8: pd.DataFrame | None = None, across: pd.DataFrame | None = None,
             verdicts: list[str] | None = None) -> str:
    shown = comparison_cells(table)
    text = f"# Comparison\n\n{stamp}\n\n{LEGEND}\n\n" + _table(shown.columns, shown.itertuples(index=False))
    if breaks:
        text += breaks_section(breaks)
    if across is not None and len(across):
        text += runtimes_section(across, verdicts or [])
    if plans is not None and len(plans):
        text += plans_section(plans)
    if split is not None and len(split):
        text += split_section(split)
    if compressed is not None and len(compressed):
        text += compression_section(compressed)
    if decomposed is not None and len(decomposed):
        text += decomposition_section(decomposed)
    if int8 is not None and len(int8):
        text += int8_section(int8)
    return text


def comparison_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as it is shown: percentages, millions, speed-ups and their spread."""
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
    return shown


def breaks_section(breaks: list[str]) -> str:
    return _section("Where each method breaks", "At batch 1 on the fewest threads: for each method, the MAC budgets at "
                    "which it stays within 1 point of mA of its matched control, and where it falls further.",
                    "".join(f"- {sentence}\n" for sentence in breaks))


def runtimes_section(across: pd.DataFrame, verdicts: list[str]) -> str:
    columns = ["dataset", "model", "variant", "threads", "reference", "target", "speed-up there", "speed-up here",
               "ratio", "MAC reduction", "mA there", "mA here", "delta mA"]
    rows = [[r.dataset, r.model, r.variant, r.threads, f"{r.reference} ({r.reference_runtime})",
             f"{r.target} ({r.runtime})", f"{r.speedup_reference:.2f}x", f"{r.speedup_target:.2f}x",
             f"{r.speedup_ratio:.2f}", _times(r.mac_reduction), _percent(r.mA_reference), _percent(r.mA_target),
             _number(r.delta_mA * 100, "+.3f")] for r in across.itertuples()]
    return _section("Across runtimes",
                    "Each artifact on every target against the first target, at batch 1: its speed-up over the "
                    "baseline on each (each measured against the baseline on the same target) and its test mA as "
                    "each target's runtime scored it. Per method, at the fewest threads, whether its speed-ups hold "
                    "(ratio within 10 %):",
                    "".join(f"- {sentence}\n" for sentence in verdicts) + "\n" + _table(columns, rows))


def plans_section(plans: pd.DataFrame) -> str:
    intro = ("Variants whose ranks or channels were allocated by measured latency (rank policy `latency`, pruning "
             "budget `latency`): the speed-up asked for; the one the plan predicted from the per-layer latency table, "
             "from the summed per-layer savings alone (uncalibrated) and mapped through the table's calibration models "
             "(predicted); and the one measured on the exported model on the plan's target, batch and threads; plan "
             "error = measured / predicted - 1. For pruning by a latency budget, predicted is the pruned model timed "
             "beside the unpruned one while its channel ratio was searched. The last two columns read the variant at "
             "equal measured speed against its method planned by MACs (the same pruning with a MAC budget; the same "
             "decomposition with rank policy `greedy`, from the same sensitivity measurement): the two MAC-planned "
             "variants whose measured speed-ups bracket it, and their mA against the matched control interpolated "
             "linearly at its speed-up.")
    columns = ["dataset", "model", "variant", "target", "batch", "threads", "asked", "uncalibrated", "predicted",
               "measured", "plan error", "mA", "delta vs control", "MAC-planned at equal speed", "its delta vs control"]
    rows = [[r.dataset, r.model, r.variant, r.target, r.batch, r.threads, f"{r.speedup_requested:.2f}x",
             _times(r.speedup_uncalibrated), f"{r.speedup_planned:.2f}x", f"{r.speedup_measured:.2f}x",
             f"{r.plan_error * 100:+.1f} %{f' (table measured on {r.table_cpu})' if r.table_cpu else ''}",
             _percent(r.mA), _percent(r.delta_control_mA), r.mac_planned, _percent(r.mac_planned_delta_control_mA)]
            for r in plans.itertuples()]
    return _section("Latency plans: predicted against measured", intro, _table(columns, rows))


def split_section(split: pd.DataFrame) -> str:
    columns = ["dataset", "model", "variant", "target", "batch", "threads", "total", "backbone", "heads"]
    rows = [[r.dataset, r.model, r.variant, r.target, r.batch, r.threads, f"{r.total_ms:.2f}", f"{r.backbone_ms:.2f}",
             f"{r.heads_ms:.2f}"] for r in split.itertuples()]
    return _section("Where the time goes", "Median latency (ms) of the whole model and of its backbone alone, measured "
                    "in the same run; the heads are the difference.", _table(columns, rows))


def compression_section(compressed: pd.DataFrame) -> str:
    intro = ("Validation mA (%) of each compressed model before fine-tuning (blank unless "
             "`score_before_recalibration`), after re-estimating BatchNorm statistics, and after fine-tuning (the kept "
             "epoch); test mA (%) of its deployed ONNX artifact and the change against the baseline's and against its "
             "matched control's.")
    columns = ["dataset", "model", "variant", "method", "MACs", "params", "val mA before FT", "after BN recal.",
               "after FT", "FT epochs", "FT seconds", "test mA", "delta_mA", "control", "delta vs control"]
    rows = [[r.dataset, r.model, r.variant, r.method, f"{r.macs_fraction:.3f}", f"{r.params_fraction:.3f}",
             _percent(r.val_mA_before_ft), _percent(r.val_mA_after_bn_recalibration), _percent(r.val_mA_after_ft),
             r.ft_epochs, f"{r.ft_seconds:.0f}", _percent(r.test_mA), _percent(r.test_delta_mA),
             r.control if isinstance(r.control, str) else "", _percent(r.test_delta_control_mA)]
            for r in compressed.itertuples()]
    return _section("Compression and fine-tuning", intro, _table(columns, rows))


def decomposition_section(decomposed: pd.DataFrame) -> str:
    intro = ("Per variant and method, over the factorized layers only: their MACs before and after, the relative "
             "reconstruction error of their kernels, and for CP, summed over the layers, ||lambda||^2 (the squared norms "
             "of the rank-one terms) and the sensitivity before and after Error Preserving Correction (equal when EPC "
             "is off), and the seconds the decomposition took. Every layer's row is in `decomposition_layers.csv`.")
    columns = ["dataset", "model", "variant", "method", "layers", "MACs before", "MACs after", "median rel. error",
               "max rel. error", "||lambda||^2 before", "||lambda||^2 after", "sensitivity before", "sensitivity after",
               "seconds"]
    rows = [[r.dataset, r.model, r.variant, r.method, r.layers, f"{r.macs_before / 1e6:.1f} M",
             f"{r.macs_after / 1e6:.1f} M", f"{r.median_relative_error:.4f}", f"{r.max_relative_error:.4f}",
             _number(r.lambda_sq_before, ".4g"), _number(r.lambda_sq_after, ".4g"), _number(r.sensitivity_before, ".4g"),
             _number(r.sensitivity_after, ".4g"), f"{r.seconds:.1f}"] for r in decomposed.itertuples()]
    return _section("Decomposition", intro, _table(columns, rows))


def int8_section(int8: pd.DataFrame) -> str:
    intro = ("Where each INT8 artifact departs from its FP32 source (`node_error.csv` beside it: every quantized tensor "
             "compared with the FP32 model's on the quantize stage's error images): the SQNR of its last quantized tensor "
             "against FP32 (dB; higher is closer, about 6 dB per bit), how many tensors lose at least 6 dB against the "
             "worst of their inputs (where error is born rather than carried), its weakest weight, the three largest "
             "such drops by module, and the test mA against the FP32 source's.")
    columns = ["dataset", "model", "variant", "method", "test mA", "vs FP32", "output SQNR (dB)", "tensors losing >= 6 dB",
               "weakest weight (dB)", "largest drops"]
    rows = [[r.dataset, r.model, r.variant, r.method, _percent(r.mA), _percent(r.delta_fp32_mA),
             _number(r.output_sqnr_db, ".1f"), f"{r.tensors_dropping} of {r.tensors}", _number(r.min_weight_sqnr_db, ".1f"),
             r.largest_drops] for r in int8.itertuples()]
    return _section("INT8 error", intro, _table(columns, rows))
