"""Latency-planned ranks: the allocation with a fake timer, and the latency, sensitivity and decompose
stages with the `latency` policy on a tiny trained model (real ONNX Runtime timings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lwpar.core.errors import LwparError
from lwpar.compress.decompose.factorize import layer_info
from lwpar.compress.ranks.latency import Calibration, Candidate, calibration_plans, candidates, latency_allocation
from lwpar.core.timing import measure

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

    def timer(key):
        calls.append(key)
        return {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}[int(key.layer)] + len(calls) * 1e-3

    timed = measure(keys, timer, rounds=5)
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


def test_calibration_maps_summed_savings_to_measured_ones():
    assert Calibration([])(3.0) == 3.0  # no calibration models: the per-layer sum
    calibration = Calibration([(4.0, 6.0), (2.0, 2.4), (6.0, 5.0)])  # a noisy point below its neighbour
    assert calibration(1.0) == pytest.approx(1.2)       # through the origin
    assert calibration(3.0) == pytest.approx(4.2)       # between points
    assert calibration(6.0) == pytest.approx(6.0)       # made non-decreasing
    assert calibration(12.0) == pytest.approx(12.0)     # proportional beyond the last point


def test_calibrated_savings_stop_the_allocation_earlier():
    own = {"a": 4.0, "b": 3.0, "c": 2.0}
    replacements = {("a", 8): 2.0, ("b", 8): 2.0}
    scores = {("a", 8): 0.90, ("b", 8): 0.99}
    doubled = Calibration([(1.0, 2.0), (10.0, 20.0)])  # replaced together, layers save twice what they save alone
    plan, predicted = latency_allocation(INFO, 1.0, scores, _timed(own, replacements), 20.0, 18.0, doubled)
    assert [p["layer"] for p in plan] == ["b"] and predicted == pytest.approx(18.0)
    assert plan[0]["plan_uncalibrated_ms"] == pytest.approx(19.0) and plan[0]["plan_predicted_ms"] == pytest.approx(18.0)
    with pytest.raises(LwparError, match=r"the fastest plan predicts 14.00 ms"):
        latency_allocation(INFO, 1.0, scores, _timed(own, replacements), 20.0, 13.0, doubled)


def test_calibration_models_replace_the_faster_layers_at_each_rank_and_every_other_one():
    info = [{"layer": name} for name in ("a", "b", "c", "d")]
    ranks = {"a": [4, 8], "b": [4, 8], "c": [4, 8], "d": [4]}
    own = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    replacements = {("a", 4): 1.0, ("b", 4): 1.0, ("c", 4): 3.0, ("d", 4): 0.5,  # c at rank 4 is slower
                    ("a", 8): 2.0, ("b", 8): 5.0, ("c", 8): 1.0}
    plans = calibration_plans(info, ranks, _timed(own, replacements))
    assert [(p["name"], p["ranks"], p["raw_saving_ms"]) for p in plans] == [
        ("<rank 0, all>", {"a": 4, "b": 4, "d": 4}, 3.0 + 2.0 + 0.5),
        ("<rank 0, alternate>", {"a": 4, "d": 4}, 3.0 + 0.5),
        ("<rank 1, all>", {"a": 8, "c": 8}, 2.0 + 1.0),
        ("<rank 1, alternate>", {"a": 8}, 2.0)]
