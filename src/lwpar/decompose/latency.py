"""Compression planned by measured latency: a per-layer latency table of each factorizable layer and
of its replacements at candidate ranks, timed on a target, and the `latency` rank policy's allocation,
which spends accuracy where it buys the most measured time.

The table times each layer and each replacement alone, as a one-layer ONNX model at the layer's input
shape, and the whole start model, with ONNX Runtime on the target at the profile's first batch size
and thread count (one benchmark worker holding every model, run through the target's commands like
the profile's). Every candidate is timed in each round, in a shuffled order, so that drift of the
machine spreads over all of them (`measure`); the quartiles say how noisy the table is.

Savings timed alone do not add up to the whole model's: replacing many layers saved up to 1.5x more
than their sum predicted (docs/experiments/2026-12-04-latency-plans.md). So the table also times a
few calibration models, the whole model with sets of layers replaced (`calibration_plans`), and maps
the summed per-layer saving to the measured one through them (`Calibration`). A plan's latency is
predicted as the whole model's minus its calibrated saving; the report sets that prediction against
the exported model's measured latency.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lwpar import LwparError
from lwpar.decompose import methods as M


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
    import copy

    from lwpar.decompose.factorize import apply_plan

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


def export_candidates(table: dict[Candidate, nn.Module], folder: Path) -> dict[Candidate, str]:
    """Each candidate as its own ONNX file in `folder` (fixed input shape); returns the file names.
    The whole model (layer WHOLE_MODEL) goes through the export stage's own exporter, so that it is
    timed as the profile will time it."""
    from lwpar.export import export_onnx

    names = {}
    for index, (key, module) in enumerate(table.items()):
        names[key] = f"{index:04d}.onnx"
        if key.layer.startswith("<"):  # the whole model, or a calibration model
            export_onnx(module.eval(), list(key.input_shape[2:]), folder / names[key])
            continue
        example = torch.randn(*key.input_shape)
        torch.onnx.export(module.eval(), (example,), str(folder / names[key]), input_names=["x"], opset_version=18,
                          dynamo=False)
    return names


def measure(table: dict[Candidate, nn.Module], timer: Callable[[Candidate, nn.Module], float], rounds: int = 7,
            seed: int = 0) -> dict[Candidate, dict]:
    """Median and quartiles (ms) of every candidate over `rounds` rounds, each timing all candidates
    in a fresh random order (interleaved: the machine's drift spreads over all of them)."""
    order = list(table)
    times = {key: [] for key in order}
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            times[key].append(timer(key, table[key]))
    return {key: {"median_ms": float(np.median(v)), "q1_ms": float(np.percentile(v, 25)),
                  "q3_ms": float(np.percentile(v, 75))} for key, v in times.items()}


def plan_settings(profile: dict) -> tuple[int, int]:
    """The batch size and thread count latency plans are timed at: the profile's first of each (threads 0:
    every core), so that a plan and the profile's first row measure the same thing."""
    from lwpar.profile import thread_count

    return profile["batch_sizes"][0], thread_count(profile["threads"][0])


def time_on_target(models: dict[Candidate, nn.Module], target: dict, batch: int, threads: int, profile: dict,
                   seed: int = 0) -> dict[Candidate, dict]:
    """`measure` with ONNX Runtime on `target` (params profile.targets entry): every model exported
    (`export_candidates`), staged through the target's commands, each session created and warmed before
    any round, then `profile["rounds"]` interleaved rounds of `profile["iters_per_round"]` runs each."""
    import tempfile

    from lwpar.profile import Worker, stage_on_target

    with tempfile.TemporaryDirectory(prefix="lwpar-latency-") as folder:
        files = export_candidates(models, Path(folder))
        placed = stage_on_target({"table": Path(folder)}, target)["table"]
        worker = Worker(Path(folder), target, placed)
        try:
            for key in models:
                worker.run(batch, threads, max(profile["warmup"], 1), model=files[key])
            return measure(models, lambda key, _: float(np.median(worker.run(
                batch, threads, profile["iters_per_round"], model=files[key]))) * 1000,
                rounds=profile["rounds"], seed=seed)
        finally:
            worker.close()


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
