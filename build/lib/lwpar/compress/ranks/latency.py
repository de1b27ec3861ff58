"""Compression planned by measured latency: a per-layer latency table of each factorizable layer and
of its replacements at candidate ranks, timed on a target, and the `latency` rank policy's allocation,
which spends accuracy where it buys the most measured time.

The table times each layer and each replacement alone, at the layer's input shape, and the whole
start model, through a `core.timing.Timer` (the latency stage gives it one that exports them to ONNX
and times them with ONNX Runtime on the target, at the profile's first batch size and thread count).
Every candidate is timed in each round, in a shuffled order, so that drift of the machine spreads
over all of them; the quartiles say how noisy the table is.

Savings timed alone do not add up to the whole model's: replacing many layers saved up to 1.5x more
than their sum predicted (docs/experiments/2026-12-04-latency-plans.md). So the table also times a
few calibration models, the whole model with sets of layers replaced (`calibration_plans`), and maps
the summed per-layer saving to the measured one through them (`Calibration`). A plan's latency is
predicted as the whole model's minus its calibrated saving; the report sets that prediction against
the exported model's measured latency.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lwpar.compress.decompose import methods as M
from lwpar.compress.decompose.factorize import apply_plan
from lwpar.compress.ranks.measured import curve_ranks, curve_scores
from lwpar.compress.ranks.registry import Planning, register
from lwpar.core.errors import LwparError
from lwpar.core.timing import Timed, Timer


@dataclass(frozen=True)
class Candidate:
    layer: str
    method: str | None     # None: the layer as it is
    rank: int | None
    input_shape: tuple     # (batch, channels, height, width), or (batch, features) for a linear layer


def candidates(model: nn.Module, info: list[dict], ranks: dict[str, list[int]], batch: int = 1) -> dict[Candidate, nn.Module]:
    """Each layer of `info` as it is, and its replacement at each of `ranks[layer]`, with random weights
    (timing does not depend on the values), ready to be timed alone."""
    modules = dict(model.named_modules())
    table = {}
    for entry in info:
        layer = modules[entry["layer"]]
        (h, w), _ = entry["io"]
        shape = (batch, entry["shape"]["in"], h, w) if isinstance(layer, nn.Conv2d) else (batch, entry["shape"]["in"])
        table[Candidate(entry["layer"], None, None, shape)] = layer
        for rank in ranks.get(entry["layer"], []):
            replacement = M.method(entry["method"]).empty(layer, entry["shape"], rank)
            with torch.no_grad():
                for p in replacement.parameters():
                    p.normal_(0, 0.05)
            table[Candidate(entry["layer"], entry["method"], rank, shape)] = replacement
    return table


WHOLE_MODEL = "<model>"


def calibration_plans(info: list[dict], ranks: dict[str, list[int]], timed: dict[Candidate, dict]) -> list[dict]:
    """The sets of replacements the calibration models make: at each candidate rank index, every layer
    whose replacement there is faster than the layer, and every other one of them (in model order).
    Each: {"name", "ranks": {layer: rank}, "raw_saving_ms"}: the saving the per-layer table predicts."""
    own = {c.layer: t["median_ms"] for c, t in timed.items() if c.method is None}
    alone = {(c.layer, c.rank): t["median_ms"] for c, t in timed.items() if c.method is not None}
    plans = []
    for index in range(max((len(r) for r in ranks.values()), default=0)):
        faster = [(e["layer"], ranks[e["layer"]][index]) for e in info if index < len(ranks.get(e["layer"], []))
                  and alone[(e["layer"], ranks[e["layer"]][index])] < own[e["layer"]]]
        subsets = [("all", faster)] * bool(faster) + [("alternate", faster[::2])] * (len(faster) >= 2)
        for subset, chosen in subsets:
            plans.append({"name": f"<rank {index}, {subset}>", "ranks": dict(chosen),
                          "raw_saving_ms": sum(own[layer] - alone[(layer, rank)] for layer, rank in chosen)})
    return plans


def structural_model(model: nn.Module, info: list[dict], ranks: dict[str, int]) -> nn.Module:
    """A copy of `model` with the layers of `ranks` replaced at those ranks, random weights (timing only)."""
    by_name = {e["layer"]: e for e in info}
    replaced = copy.deepcopy(model)
    apply_plan(replaced, [{**by_name[layer], "rank": rank} for layer, rank in ranks.items()], decompose=False)
    with torch.no_grad():
        for layer in ranks:
            for p in replaced.get_submodule(layer).parameters():
                p.normal_(0, 0.05)
    return replaced.eval()


class Calibration:
    """Measured whole-model saving as a function of the summed per-layer saving: piecewise linear through
    the origin and the calibration models' points (made non-decreasing), proportional beyond the last.
    Without points it is the identity (the per-layer sum)."""

    def __init__(self, points: list[tuple[float, float]]):
        points = sorted((raw, measured) for raw, measured in points if raw > 0)
        self.raw = np.array([0.0] + [p[0] for p in points])
        self.measured = np.maximum.accumulate(np.array([0.0] + [max(p[1], 0.0) for p in points]))

    def __call__(self, raw_saving: float) -> float:
        if len(self.raw) == 1:
            return raw_saving
        if raw_saving <= self.raw[-1]:
            return float(np.interp(raw_saving, self.raw, self.measured))
        return raw_saving * self.measured[-1] / self.raw[-1]


def latency_allocation(info: list[dict], reference: float, scores: dict[tuple[str, int], float],
                       timed: dict[Candidate, dict], model_ms: float, target_ms: float,
                       calibration: Calibration | None = None) -> tuple[list[dict], float]:
    """Ranks that bring the predicted latency to `target_ms` at the least measured accuracy loss:
    starting from the unfactorized model, repeatedly take the move (a layer to a faster rank) with the
    smallest loss of validation score per millisecond saved. A replacement that is not faster than the
    layer it replaces is never taken. `scores[(layer, rank)]`: the validation score with only that layer
    factorized at that rank; `reference`: the unfactorized score. The predicted latency is `model_ms`
    minus the calibrated sum of the per-layer savings. Returns the plan and its predicted latency; an
    unreachable target is an LwparError naming the best reachable latency."""
    calibration = calibration or Calibration([])
    own = {c.layer: t["median_ms"] for c, t in timed.items() if c.method is None}
    options = {}
    for c, t in timed.items():
        if c.method is not None and t["median_ms"] < own[c.layer] and (c.layer, c.rank) in scores:
            options.setdefault(c.layer, []).append((c.rank, t["median_ms"], reference - scores[(c.layer, c.rank)]))
    fastest = model_ms - calibration(sum(own[layer] - min(o[1] for o in opts) for layer, opts in options.items()))
    if fastest > target_ms:
        raise LwparError(f"latency target {target_ms:.2f} ms is out of reach: the fastest plan predicts "
                         f"{fastest:.2f} ms ({model_ms / fastest:.2f}x of {model_ms:.2f} ms)")
    chosen = {}  # layer -> (rank, ms, loss)
    predicted, raw_saving = model_ms, 0.0
    while predicted > target_ms:
        best = None
        for layer, opts in options.items():
            current_ms, current_loss = chosen[layer][1:] if layer in chosen else (own[layer], 0.0)
            for rank, ms, loss in opts:
                saved = current_ms - ms
                if saved <= 0:
                    continue
                cost = max(loss - current_loss, 0.0) / saved
                if best is None or (cost, -saved) < best[0]:
                    best = ((cost, -saved), layer, (rank, ms, loss), saved)
        _, layer, pick, saved = best  # some move exists: the fastest plan reaches the target
        chosen[layer] = pick
        raw_saving += saved
        predicted = model_ms - calibration(raw_saving)
    by_name = {e["layer"]: e for e in info}
    # every row also carries the plan's whole-model figures, so the per-layer table alone tells the
    # report what speed-up was planned
    plan = [{**by_name[layer], "rank": rank, "own_ms": own[layer], "predicted_ms": ms, "val_drop": loss,
             "plan_model_ms": model_ms, "plan_predicted_ms": predicted, "plan_uncalibrated_ms": model_ms - raw_saving}
            for layer, (rank, ms, loss) in chosen.items()]
    return plan, predicted


TABLE_FORMAT = "lwpar-latency-table/2"


def table_entries(timed: dict[Candidate, dict]) -> list[dict]:
    return [{"layer": c.layer, "method": c.method, "rank": c.rank, "input_shape": list(c.input_shape), **t}
            for c, t in timed.items()]


def read_table(table: dict, info: list[dict]) -> tuple[dict[Candidate, dict], float, Calibration]:
    """The timed candidates of a latency table, the whole model's median ms and the calibration,
    checked against the layers being planned; a table measured for other ones is an LwparError."""
    if table.get("format") != TABLE_FORMAT:
        raise LwparError(f"latency table: format {table.get('format')!r}, this lwpar reads {TABLE_FORMAT!r}")
    timed = {Candidate(e["layer"], e["method"], e["rank"], tuple(e["input_shape"])):
             {k: e[k] for k in ("median_ms", "q1_ms", "q3_ms")} for e in table["candidates"]}
    measured = {c.layer for c in timed}
    missing = [e["layer"] for e in info if e["layer"] not in measured]
    if missing:
        raise LwparError(f"latency table: no timing for layer {missing[0]} ({len(missing)} missing): it was measured "
                         f"for other layers")
    whole = [t for c, t in timed.items() if c.layer == WHOLE_MODEL]
    calibration = Calibration([(c["raw_saving_ms"], c["saving_ms"]) for c in table.get("calibration", [])])
    return {c: t for c, t in timed.items() if c.layer != WHOLE_MODEL}, whole[0]["median_ms"], calibration


def measure_table(model: nn.Module, info: list[dict], fractions: list[float], multiple: int, batch: int,
                  input_size, timer: Timer) -> dict:
    """The latency table of `model`'s layers `info`: each layer alone and its replacement at every rank
    of `curve_ranks`, and the whole model, timed by `timer`; then the calibration models beside the
    whole model, which map summed per-layer savings to measured ones. Returns the table's fields."""
    ranks = {e["layer"]: curve_ranks(e, fractions, multiple) for e in info}
    table = candidates(model, info, ranks, batch)
    whole_key = Candidate(WHOLE_MODEL, None, None, (batch, 3, *input_size))
    table[whole_key] = model
    started = time.time()
    timed = timer({key: Timed(module, key.input_shape, whole=key.layer.startswith("<")) for key, module in table.items()})
    # second pass: the whole model with sets of layers replaced, beside the whole model as it is
    plans = calibration_plans(info, ranks, timed)
    keys = [Candidate(p["name"], None, None, whole_key.input_shape) for p in plans]
    models = {whole_key: model, **{key: structural_model(model, info, p["ranks"]) for key, p in zip(keys, plans)}}
    calibrated = timer({key: Timed(module, key.input_shape, whole=True) for key, module in models.items()})
    whole_again = calibrated[whole_key]["median_ms"]
    calibration = [{"name": p["name"], "layers": len(p["ranks"]), "raw_saving_ms": p["raw_saving_ms"],
                    **calibrated[key], "saving_ms": whole_again - calibrated[key]["median_ms"]}
                   for key, p in zip(keys, plans)]
    spread = [(t["q3_ms"] - t["q1_ms"]) / t["median_ms"] for t in timed.values() if t["median_ms"] > 0]
    return {"seconds": round(time.time() - started, 1), "relative_iqr_median": float(np.median(spread)),
            "candidates": table_entries(timed), "calibration_model_ms": whole_again, "calibration": calibration,
            "whole_model_ms": timed[whole_key]["median_ms"]}


def _measure(planning: Planning) -> list[dict]:
    """What the sensitivity stage measures for this policy: the scores only (the ranks need the table)."""
    _scores(planning)
    return []


@register("latency", measure=_measure)
def latency(planning: Planning) -> list[dict]:
    """Allocation by measured latency: the sensitivity scores spent against the latency table."""
    if planning.latency_table is None:
        raise LwparError("rank policy 'latency' allocates from measured latencies: it needs a latency table")
    timed, model_ms, calibration = read_table(planning.latency_table, planning.info)
    chosen, _ = latency_allocation(planning.info, planning.probe.baseline(), _scores(planning), timed, model_ms,
                                   model_ms / planning.policy["speedup"], calibration)
    return chosen


def _scores(planning: Planning) -> dict[tuple[str, int], float]:
    """The unfactorized score and every layer's score at each of its candidate ranks."""
    planning.probe.baseline()
    return curve_scores(planning.probe, planning.info, planning.policy["search"]["fractions"], planning.multiple)
