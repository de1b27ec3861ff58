"""Compression planned by measured latency (work in progress, not yet a pipeline stage): a per-layer
latency table of each factorizable layer and of its replacements at candidate ranks, timed on a
target, and the `latency` allocation that spends accuracy where it buys the most measured time.

The table times each layer and each replacement alone, as a one-layer ONNX model at the layer's input
shape, with ONNX Runtime at the profile's threads and batch; every candidate is timed in each round,
in a shuffled order, so that drift of the machine spreads over all of them (`measure`). The model's
latency is predicted as the measured whole model's plus, per replaced layer, its replacement's time
minus its own; how far that prediction is from the exported model's measured latency is what the
report must show.
"""

from __future__ import annotations

import random
import tempfile
import time
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


def onnx_timer(threads: int = 1, warmup: int = 5, iters: int = 20):
    """A timer for `measure`: exports each module to ONNX once and times `iters` runs per call (ms per
    run), with ONNX Runtime on `threads` threads."""
    import onnxruntime as ort

    folder = Path(tempfile.mkdtemp(prefix="lwpar-latency-"))
    sessions = {}

    def session(key: Candidate, module: nn.Module):
        if key not in sessions:
            path = folder / f"{len(sessions)}.onnx"
            example = torch.randn(*key.input_shape)
            torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], opset_version=18, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"x": example.numpy()}
            for _ in range(warmup):
                run.run(None, feed)
            sessions[key] = (run, feed)
        return sessions[key]

    def timer(key: Candidate, module: nn.Module) -> float:
        run, feed = session(key, module)
        started = time.perf_counter()
        for _ in range(iters):
            run.run(None, feed)
        return (time.perf_counter() - started) * 1000 / iters

    return timer


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


def latency_allocation(info: list[dict], reference: float, scores: dict[tuple[str, int], float],
                       timed: dict[Candidate, dict], model_ms: float, target_ms: float) -> tuple[list[dict], float]:
    """Ranks that bring the predicted latency to `target_ms` at the least measured accuracy loss:
    starting from the unfactorized model, repeatedly take the move (a layer to a faster rank) with the
    smallest loss of validation score per millisecond saved. A replacement that is not faster than the
    layer it replaces is never taken. `scores[(layer, rank)]`: the validation score with only that layer
    factorized at that rank; `reference`: the unfactorized score. Returns the plan and its predicted
    latency; an unreachable target is an LwparError naming the best reachable latency."""
    own = {c.layer: t["median_ms"] for c, t in timed.items() if c.method is None}
    options = {}
    for c, t in timed.items():
        if c.method is not None and t["median_ms"] < own[c.layer] and (c.layer, c.rank) in scores:
            options.setdefault(c.layer, []).append((c.rank, t["median_ms"], reference - scores[(c.layer, c.rank)]))
    fastest = model_ms + sum(min(o[1] for o in opts) - own[layer] for layer, opts in options.items())
    if fastest > target_ms:
        raise LwparError(f"latency target {target_ms:.2f} ms is out of reach: the fastest plan predicts "
                         f"{fastest:.2f} ms ({model_ms / fastest:.2f}x of {model_ms:.2f} ms)")
    chosen = {}  # layer -> (rank, ms, loss)
    predicted = model_ms
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
        predicted -= saved
    by_name = {e["layer"]: e for e in info}
    plan = [{**by_name[layer], "rank": rank, "predicted_ms": ms, "val_drop": loss}
            for layer, (rank, ms, loss) in chosen.items()]
    return plan, predicted
