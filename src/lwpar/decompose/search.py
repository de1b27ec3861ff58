"""Rank selection beyond fixed formulas: EVBMF estimates, the LWALM per-layer search and an
AIMET-style greedy allocation of a global MAC budget.

The two measured policies score the model with one layer at a time replaced by its rank-r
factorization, BatchNorm statistics re-estimated on training batches, on a fixed validation subset
(never the test split). Every measurement lands in one sensitivity cache, keyed by layer, method
and rank, that is written as an artifact: a later plan (another budget, another eps) replays from
it and measures only what it lacks.

Everything that runs before the probed layer computes what it computed for the previous probe, so
with `reuse_prefix` those modules replay their recorded outputs instead of running again (measured
on ALM-Lite0 at 256 x 128: the backbone is 65 % of a forward and half of it precedes the average
probed layer).

- `search` (LWALM, Jha et al. 2023): per layer, a binary search over ranks (multiples of
  `multiple` up to the rank whose factors cost as much as the layer) for the smallest rank that
  loses at most `eps` of the metric against the unmodified model, BatchNorm re-estimated the same
  way; a layer that loses more than `eps` even at that rank is left alone.
- `greedy` (as AIMET's greedy compression-ratio selection): per layer, scores at a grid of
  parameter fractions; then one accuracy threshold for all layers, each taking its cheapest rank
  that scores at least the threshold, with the threshold lowered until the model's MACs reach
  `macs_fraction` of the original.
- `latency`: the same per-layer scores, spent against a table of measured per-layer latencies
  (`latency.latency_allocation`): cheapest accuracy loss per saved millisecond first, until the
  predicted latency is the start model's divided by `speedup`.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from lwpar import LwparError
from lwpar.config import MEASURED_POLICIES
from lwpar.decompose._evbmf import evbmf_rank
from lwpar.decompose.factorize import _replace, factorize_layer, factorized_macs, layer_info, original_macs, plan_ranks
from lwpar.decompose.methods import rank_for_fraction

BASELINE = "baseline"


def _clone(output):
    """A copy of every tensor in a module's output (a tensor, or tuples, lists and dicts of them)."""
    return tree_map_only(torch.Tensor, torch.clone, output)


class _Replay(nn.Module):
    """Stands in for a module that runs before the probed layer: its n-th call in training mode
    (BatchNorm re-estimation) or in evaluation mode (scoring) returns what the module returned in
    its n-th such call of an earlier measurement. Counting the two modes apart keeps the scores
    aligned when re-estimation is skipped (no BatchNorm after the layer). The output is a copy:
    in-place activations downstream would otherwise overwrite the record."""

    def __init__(self, outputs: dict):
        super().__init__()
        self.outputs, self.calls = outputs, {True: 0, False: 0}

    def forward(self, *args, **kwargs):
        outputs, done = self.outputs[self.training], self.calls[self.training]
        if done == len(outputs):
            raise LwparError(f"reuse_prefix: a module was called more often than in the measurement it replays "
                             f"({len(outputs)} calls): every measurement must make the same model calls")
        self.calls[self.training] += 1
        return _clone(outputs[done])


class SensitivityProbe:
    """Scores of the model with one layer factorized; `score(model)` and `recalibrate(model)` are
    supplied by the caller (validation subset, training batches). Without them the probe only
    replays its cache and names what is missing.

    `reuse_prefix` replays, instead of running, the modules that finish before the probed layer
    starts. It requires that every measurement makes the same model calls on the same inputs (fixed
    images and batches) and holds their outputs for all those calls in memory."""

    def __init__(self, model: nn.Module, score=None, recalibrate=None, seed: int = 0, epc: dict | None = None,
                 cache: dict | None = None, on_measure=None, reuse_prefix: bool = False):
        self.model, self.score, self.recalibrate, self.seed, self.epc = model, score, recalibrate, seed, epc
        self.cache = dict(cache or {})
        self.measured = 0
        self.on_measure = on_measure  # called with (key, score) after every new measurement
        self.reuse_prefix = reuse_prefix
        self._spans = None    # module name -> (first start, last end) within one forward, in call ticks
        self._recorded = {}   # module name -> its outputs, call by call per mode, over one measurement

    def _trace_hooks(self) -> list:
        """Hooks that record when each module starts and ends within the model's next forward."""
        tick, spans, forwards = itertools.count(), {}, []

        def started(name):
            def hook(module, args):
                if len(forwards) == 1:
                    spans.setdefault(name, [next(tick), None])
            return hook

        def ended(name):
            def hook(module, args, output):
                if len(forwards) == 1:
                    spans[name][1] = next(tick)
                    if not name:
                        self._spans = {n: tuple(span) for n, span in spans.items() if n}
            return hook

        handles = [self.model.register_forward_pre_hook(lambda module, args: forwards.append(1))]
        for name, module in self.model.named_modules():
            handles += [module.register_forward_pre_hook(started(name)), module.register_forward_hook(ended(name))]
        return handles

    def _prefix(self, layer: str) -> set[str]:
        """The largest modules whose every call ends before `layer` first starts."""
        if layer not in self._spans:
            return set()
        start = self._spans[layer][0]
        before = {name for name, (_, end) in self._spans.items() if end < start}

        def ancestors(name):  # all of them: a container the parent iterates (timm's blocks) is never called
            parts = name.split(".")
            return {".".join(parts[:i]) for i in range(1, len(parts))}
        return {name for name in before if not ancestors(name) & before}

    def _reuse(self, layer: str | None, hooks: list, replaced: dict) -> dict:
        """Replace the prefix's recorded modules by replays and record the rest of the prefix. Every
        hook and replaced module lands in `hooks` and `replaced` as soon as it is installed, so the
        caller can undo a partial installation."""
        if self._spans is None:
            hooks += self._trace_hooks()
            return {}
        prefix = self._prefix(layer) if layer else set()
        self._recorded = {name: outputs for name, outputs in self._recorded.items() if name in prefix}
        for name in sorted(self._recorded):  # a fixed order: a name never depends on set iteration
            replaced[name] = self.model.get_submodule(name)
            _replace(self.model, name, _Replay(self._recorded[name]))
        recording = {name: {True: [], False: []} for name in prefix - set(self._recorded)}
        for name, store in recording.items():
            hooks.append(self.model.get_submodule(name).register_forward_hook(
                lambda module, args, output, store=store: store[module.training].append(_clone(output))))
        return recording

    @staticmethod
    def key(layer: str, method: str, rank: int) -> str:
        return f"{layer}|{method}|{rank}"

    def _measure(self, key: str, prepare=None, layer: str | None = None) -> float:
        if key in self.cache:
            return self.cache[key]
        if self.score is None:
            raise LwparError(f"sensitivity cache has no score for {key}: run the sensitivity stage for this variant")
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [copy.deepcopy(m.state_dict()) for m in norms]
        restore = prepare() if prepare else None
        hooks, replaced = [], {}
        try:
            recording = self._reuse(layer, hooks, replaced) if self.reuse_prefix else {}
            if self.recalibrate:
                self.recalibrate(self.model)
            value = float(self.score(self.model.eval()))
            self._recorded.update(recording)  # only a measurement that ran to its end recorded every call
        finally:
            for handle in hooks:
                handle.remove()
            for name, module in replaced.items():
                _replace(self.model, name, module)
            if restore:
                restore()
            for m, state in zip(norms, saved):
                m.load_state_dict(state)
            self.model.eval()
        self.cache[key] = value
        self.measured += 1
        if self.on_measure:
            self.on_measure(key, value)
        return value

    def baseline(self) -> float:
        """The unmodified model's score, BatchNorm re-estimated like every probe's."""
        return self._measure(BASELINE)

    def __call__(self, entry: dict, rank: int) -> float:
        name = entry["layer"]

        def prepare():
            original = self.model.get_submodule(name)
            replacement, _ = factorize_layer(original, entry["method"], rank, self.seed, self.epc)
            _replace(self.model, name, replacement.to(next(original.parameters()).device))
            return lambda: _replace(self.model, name, original)
        return self._measure(self.key(name, entry["method"], rank), prepare, name)


def candidate_ranks(entry: dict, multiple: int) -> list[int]:
    """Multiples of `multiple` whose factorized layer costs fewer MACs than the layer itself (rounding
    the break-even rank up to a multiple could otherwise make a "compressed" layer dearer)."""
    top = rank_for_fraction(entry["method"], entry["shape"], 1.0, multiple)
    before = original_macs(entry["shape"], entry["io"])
    return [r for r in range(multiple, top + 1, multiple)
            if factorized_macs(entry["method"], entry["shape"], r, entry["io"]) < before]


def lwalm_search(probe: SensitivityProbe, info: list[dict], eps: float, multiple: int) -> list[dict]:
    reference = probe.baseline()
    plan = []
    for entry in info:
        ranks = candidate_ranks(entry, multiple)
        if not ranks or reference - probe(entry, ranks[-1]) > eps:
            continue  # even the costliest factorization loses too much: the layer stays as it is
        lo, hi = 0, len(ranks) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reference - probe(entry, ranks[mid]) <= eps else (mid + 1, hi)
        plan.append({**entry, "rank": ranks[lo], "val_drop": reference - probe(entry, ranks[lo])})
    return plan


def curve_ranks(entry: dict, fractions: list[float], multiple: int) -> list[int]:
    """The ranks a layer is scored (and, for `latency`, timed) at: one per parameter fraction."""
    return sorted({rank_for_fraction(entry["method"], entry["shape"], f, multiple) for f in fractions})


def curve_scores(probe: SensitivityProbe, info: list[dict], fractions: list[float], multiple: int) -> dict[tuple[str, int], float]:
    """The validation score with each layer alone factorized at each of its candidate ranks (`curve_ranks`):
    what the greedy and latency policies allocate from, and what the sensitivity stage measures for them."""
    return {(e["layer"], r): probe(e, r) for e in info for r in curve_ranks(e, fractions, multiple)}


def greedy_allocation(probe: SensitivityProbe, info: list[dict], fractions: list[float], multiple: int,
                      macs_fraction: float, total_macs: int) -> list[dict]:
    reference = probe.baseline()
    scores = curve_scores(probe, info, fractions, multiple)
    curves = []  # per layer: (rank, MACs, score), cheapest first
    for entry in info:
        curves.append([(r, factorized_macs(entry["method"], entry["shape"], r, entry["io"]), scores[(entry["layer"], r)])
                       for r in curve_ranks(entry, fractions, multiple)])
    before = [original_macs(e["shape"], e["io"]) for e in info]
    fixed = total_macs - sum(before)
    target = macs_fraction * total_macs

    def choose(threshold):
        picks = []
        for layer_macs, curve in zip(before, curves):
            good = [(macs, rank, score) for rank, macs, score in curve if score >= threshold and macs < layer_macs]
            picks.append(min(good) if good else None)
        cost = fixed + sum(p[0] if p else layer_macs for layer_macs, p in zip(before, picks))
        return cost, picks

    thresholds = sorted({s for curve in curves for *_, s in curve} | {reference}, reverse=True)
    for threshold in thresholds:  # the highest accuracy floor whose cheapest choices meet the budget
        cost, picks = choose(threshold)
        if cost <= target:
            break
    else:
        raise LwparError(f"MAC budget {macs_fraction:g} is out of reach with parameter fractions {fractions}: "
                         f"the cheapest ranks still cost {cost / total_macs:.3f} of the model's MACs")
    return [{**e, "rank": p[1], "val_drop": reference - p[2]} for e, p in zip(info, picks) if p]


def evbmf_ranks(model: nn.Module, info: list[dict], multiple: int) -> list[dict]:
    """The largest EVBMF rank of the kernel's output- and input-channel unfoldings, rounded up."""
    plan = []
    for entry in info:
        weight = model.get_submodule(entry["layer"]).weight.detach().double().cpu()
        out_channels, in_channels = weight.shape[:2]
        unfoldings = (weight.reshape(out_channels, -1), weight.transpose(0, 1).reshape(in_channels, -1))
        keep = max(1, *(evbmf_rank(u.numpy()) for u in unfoldings))
        rounded = int(np.ceil(keep / multiple)) * multiple if multiple else keep
        plan.append({**entry, "rank": min(rounded, max(min(out_channels, in_channels), 1))})
    return plan


def plan(model: nn.Module, names: list[str], methods: dict, input_size, policy: dict, total_macs: int,
         probe: SensitivityProbe | None = None, latency_table: dict | None = None) -> list[dict]:
    """Ranks per layer under any policy: the formula policies of `plan_ranks`, or evbmf / search /
    greedy / latency. `latency_table`: the `latency` stage's measurements; without it, the latency
    policy only measures its scores (the sensitivity stage) and plans nothing."""
    name = policy["policy"]
    if name not in ("evbmf", *MEASURED_POLICIES):
        return plan_ranks(model, names, methods, input_size, policy, total_macs=total_macs)
    info = layer_info(model, names, methods, input_size)
    multiple = policy["multiple"]
    if name == "evbmf":
        return evbmf_ranks(model, info, multiple)
    if probe is None:
        raise LwparError(f"rank policy {name!r} measures accuracy: it needs a sensitivity probe")
    settings = policy["search"]
    if name == "search":
        return lwalm_search(probe, info, settings["eps"], multiple)
    if name == "latency":
        from lwpar.decompose.latency import latency_allocation, read_table

        if latency_table is None:
            raise LwparError("rank policy 'latency' allocates from measured latencies: it needs a latency table")
        timed, model_ms, calibration = read_table(latency_table, info)
        chosen, _ = latency_allocation(info, probe.baseline(), curve_scores(probe, info, settings["fractions"], multiple),
                                       timed, model_ms, model_ms / policy["speedup"], calibration)
        return chosen
    return greedy_allocation(probe, info, settings["fractions"], multiple, policy["macs_fraction"], total_macs)


def cache_settings(params: dict, recipe: dict, model_file: Path) -> dict:
    """What the scores depend on besides layer, method and rank; a cache is reused only if they match."""
    from lwpar.io import sha256_file

    search = recipe["rank"]["search"]
    return {"baseline_sha256": sha256_file(model_file), "seed": params["seed"], "epc": recipe.get("epc"),
            "metric": search["metric"], "val_images": search["val_images"],
            "calibration_batches": search["calibration_batches"]}


def save_cache(path: Path, probe: SensitivityProbe, meta: dict) -> None:
    from lwpar.io import write_json

    write_json(path, {**meta, "scores": probe.cache})


def load_cache(path: Path, meta: dict) -> dict:
    """Scores from a sensitivity artifact, refused when it was measured under other settings."""
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise LwparError(f"{path}: unreadable sensitivity cache ({error})") from None
    for key, value in meta.items():
        if blob.get(key) != value:
            raise LwparError(f"{path}: measured with {key}={blob.get(key)!r}, this plan needs {value!r}")
    return blob["scores"]
