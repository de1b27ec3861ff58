"""Comparison tables and plots from every evaluation and profile.

comparison.csv and comparison.md (one row per dataset, model, artifact, target, batch and threads),
per-attribute mA deltas against the baseline, plots (mA against measured latency with the Pareto
front, and mA against MACs) as PNG and SVG, each compressed variant's validation mA before and after
fine-tuning (compression.csv), every decomposed layer's row (decomposition_layers.csv) and where each
INT8 artifact departs from its FP32 source (int8_error.csv, from its node_error.csv). Every file
it reads is an argument, named <dataset>/<model>/<artifact, variant or target>.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag

_PAIRS = dict(nargs="*", default=[], metavar="D/M/NAME=PATH")
FLAGS = [
    flag("--profiles", "profile JSON of each dataset, model and target", "pairs:profiles", **_PAIRS),
    flag("--metrics", "each scored artifact's eval/metrics.json", "pairs:metrics", **_PAIRS),
    flag("--per-attribute", "each scored artifact's eval/per_attribute.csv", "pairs:per_attribute", **_PAIRS),
    flag("--layers", "each decomposition variant's layers.csv", "pairs:layers", **_PAIRS),
    flag("--prune", "each pruning variant's prune.json", "pairs:prune", **_PAIRS),
    flag("--finetune", "each variant's finetune.json", "pairs:finetune", **_PAIRS),
    flag("--int8-errors", "each INT8 artifact's node_error.csv", "pairs:int8_errors", **_PAIRS),
    flag("--target-metrics", "metrics.json of each artifact scored by a target's runtime (D/M/NAME@TARGET=PATH)",
         "pairs:target_metrics", **_PAIRS),
    flag("--out-dir", "where comparison.* and plots/ go", "folder:csv", type=Path, required=True),
]


def run(args, params) -> None:
    import platform
    from datetime import datetime, timezone

    from lwpar.report.build import write_report
    from lwpar.report.inputs import Inputs
    from lwpar.stages import named_paths

    inputs = Inputs.from_pairs(**{kind: named_paths(getattr(args, kind), kind.replace("_", "-"))
                                  for kind in ("profiles", "metrics", "per_attribute", "layers", "prune", "finetune",
                                               "int8_errors", "target_metrics")})
    stamp = (f"Produced by `lwpar report` on {platform.node() or 'unknown host'} ({platform.machine()}), "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.")
    rows = write_report(inputs, params, args.out_dir, stamp)
    print(f"{args.out_dir / 'comparison.md'}: {rows} rows")
