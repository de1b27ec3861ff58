"""Derive workflow/params/smoke.yaml from params.yaml: same keys and comments, small values.

    python workflow/scripts/make_smoke_params.py
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDITS = {
    "# lwpar: the only configuration.": "# lwpar smoke configuration: every stage on a small real PETA subset, in minutes (tests, CI).\n"
                                        "# Derived from params.yaml by workflow/scripts/make_smoke_params.py.",
    "  data: data                      #": "  data: data/smoke                #",
    "  results: results                #": "  results: results/smoke          #",
    "    max_persons: null             #": "    max_persons: 150              #",
    "    input_size: [256, 128]        #": "    input_size: [64, 32]          #",
    "\n  batch_size: 64\n  lr": "\n  batch_size: 32\n  lr",
    "  calibration_images: 256 ": "  calibration_images: 64  ",
    "val_images: 512, calibration_batches: 4, fractions: [0.1, 0.2, 0.3, 0.5, 0.7]":
        "val_images: 64, calibration_batches: 2, fractions: [0.1, 0.3, 0.5]",
    # profiling: two batch sizes and two thread counts as in params.yaml, few rounds (a smoke run
    # checks that every artifact is timed, not how fast)
    "  batch_sizes: [1, 32]\n": "  batch_sizes: [1, 8]\n",
    "  warmup: 5                       #": "  warmup: 1                       #",
    "  rounds: 10                      #": "  rounds: 3                       #",
    "  iters_per_round: 5\n": "  iters_per_round: 2\n",
    # the smoke run also covers the multi-stage variant (compress the heads of lwalm's model), which
    # the default experiment defines but does not run
    "  variants: [svd_r50, svd_greedy50, lwalm, prune_l2_r50]\n  int8: [baseline, svd_r50, svd_greedy50, lwalm, prune_l2_r50]":
        "  variants: [svd_r50, svd_greedy50, lwalm, lwalm_heads, prune_l2_r50]\n  int8: [baseline, lwalm_heads]",

}


def main() -> None:
    text = (ROOT / "params.yaml").read_text()
    for old, new in EDITS.items():
        if old not in text:
            raise SystemExit(f"params.yaml no longer contains {old!r}: update {__file__}")
        text = text.replace(old, new)
    text = text.replace("finetune: {epochs: 2,", "finetune: {epochs: 1,")
    text, count = re.subn(r"(?m)^  epochs: \d+$", "  epochs: 1", text)  # train.epochs, whatever it is
    if count != 1:
        raise SystemExit("params.yaml: expected one train.epochs line")
    (ROOT / "workflow/params/smoke.yaml").write_text(text)


if __name__ == "__main__":
    main()
