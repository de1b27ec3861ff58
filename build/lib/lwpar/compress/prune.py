"""Pruning: structured channel pruning through torch-pruning (DepGraph) at a MAC budget, and
unstructured magnitude pruning (torch.nn.utils.prune, made permanent) as the reference that shows
zeros alone do not make a dense model faster.

The ALM's pyramid channels are coupled across the concatenation into all 3 x M attribute modules.
DepGraph traced over those 105 consumers spends minutes per pruning (its index mapping grows with
the fan-out), so it traces a proxy instead: the real backbone, laterals and main classifier, and per
level the attribute modules stacked into four layers with the same coupling (and, stacked, the
same magnitude importance summed over attributes). Each pruning the proxy's stacked layers receive
is replayed on every attribute's own module, so the heads follow the pyramid exactly.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lwpar.core.errors import LwparError
from lwpar.compress.steps import Compressed, Start
from lwpar.core.timing import Timer, medians
from lwpar.evaluation.complexity import count_macs, count_params

IMPORTANCE = ("l1", "l2", "taylor", "bn_scale")


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise LwparError(f"unknown pruning importance {name!r} (known: {', '.join(IMPORTANCE)})")


def _first_output(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


class _StackedLevel(nn.Module):
    """One level's attribute modules as four stacked layers, for tracing only."""

    def __init__(self, level: nn.Module):
        super().__init__()
        self.level = [level]  # a list, so that DepGraph neither registers nor traces the real modules
        atts, stns, fcs = level.att_list, level.stn_list, level.fc_list
        if not all(isinstance(m, (nn.Conv2d, nn.Linear)) for a in atts for m in (a.conv1, a.conv2)) or \
                not all(isinstance(m, nn.Linear) for m in (*stns, *fcs)):
            raise LwparError("structured pruning of ALM needs the attribute heads unfactorized: "
                             "prune first, then decompose the heads (a variant with base: the pruned one)")
        self.conv1 = self._stacked(nn.Conv2d, [a.conv1 for a in atts], 0)
        self.conv2 = self._stacked(nn.Conv2d, [a.conv2 for a in atts], 1)
        self.stn = self._stacked(nn.Linear, list(stns), 0)
        self.fc = self._stacked(nn.Linear, list(fcs), 0)
        self.replay = {self.conv1: [a.conv1 for a in atts], self.conv2: [a.conv2 for a in atts],
                       self.stn: list(stns), self.fc: list(fcs)}

    @staticmethod
    def _stacked(kind, layers, dim):
        weight = torch.cat([m.weight.detach() for m in layers], dim)
        bias = torch.cat([m.bias.detach() for m in layers]) if dim == 0 else layers[0].bias.detach()
        shape = (weight.shape[1], weight.shape[0])
        layer = nn.Conv2d(*shape, 1) if kind is nn.Conv2d else nn.Linear(*shape)
        layer.weight.data, layer.bias.data = weight.clone(), bias.clone()
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1)
        weighted = x * torch.sigmoid(self.conv2(torch.relu(self.conv1(pooled)))) + x
        statistic = F.adaptive_avg_pool2d(weighted, 1).flatten(1)
        return torch.cat([self.stn(statistic), self.fc(statistic)], 1)


class _AlmProxy(nn.Module):
    """The ALM's backbone, laterals and main branch (the real modules) with stacked heads."""

    def __init__(self, alm: nn.Module):
        super().__init__()
        self.alm = [alm]
        self.main_branch, self.finalfc = alm.main_branch, alm.finalfc
        self.latlayers = nn.ModuleList([alm.latlayer_3b, alm.latlayer_4d, alm.latlayer_5b])
        self.levels = nn.ModuleList(_StackedLevel(level) for level in (alm.st_3b, alm.st_4d, alm.st_5b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *maps, main = self.alm[0].pyramid(x)
        return torch.cat([level(m) for level, m in zip(self.levels, maps)] + [main], 1)

    def replay(self) -> dict:
        return {proxy: real for level in self.levels for proxy, real in level.replay.items()}


def structured_prune(model: nn.Module, input_size, ratio: float, cfg: dict, calibration=None) -> nn.Module:
    """Prune `model` in place by channel ratio `ratio` (global or per layer), rounding to `round_to`."""
    import torch_pruning as tp

    if cfg["importance"] == "taylor" and calibration is None:
        raise LwparError("taylor importance needs calibration batches (gradients)")
    example = torch.zeros(1, 3, *input_size)
    model.eval()
    is_alm = hasattr(model, "st_3b")
    traced = _AlmProxy(model) if is_alm else model
    replay = traced.replay() if is_alm else {}
    ignored = [getattr(model, "finalfc", None) or getattr(model, "classifier")]
    if is_alm:  # attention hidden units and the transform / unit outputs are per attribute, never pruned
        ignored += [m for level in traced.levels for m in (level.conv1, level.stn, level.fc)]
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    names = {id(m): name for name, m in model.named_modules()}
    kept = getattr(model, "kept_channels", {})
    pruner = tp.pruner.MetaPruner(
        traced, example, importance=_importance(cfg["importance"]), global_pruning=cfg["global_pruning"],
        pruning_ratio=ratio, iterative_steps=cfg["iterative_steps"], ignored_layers=[*ignored, first_conv],
        round_to=cfg["round_to"], output_transform=_first_output)
    for _ in range(cfg["iterative_steps"]):
        if cfg["importance"] == "taylor":
            traced.zero_grad()
            images, targets = calibration
            outputs = _first_output(traced(images))[:, -targets.shape[1]:]  # the ALM proxy ends with the main logits
            torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets).backward()
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                _record_kept(kept, names, dep.target.module, dep.handler, idxs)
                for real in replay.get(dep.target.module, ()):
                    dep.handler(real, idxs)
            group.prune()
    model.kept_channels = kept
    return model


def _record_kept(kept: dict, names: dict, module: nn.Module, handler, idxs) -> None:
    """Which of a layer's original input and output channels survive (`model.kept_channels`: name ->
    {"in": [...], "out": [...]}, original indices), for the reconstruction of its weights."""
    side = {"prune_in_channels": "in", "prune_out_channels": "out"}.get(getattr(handler, "__name__", ""))
    if side is None or id(module) not in names or not isinstance(module, (nn.Conv2d, nn.Linear)):
        return
    weight = module.weight
    current = kept.setdefault(names[id(module)], {}).setdefault(side, list(range(weight.shape[1 if side == "in" else 0])))
    dropped = set(int(i) for i in idxs)
    kept[names[id(module)]][side] = [c for i, c in enumerate(current) if i not in dropped]


def prune_to_budget(model: nn.Module, input_size, macs_fraction: float, cfg: dict, calibration=None,
                    tolerance: float = 0.02, max_trials: int = 10) -> tuple[nn.Module, float, float]:
    """Search the channel ratio whose pruned model has `macs_fraction` of the MACs (within tolerance).

    Each trial prunes a copy (torch-pruning rebuilds its dependency graph, the costly part), so the
    search starts where MACs ~ (1 - ratio)^2 puts it and takes secant steps inside a bisection bracket.
    """
    total = count_macs(model, input_size)
    lo, hi = (0.0, 1.0), (0.95, None)  # (ratio, MAC fraction); hi's fraction unknown until tried
    ratio, best = 1 - macs_fraction ** 0.5, None
    for _ in range(max_trials):
        trial = structured_prune(copy.deepcopy(model), input_size, ratio, cfg, calibration)
        fraction = count_macs(trial, input_size) / total
        if best is None or abs(fraction - macs_fraction) < abs(best[2] - macs_fraction):
            best = (trial, ratio, fraction)
        if abs(fraction - macs_fraction) <= tolerance / 2:
            break
        if fraction > macs_fraction:
            lo = (ratio, fraction)
        else:
            hi = (ratio, fraction)
        if hi[1] is not None and hi[1] != lo[1]:  # secant between the bracket ends
            guess = lo[0] + (lo[1] - macs_fraction) * (hi[0] - lo[0]) / (lo[1] - hi[1])
        else:
            guess = (lo[0] + hi[0]) / 2
        width = hi[0] - lo[0]
        ratio = min(max(guess, lo[0] + 0.05 * width), hi[0] - 0.05 * width)
    trial, ratio, fraction = best
    if abs(fraction - macs_fraction) > tolerance:
        gap = f"; it jumps from {lo[1]:.3f} at channel ratio {lo[0]:.3f} to {hi[1]:.3f} at {hi[0]:.3f}" \
            if hi[1] is not None else ""
        raise LwparError(f"pruning could not reach {macs_fraction:g} of the MACs (closest: {fraction:.3f} at "
                         f"channel ratio {ratio:.3f}{gap}): with one ratio for every layer, round_to "
                         f"{cfg['round_to']} moves many layers' widths at once; a smaller round_to or global_pruning "
                         f"reaches between")
    return trial, ratio, fraction


SPEEDUP_GRID = (0.15, 0.3, 0.45, 0.6, 0.75)  # channel ratios timed to chart the speed-up (smooth, monotone)


def prune_to_speedup(model: nn.Module, input_size, speedup: float, cfg: dict,
                     time_models: Callable[[dict], dict], calibration=None, tolerance: float = 0.05,
                     max_checks: int = 3, grid=SPEEDUP_GRID) -> tuple[nn.Module, float, float, list[dict]]:
    """Search the channel ratio whose pruned model is measured `speedup` times faster than `model`.

    `time_models({name: model})` returns each model's measured latency (ms), all timed in one interleaved
    run. The model pruned at each channel ratio of `grid` is timed beside the unpruned one; the ratio is
    read off that measured curve (made non-decreasing), pruned and timed again beside the unpruned model,
    and each such check joins the curve until one lands within `tolerance` of the asked speed-up.
    Returns the closest pruned model, its ratio, its measured speed-up and every timed trial; a speed-up
    the grid's most pruned model does not reach is an LwparError naming the best measured one."""
    trials = []

    def timed(ratios) -> None:
        models = {"<model>": model, **{f"<ratio {r:.4f}>": structured_prune(copy.deepcopy(model), input_size, r, cfg,
                                                                            calibration) for r in ratios}}
        ms = time_models(models)
        for r in ratios:
            trials.append({"ratio": r, "model_ms": ms["<model>"], "pruned_ms": ms[f"<ratio {r:.4f}>"],
                           "speedup": ms["<model>"] / ms[f"<ratio {r:.4f}>"], "model": models[f"<ratio {r:.4f}>"]})

    timed(grid)
    best = max(trials, key=lambda t: t["speedup"])
    if best["speedup"] < speedup * (1 - tolerance):
        raise LwparError(f"pruning cannot reach {speedup:g}x: the most pruned trial measured {best['speedup']:.2f}x "
                         f"(channel ratio {best['ratio']:.2f})")
    for _ in range(max_checks):
        curve = sorted((t["ratio"], t["speedup"]) for t in trials)
        ratios = np.array([0.0] + [r for r, _ in curve])
        speedups = np.maximum.accumulate(np.array([1.0] + [s for _, s in curve]))
        reached = np.nonzero(speedups >= speedup)[0]
        if not len(reached):  # only within tolerance below the ask: the fastest trial is the closest
            break
        above = int(reached[0])  # >= 1: the unpruned model's 1.0 is below any asked speed-up
        ratio = float(np.interp(speedup, speedups[above - 1:above + 1], ratios[above - 1:above + 1]))
        if any(abs(t["ratio"] - ratio) < 1e-3 for t in trials):  # the curve cannot say more than it has
            break
        timed([ratio])
        if abs(trials[-1]["speedup"] / speedup - 1) <= tolerance:
            break
    closest = min(trials, key=lambda t: abs(t["speedup"] / speedup - 1))
    return closest["model"], closest["ratio"], closest["speedup"], [
        {k: v for k, v in t.items() if k != "model"} for t in trials]


def unstructured_prune(model: nn.Module, amount: float) -> nn.Module:
    """Global magnitude pruning of conv and linear weights, made permanent (zeros stay in dense tensors)."""
    from torch.nn.utils import prune

    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return float(sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights))


def prune_step(begun: Start, variant: str, cfg: dict, seed: int, calibration=None, timer: Timer | None = None,
               plan_settings: tuple[int, int] | None = None, cpu: str | None = None, statistics=None) -> Compressed:
    """Structured pruning to the recipe's MAC budget or measured speed-up (`timer` times models on the
    target at `plan_settings`, (batch, threads), on CPU `cpu`), then with `reconstruct` the layers that
    lost input channels refitted on the start model's calibration `statistics`; or unstructured
    magnitude pruning."""
    model, size = begun.model, begun.input_size
    torch.manual_seed(seed)
    macs_before, params_before = count_macs(model, size), count_params(model)
    started = time.time()
    structure, extra = begun.earlier, {}
    if cfg["kind"] == "unstructured":
        unstructured_prune(model, cfg["amount"])
        extra = {"sparsity": sparsity(model)}
    else:
        import torch_pruning as tp

        try:
            model, extra = _structured(model, size, cfg, calibration, timer, plan_settings, cpu)
        except LwparError as error:  # the search's own message does not know the variant
            raise LwparError(f"variant {variant}: {error}") from None
        if cfg.get("reconstruct"):
            started_refit = time.time()
            extra["reconstruction"] = reconstruct(model, begun.model, statistics, statistics.ridge)
            extra["reconstruction_seconds"] = round(time.time() - started_refit, 1)
        structure = [*begun.earlier, {"op": "prune", "variant": variant, "tp_state": tp.state_dict(model)}]
    macs_after, params_after = count_macs(model, size), count_params(model)
    summary = {"variant": variant, "kind": cfg["kind"], "macs_before": macs_before, "macs_after": macs_after,
               "params_before": params_before, "params_after": params_after, "macs_fraction": macs_after / macs_before,
               "seconds": round(time.time() - started, 1), **extra}
    return Compressed(model, structure, {"before": macs_before, "after": macs_after},
                      {"before": params_before, "after": params_after}, summary=summary)


def _structured(model, size, cfg: dict, calibration, timer, plan_settings, cpu) -> tuple[nn.Module, dict]:
    """The pruned model and the summary's figures, for the recipe's budget."""
    if cfg["budget"] == "macs":
        model, ratio, _ = prune_to_budget(model, size, cfg["macs_fraction"], cfg, calibration)
        return model, {"channel_ratio": ratio}
    batch, threads = plan_settings
    model, ratio, speedup, trials = prune_to_speedup(
        model, size, cfg["speedup"], cfg, lambda models: medians(timer, models, (batch, 3, *size)), calibration)
    chosen = next(t for t in trials if t["ratio"] == ratio)
    # plan_* as the decompose stage's rows name them: the report sets them against the profile
    return model, {"channel_ratio": ratio, "plan_target": cfg["target"], "plan_batch": batch,
                   "plan_threads": threads, "plan_model_ms": chosen["model_ms"],
                   "plan_predicted_ms": chosen["pruned_ms"], "plan_cpu": cpu,
                   "speedup_requested": cfg["speedup"], "speedup_planned": speedup, "trials": trials}


def reconstruct(pruned: nn.Module, original: nn.Module, statistics, ridge: float) -> list[dict]:
    """Refit every dense layer that lost input channels (He et al., ICCV 2017; AIMET's weight
    reconstruction) so that, on the calibration inputs, its output from the kept channels comes as close
    as it can to the unpruned layer's from all of them: the least-squares solution
        W' = W S[:, K] (S[K, K] + ridge * mean(eig S[K, K]) * I)^-1
    with S the second moment of the layer's unfolded input and K the kept channels' entries. Returns,
    per refitted layer, its output error on the held-out inputs with the channels merely dropped and
    after the refit."""
    from lwpar.compress.decompose.metric import output_error

    rows = []
    for name, sides in getattr(pruned, "kept_channels", {}).items():
        layer = pruned.get_submodule(name)
        if "in" not in sides or (isinstance(layer, nn.Conv2d) and layer.groups != 1):
            continue
        weight = original.get_submodule(name).weight.detach().double().cpu().numpy()
        weight = weight[sides.get("out", slice(None))]
        positions = int(np.prod(weight.shape[2:])) if weight.ndim == 4 else 1
        columns = np.array([c * positions + j for c in sides["in"] for j in range(positions)], dtype=int)
        unfolded = weight.reshape(weight.shape[0], -1)
        moment = statistics.layer(name)["second_moment"].double().numpy()
        kept = moment[np.ix_(columns, columns)]
        regulariser = ridge * max(float(np.trace(kept)) / len(columns), 1e-30)
        refit = np.linalg.solve(kept + regulariser * np.eye(len(columns)), (unfolded @ moment[:, columns]).T).T
        heldout = statistics.heldout(name)
        errors = []
        for fitted in (unfolded[:, columns], refit):
            embedded = np.zeros_like(unfolded)
            embedded[:, columns] = fitted
            errors.append(output_error(unfolded, embedded, heldout))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(refit.reshape(layer.weight.shape)).to(layer.weight.dtype))
        rows.append({"layer": name, "kept_inputs": len(sides["in"]), "inputs": int(weight.shape[1]),
                     "output_error_dropped": errors[0], "output_error_refit": errors[1]})
    return rows