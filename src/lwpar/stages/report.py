"""Build the comparison from every variant's evaluation and profile results: comparison.csv and
comparison.md (one row per dataset, model, variant, target, batch and threads), per-attribute mA
deltas against the baseline, plots (mA against measured latency with the Pareto front, and mA
against MACs) as PNG and SVG, each compressed variant's validation mA before and after fine-tuning
(compression.csv) and every decomposed layer's row (decomposition_layers.csv).
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--results", required=True, type=Path, help="results tree (<dataset>/<model>/...)")
    parser.add_argument("--out-dir", required=True, type=Path, help="where comparison.* and plots/ go")


def run(args, params) -> None:
    import platform
    import tempfile
    from datetime import datetime, timezone

    from lwpar import LwparError
    from lwpar.io import atomic_path, write_csv, write_text
    from lwpar.report import (collect, compression, decomposition_layers, decomposition_summary, latency_plans,
                              latency_split, breaking_points, markdown, plots, profile_machines, pruning_plans,
                              reliability)

    table, attributes = collect(args.results, params)
    if table.empty:
        raise LwparError(f"{args.results}: no profile results found (run the profile stage first)")
    stamp = (f"Produced by `lwpar report` on {platform.node() or 'unknown host'} ({platform.machine()}), "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.")
    compressed, layers = compression(args.results, params), decomposition_layers(args.results)
    write_csv(args.out_dir / "comparison.csv", table)
    write_csv(args.out_dir / "compression.csv", compressed)
    write_csv(args.out_dir / "decomposition_layers.csv", layers)
    write_text(args.out_dir / "comparison.md", markdown(table, stamp, latency_split(args.results), compressed,
                                                        decomposition_summary(layers), breaking_points(table, params),
                                                        latency_plans(table, layers, params, profile_machines(args.results),
                                                                      pruning_plans(args.results))))
    write_csv(args.out_dir / "per_attribute_delta.csv", attributes)
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        for path in plots(table, Path(tmp), reliability(args.results)):
            with atomic_path(args.out_dir / "plots" / path.name) as target:
                path.replace(target)
    print(f"{args.out_dir / 'comparison.md'}: {len(table)} rows")
