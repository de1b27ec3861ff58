"""Latency-planned ranks (work in progress): the per-layer table and the allocation, with a fake timer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lwpar import LwparError
from lwpar.decompose.factorize import layer_info
from lwpar.decompose.latency import Candidate, candidates, latency_allocation, measure

pytestmark = pytest.mark.timeout(60)


def _model():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 1))


def _info(model):
    return layer_info(model, ["2", "4"], {"kxk": "tucker2", "pointwise": "svd"}, (8, 8))


def test_candidates_are_the_layers_and_their_replacements_at_each_rank():
    model = _model()
    table = candidates(model, _info(model), {"2": [4, 8], "4": [8]})
    assert sorted((c.layer, c.rank or 0) for c in table) == [("2", 0), ("2", 4), ("2", 8), ("4", 0), ("4", 8)]
    for key, module in table.items():
        out = module(torch.randn(*key.input_shape))
        assert out.shape[1] == (32 if key.layer in ("2", "4") else 16)


def test_measure_interleaves_every_candidate_in_each_round_and_takes_medians():
    keys = [Candidate(str(i), None, None, (1, 1)) for i in range(4)]
    calls = []

    def timer(key, module):
        calls.append(key)
        return {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}[int(key.layer)] + len(calls) * 1e-3

    timed = measure(dict.fromkeys(keys), timer, rounds=5)
    assert len(calls) == 20 and all(set(calls[i:i + 4]) == set(keys) for i in range(0, 20, 4))
    assert calls[:4] != calls[4:8] or calls[4:8] != calls[8:12]  # shuffled between rounds
    assert [round(timed[k]["median_ms"]) for k in keys] == [1, 2, 3, 4]


def _timed(own, replacements):
    timed = {Candidate(layer, None, None, (1,)): {"median_ms": ms} for layer, ms in own.items()}
    timed.update({Candidate(layer, "svd", rank, (1,)): {"median_ms": ms} for (layer, rank), ms in replacements.items()})
    return timed


INFO = [{"layer": name} for name in ("a", "b", "c")]


def test_cheapest_accuracy_per_millisecond_first_and_slower_replacements_skipped():
    own = {"a": 4.0, "b": 3.0, "c": 2.0}
    replacements = {("a", 8): 2.0, ("b", 8): 2.0, ("c", 8): 3.0}  # c's replacement is slower than c
    scores = {("a", 8): 0.90, ("b", 8): 0.99, ("c", 8): 1.0}   # reference 1.0: a loses 0.10 for 2 ms, b 0.01 for 1 ms
    plan, predicted = latency_allocation(INFO, 1.0, scores, _timed(own, replacements), model_ms=20.0, target_ms=19.0)
    assert [(p["layer"], p["rank"]) for p in plan] == [("b", 8)] and predicted == pytest.approx(19.0)
    plan, predicted = latency_allocation(INFO, 1.0, scores, _timed(own, replacements), model_ms=20.0, target_ms=17.5)
    assert sorted(p["layer"] for p in plan) == ["a", "b"] and predicted == pytest.approx(17.0)


def test_a_layer_moves_to_a_faster_rank_only_when_that_is_the_cheapest_next_step():
    own = {"a": 4.0, "b": 3.0, "c": 2.0}
    replacements = {("a", 16): 3.0, ("a", 8): 1.0, ("b", 8): 2.0}
    scores = {("a", 16): 1.0, ("a", 8): 0.97, ("b", 8): 0.99}
    plan, predicted = latency_allocation(INFO, 1.0, scores, _timed(own, replacements), model_ms=20.0, target_ms=17.0)
    # a -> 16 is free (1 ms), b costs 0.01 for 1 ms, a 16 -> 8 costs 0.03 for 2 ms (0.015 per ms)
    assert {(p["layer"], p["rank"]) for p in plan} == {("a", 8), ("b", 8)} and predicted == pytest.approx(16.0)


def test_an_unreachable_target_names_the_best_reachable_latency():
    own = {"a": 4.0, "b": 3.0, "c": 2.0}
    timed = _timed(own, {("a", 8): 2.0, ("c", 8): 5.0})
    with pytest.raises(LwparError, match=r"latency target 10.00 ms is out of reach: the fastest plan predicts 18.00 ms \(1.11x of 20.00 ms\)"):
        latency_allocation(INFO, 1.0, {("a", 8): 0.9, ("c", 8): 1.0}, timed, model_ms=20.0, target_ms=10.0)


def test_onnx_timer_times_a_layer_alone():
    from lwpar.decompose.latency import onnx_timer

    model = _model()
    table = candidates(model, _info(model), {"2": [4]})
    timed = measure(table, onnx_timer(threads=1, warmup=1, iters=2), rounds=2)
    assert all(t["median_ms"] > 0 for t in timed.values())
