"""The report, written: comparison.csv and .md, per_attribute_delta.csv, compression.csv,
decomposition_layers.csv, int8_error.csv and the plots, from the inputs it is given."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lwpar.core.errors import LwparError
from lwpar.core.io import atomic_path, write_csv, write_text
from lwpar.report.inputs import Inputs
from lwpar.report.markdown import markdown
from lwpar.report.plans import latency_plans, profile_machines, pruning_plans
from lwpar.report.plots import plots
from lwpar.report.tables import (across_targets, breaking_points, collect, compression, decomposition_layers,
                                 decomposition_summary, int8_errors, latency_split, reliability, runtime_verdicts)


def write_report(inputs: Inputs, params: dict, out_dir: Path, stamp: str) -> int:
    """Writes every table and plot into `out_dir`; returns the comparison's row count."""
    table, attributes = collect(inputs, params)
    if table.empty:
        raise LwparError("no profile results among the report's inputs (run the profile stage first)")
    compressed, layers = compression(inputs, params), decomposition_layers(inputs)
    write_csv(out_dir / "comparison.csv", table)
    write_csv(out_dir / "compression.csv", compressed)
    write_csv(out_dir / "decomposition_layers.csv", layers)
    int8 = int8_errors(inputs, params)
    write_csv(out_dir / "int8_error.csv", int8)
    plans = latency_plans(table, layers, params, profile_machines(inputs), pruning_plans(inputs))
    across = across_targets(table)
    write_csv(out_dir / "across_runtimes.csv", across)
    write_text(out_dir / "comparison.md", markdown(table, stamp, latency_split(inputs), compressed,
                                                   decomposition_summary(layers), breaking_points(table, params), plans,
                                                   int8, across, runtime_verdicts(across)))
    write_csv(out_dir / "per_attribute_delta.csv", attributes)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for path in plots(table, Path(tmp), reliability(inputs)):
            with atomic_path(out_dir / "plots" / path.name) as target:
                path.replace(target)
    return len(table)
