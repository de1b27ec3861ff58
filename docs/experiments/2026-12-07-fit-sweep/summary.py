"""The fit sweep's figures from its run folder (works before the report has run): per variant the test
mA of its ONNX artifact against its schedule's control, validation mA before and after BatchNorm
re-estimation, the block-wise record, and each job's seconds from Snakemake's benchmark files.

    python docs/experiments/2026-12-07-fit-sweep/summary.py <workspace> [params file]

Prints two Markdown tables (the variants, the costs) and the target checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml


def seconds(bench: Path, stage: str, name: str) -> float | None:
    tsv = bench / stage / "peta" / "alm_r50h" / f"{name}.tsv"
    if not tsv.exists():
        tsv = bench / stage / "peta" / f"{name}.tsv"
    return float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]) if tsv.exists() else None


def main(workspace: Path, params_file: str = "workflow/params/fit_sweep.yaml") -> None:
    params = yaml.safe_load((workspace / params_file).read_text())
    run = workspace / "results/fit_sweep/peta/alm_r50h"
    bench = workspace / "logs/results/fit_sweep/benchmarks"
    rows = []
    for variant in params["experiment"]["variants"]:
        folder = run / variant
        metrics = folder / "eval/metrics.json"
        tuned = json.loads((folder / "finetune.json").read_text()) if (folder / "finetune.json").exists() else {}
        row = {"variant": variant, "test_mA": json.loads(metrics.read_text())["mA"] * 100 if metrics.exists() else None,
               "val_after_bn": (tuned.get("val_after_bn_recalibration") or {}).get("mA"),
               "val_after": (tuned.get("val_after") or {}).get("mA"),
               "decompose_s": seconds(bench, "decompose", variant), "prune_s": seconds(bench, "prune", variant),
               "finetune_s": seconds(bench, "finetune", variant)}
        record = tuned.get("blockwise")
        if record:
            blocks = [b for b in record["blocks"] if "skipped" not in b]  # skipped: output shape pruned
            kept = [b for b in blocks if b["kept"]]
            row.update(blockwise_s=record["seconds"], blocks=len(blocks), blocks_kept=len(kept),
                       blocks_skipped=len(record["blocks"]) - len(blocks),
                       capture_s=sum(b.get("capture_seconds", 0) for b in blocks),
                       heldout_error_before=sum(b["heldout_error_before"] for b in blocks) / max(len(blocks), 1),
                       heldout_error_after=sum((b["heldout_error_after"] if b["kept"] else b["heldout_error_before"])
                                               for b in blocks) / max(len(blocks), 1))
        layers = folder / "layers.csv"
        if layers.exists():
            table = pd.read_csv(layers)
            if "output_error" in table:
                row["mean_output_error"] = table["output_error"].mean()
            if "capture_seconds" in table:
                row["capture_s"] = table["capture_seconds"].sum()
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("variant")
    for schedule in ("bn", "kd", "kd400"):
        if f"control_{schedule}" not in frame.index:
            continue
        control = frame.loc[f"control_{schedule}", "test_mA"]
        part = frame[frame.index.str.endswith(f"_{schedule}")]
        frame.loc[part.index, "vs_control"] = part["test_mA"] - control
    print(frame.round(4).to_markdown())
    print()
    print(f"calibrate: {seconds(bench, 'calibrate', 'peta/alm_r50h/baseline') or seconds(bench, 'calibrate', 'baseline')} s")
    print("\nBatchNorm re-estimation only: covariance loss / weights loss (target 1, at 50 %: at most 0.5)")
    for budget in ("", "_70", "_30"):
        for method in ("svd", "tucker2", "cp_als", "cpd_epc"):
            weights = frame["vs_control"].get(f"{method}{budget}_bn")
            for fit in ("_cov", "_cov_bw"):
                covariance = frame["vs_control"].get(f"{method}{fit}{budget}_bn")
                if weights is not None and covariance is not None and pd.notna(weights) and pd.notna(covariance):
                    print(f"  {budget.strip('_') or '50'} % {method}{fit}: weights {weights:+.2f}, "
                          f"{fit.strip('_')} {covariance:+.2f}, ratio {covariance / weights:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
