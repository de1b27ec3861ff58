"""Rank policy `evbmf`: per layer, the largest rank that empirical variational Bayesian matrix
factorization (EVBMF, Nakajima et al. 2013) finds in the kernel's output- and input-channel
unfoldings, rounded up to the rank multiple."""

from __future__ import annotations

import numpy as np

from lwpar.compress.ranks._evbmf import evbmf_rank
from lwpar.compress.ranks.registry import Planning, register


@register("evbmf")
def evbmf(planning: Planning) -> list[dict]:
    return evbmf_ranks(planning.model, planning.info, planning.multiple)


def evbmf_ranks(model, info: list[dict], multiple: int) -> list[dict]:
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


