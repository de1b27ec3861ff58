"""Rank policies computed from the layers alone: `ratio` (each layer keeps a fraction of its
parameters), `energy` (the smallest rank keeping a fraction of the squared singular values of the
layer's C_out x rest unfolding) and `budget` (one parameter fraction for every selected layer,
searched so that the whole model's MACs come to `macs_fraction` of the original)."""

from __future__ import annotations

import numpy as np
import torch

from lwpar.compress.decompose.factorize import factorized_macs, original_macs
from lwpar.compress.decompose.methods import rank_for_fraction
from lwpar.compress.ranks.registry import Planning, register
from lwpar.core.errors import LwparError


@register("ratio")
def ratio(planning: Planning) -> list[dict]:
    return [{**e, "rank": rank_for_fraction(e["method"], e["shape"], planning.policy["fraction"], planning.multiple)}
            for e in planning.info]


@register("energy")
def energy(planning: Planning) -> list[dict]:
    modules, multiple, plan = dict(planning.model.named_modules()), planning.multiple, []
    for entry in planning.info:
        weight = modules[entry["layer"]].weight.detach().double()
        s = torch.linalg.svdvals(weight.reshape(weight.shape[0], -1)).numpy()
        keep = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), planning.policy["energy"]) + 1)
        plan.append({**entry, "rank": max(multiple, int(np.ceil(keep / multiple)) * multiple) if multiple else keep})
    return plan


def macs_at(info: list[dict], fraction: float, multiple: int, total_macs: int) -> tuple[int, list[int]]:
    """The model's MACs with every layer of `info` factorized at `fraction` of its parameters, and the ranks."""
    ranks = [rank_for_fraction(e["method"], e["shape"], fraction, multiple) for e in info]
    saved = sum(original_macs(e["shape"], e["io"]) - factorized_macs(e["method"], e["shape"], r, e["io"])
                for e, r in zip(info, ranks))
    return total_macs - saved, ranks


@register("budget")
def budget(planning: Planning) -> list[dict]:
    info, total_macs = planning.info, planning.total_macs
    if total_macs is None:
        raise ValueError("budget policy needs the model's total MACs")
    fixed = total_macs - sum(original_macs(e["shape"], e["io"]) for e in info)
    target = planning.policy["macs_fraction"] * total_macs
    lo, hi = 1e-4, 1.0
    if macs_at(info, lo, planning.multiple, total_macs)[0] > target:
        raise LwparError(f"MAC budget {planning.policy['macs_fraction']:g} is out of reach: the layers left alone "
                         f"already cost {fixed / total_macs:.3f} of the model's MACs")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_at(info, mid, planning.multiple, total_macs)[0] <= target else (lo, mid)
    return [{**e, "rank": r} for e, r in zip(info, macs_at(info, lo, planning.multiple, total_macs)[1])]
