"""Pruning: structured channel pruning through torch-pruning (DepGraph) at a MAC budget, and
unstructured magnitude pruning (torch.nn.utils.prune, made permanent) as the reference that shows
zeros alone do not make a dense model faster.

The ALM is pruned through its reference head, whose per-attribute modules DepGraph traces like any
other layer, so the channels coupled across the concatenated pyramid and into every attention
block are removed together; the fused head computes the same function on the pruned modules.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lwpar import LwparError
from lwpar.complexity import count_macs

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


def _with_reference_head(model: nn.Module):
    heads = [m for m in model.modules() if hasattr(m, "head") and m.head in ("fused", "reference")]
    saved = [m.head for m in heads]
    for m in heads:
        m.head = "reference"
    return heads, saved


def structured_prune(model: nn.Module, input_size, ratio: float, cfg: dict, calibration=None) -> nn.Module:
    """Prune `model` in place by channel ratio `ratio` (global or per layer), rounding to `round_to`."""
    import torch_pruning as tp

    example = torch.zeros(1, 3, *input_size)
    heads, saved = _with_reference_head(model)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features <= 4]  # stn and unit fc
    ignored += [getattr(model, "finalfc", None) or getattr(model, "classifier")]
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=_importance(cfg["importance"]), global_pruning=cfg["global_pruning"],
        pruning_ratio=ratio, iterative_steps=cfg["iterative_steps"], ignored_layers=[*ignored, first_conv],
        round_to=cfg["round_to"], output_transform=_first_output)
    for _ in range(cfg["iterative_steps"]):
        if cfg["importance"] == "taylor":
            if calibration is None:
                raise LwparError("taylor importance needs calibration batches (gradients)")
            model.zero_grad()
            images, targets = calibration
            outputs = model(images)
            torch.nn.functional.binary_cross_entropy_with_logits(_first_output(outputs), targets).backward()
        pruner.step()
    for m, head in zip(heads, saved):
        m.head = head
    return model


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
        raise LwparError(f"pruning could not reach {macs_fraction:g} of the MACs (closest: {fraction:.3f} at "
                         f"channel ratio {ratio:.3f}); check round_to and ignored layers")
    return trial, ratio, fraction


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
