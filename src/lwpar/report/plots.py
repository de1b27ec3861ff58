"""The report's plots: mA against measured latency (with the Pareto front) and against MACs, FP32 and
INT8 models in panels side by side, and the reliability diagram; PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lwpar.core.names import fp32_name, quantized_form
from lwpar.report.tables import pareto_front


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
    FP32 and INT8 models get a panel each (same axes, same colours), so that neither hides the other.
    Latency: one row of panels per target (its runtime's latencies and scores, its own front); MACs:
    the first target's scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    scored = table.dropna(subset=["mA"])
    every = scored[(scored.batch == scored.batch.min()) & (scored.threads == scored.threads.min())]
    every = every.assign(method=every.method.fillna(every.variant).astype(str))
    targets = list(dict.fromkeys(every.target))
    prefix_models = every[["dataset", "model"]].drop_duplicates().shape[0] > 1
    families = sorted({fp32_name(m) for m in every.method})
    colors = dict(zip(families, [plt.get_cmap("tab20").colors[i % 20] for i in range(len(families))]))
    quantized = every.variant.map(lambda v: quantized_form(v) is not None)  # every quantized form: the INT8 panel
    kinds = ["FP32", "INT8"] if quantized.any() and (~quantized).any() else [""]
    for kind, column, label, shown in (("latency", "latency_ms_median", "median latency (ms), batch 1, 1 thread",
                                        targets), ("macs", "macs", "MACs per image", targets[:1])):
        fig, axes = plt.subplots(len(shown), len(kinds), figsize=(6 * len(kinds) + 2, 5 * len(shown)), sharey=True,
                                 squeeze=False)
        for axes_row, target in zip(axes, shown):
            one = every[every.target == target]
            runtime = one.runtime.iloc[0] if "runtime" in one and len(one) else ""
            int8 = quantized.loc[one.index]
            for ax, title in zip(axes_row, kinds):
                rows = int8 if title == "INT8" else ~int8 if title == "FP32" else int8 | ~int8
                _panel(ax, one, rows, column, kind, prefix_models, colors,
                       f"{title} on {target} ({runtime})" if len(shown) > 1 else title)
                ax.set_xlabel(label)
        for axes_row in axes:
            axes_row[0].set_ylabel("test mA (%)")
        handles = {}
        for ax in axes.flat:
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


def _panel(ax, one: pd.DataFrame, rows: pd.Series, column: str, kind: str, prefix_models: bool, colors: dict,
           title: str) -> None:
    """One panel: each method's budgets joined, each point named, and (latency) the front over every
    model of the target, FP32 and INT8."""
    for (dataset, model), everything in one.groupby(["dataset", "model"]):
        everything = everything.dropna(subset=[column])
        group = everything[rows.loc[everything.index]]
        prefix = f"{dataset} / {model}: " if prefix_models else ""
        for method, budgets in group.groupby("method", sort=True):  # one method's budgets, joined
            budgets = budgets.sort_values(column)
            # a method's mixed-precision and NNCF forms: its colour, their own markers, named apart in the legend
            marker = {"mixed": "s", "nncf": "^"}.get(quantized_form(method), "o")
            ax.plot(budgets[column], budgets["mA"] * 100, f"{marker}-" if len(budgets) > 1 else marker, lw=0.8, ms=5,
                    color=colors[fp32_name(method)], label=prefix + method.removesuffix("+int8"))
        x, y = group[column].to_numpy(float), group["mA"].to_numpy(float) * 100
        for name, xi, yi, offset in zip(group.variant, x, y, label_offsets(x, y, list(group.variant))):
            ax.annotate(name.removesuffix("+int8"), (xi, yi), fontsize=6, xytext=offset, textcoords="offset points")
        if kind == "latency" and len(everything):
            ex, ey = everything[column].to_numpy(float), everything["mA"].to_numpy(float) * 100
            front = pareto_front(ex, ey)
            order = np.argsort(ex[front])
            ax.plot(ex[front][order], ey[front][order], "--", lw=1, color="black", alpha=0.6,
                    label=f"{prefix}Pareto front (all models)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


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
