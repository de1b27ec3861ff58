"""The rank policies that score layers on validation (through a `sensitivity.SensitivityProbe`):

- `search` (LWALM, Jha et al. 2023): per layer, a binary search over ranks (multiples of
  `multiple` up to the rank whose factors cost as much as the layer) for the smallest rank that
  loses at most `eps` of the metric against the unmodified model, BatchNorm re-estimated the same
  way; a layer that loses more than `eps` even at that rank is left alone.
- `greedy` (as AIMET's greedy compression-ratio selection): per layer, scores at a grid of
  parameter fractions; then one accuracy threshold for all layers, each taking its cheapest rank
  that scores at least the threshold, with the threshold lowered until the model's MACs reach
  `macs_fraction` of the original.

The third, `latency`, spends the same per-layer scores against measured latencies (`ranks.latency`).
"""

from __future__ import annotations

from lwpar.compress.decompose.factorize import factorized_macs, original_macs
from lwpar.compress.decompose.methods import rank_for_fraction
from lwpar.compress.ranks.registry import Planning, register
from lwpar.core.errors import LwparError


@register("search")
def search(planning: Planning) -> list[dict]:
    return lwalm_search(planning.probe, planning.info, planning.policy["search"]["eps"], planning.multiple)


@register("greedy")
def greedy(planning: Planning) -> list[dict]:
    return greedy_allocation(planning.probe, planning.info, planning.policy["search"]["fractions"], planning.multiple,
                             planning.policy["macs_fraction"], planning.total_macs)


def candidate_ranks(entry: dict, multiple: int) -> list[int]:
    """Multiples of `multiple` whose factorized layer costs fewer MACs than the layer itself (rounding
    the break-even rank up to a multiple could otherwise make a "compressed" layer dearer)."""
    top = rank_for_fraction(entry["method"], entry["shape"], 1.0, multiple)
    before = original_macs(entry["shape"], entry["io"])
    return [r for r in range(multiple, top + 1, multiple)
            if factorized_macs(entry["method"], entry["shape"], r, entry["io"]) < before]


def lwalm_search(probe, info: list[dict], eps: float, multiple: int) -> list[dict]:
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


def curve_scores(probe, info: list[dict], fractions: list[float], multiple: int) -> dict[tuple[str, int], float]:
    """The validation score with each layer alone factorized at each of its candidate ranks (`curve_ranks`):
    what the greedy and latency policies allocate from, and what the sensitivity stage measures for them."""
    return {(e["layer"], r): probe(e, r) for e in info for r in curve_ranks(e, fractions, multiple)}


def greedy_allocation(probe, info: list[dict], fractions: list[float], multiple: int,
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


