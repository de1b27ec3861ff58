"""The recipes' plain facts (`compress.recipes`) against the code that acts on them: the registries of
decomposition methods and rank policies, the schema's enums, and the methods that read `epc`."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from lwpar.compress import recipes
from lwpar.compress.decompose.methods import METHODS
from lwpar.compress.ranks import POLICIES
from lwpar.config import schema


def _schema_node(*path):
    node = schema()["properties"]["variants"]["additionalProperties"]
    node = schema()["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
    for part in path:
        node = node["properties"][part]
    return node


def test_the_method_registry_and_the_schema_know_exactly_the_recipes_methods():
    assert set(METHODS) == set(recipes.KXK_METHODS) | set(recipes.POINTWISE_METHODS)
    assert _schema_node("decompose", "methods", "kxk")["enum"] == list(recipes.KXK_METHODS)
    assert _schema_node("decompose", "methods", "pointwise")["enum"] == list(recipes.POINTWISE_METHODS)


def test_the_policy_registry_and_the_schema_know_exactly_the_recipes_policies():
    assert set(POLICIES) == set(recipes.RANK_POLICIES)
    assert _schema_node("decompose", "rank", "policy")["enum"] == list(recipes.RANK_POLICIES)
    # the optional keys are the schema's, and each is read by some policy
    rank = _schema_node("decompose", "rank")["properties"]
    assert set(recipes.OPTIONAL_RANK_KEYS) <= set(rank)
    assert all(recipes.rank_key_readers(key) for key in recipes.OPTIONAL_RANK_KEYS)
    assert all(recipes.search_key_readers(key) for key in recipes.OPTIONAL_SEARCH_KEYS)
    # a measured policy has a separate measurement only where the probes alone cannot plan
    assert [name for name, p in POLICIES.items() if p.measure] == [n for n, p in recipes.RANK_POLICIES.items() if p.timed]


@pytest.mark.parametrize("method", recipes.KXK_METHODS)
def test_a_method_reads_the_epc_block_exactly_when_the_recipes_say_so(method):
    """Factorizing with two different `epc` blocks gives different layers only for the methods in
    EPC_METHODS: for any other, an `epc` setting would change nothing (and the configuration refuses it)."""
    layer = nn.Conv2d(16, 16, 3, padding=1)
    weight = layer.weight.detach().double().numpy()
    runs = [METHODS[method].factorize(layer, weight, 8, 0, epc)[1]
            for epc in ({"enabled": False, "als_iter": 2}, {"enabled": True, "als_iter": 40, "iterations": 5,
                                                            "objective": "norm"})]
    assert (not np.allclose(runs[0], runs[1])) == (method in recipes.EPC_METHODS)


def test_labels_group_one_methods_budgets():
    params = {"variants": {
        "a": {"base": None, "finetune": {}, "decompose": {"kinds": ["kxk", "pointwise"], "methods": {
            "kxk": "cp", "pointwise": "svd"}, "rank": {"policy": "budget"}, "epc": {"enabled": True, "als_iter": 50}}},
        "b": {"base": None, "finetune": {}, "decompose": {"kinds": ["kxk"], "methods": {
            "kxk": "cp4", "pointwise": "svd"}, "rank": {"policy": "budget"}}},
        "c": {"base": None, "finetune": {}, "prune": {"kind": "structured", "importance": "l2", "budget": "latency"}},
        "ctl": {"base": None, "finetune": {}}}}
    assert recipes.method_label(params, "a") == "cp-epc+svd (budget, ALS 50)"
    assert recipes.method_label(params, "b+int8") == "cp4 (budget)+int8"
    assert recipes.method_label(params, "c") == "prune structured l2 (latency)"
    assert recipes.method_label(params, "ctl") == "control" and recipes.method_label(params, "baseline") == "baseline"
    assert recipes.mac_planned_label(params, "c") == "prune structured l2"
    # a second stage after a quantization-aware one is quantization-aware too, as its INT8 control reads it
    params["variants"]["ctl"]["finetune"] = {"qat": True}
    params["variants"]["ctl2"] = {"base": "ctl", "finetune": {}}
    assert recipes.method_label(params, "ctl2+mixed") == "control (quantization-aware)+mixed"
    assert recipes.trains_for_int8(params, "ctl2+mixed")


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("heads", [False, True, "only"])
def test_a_calibration_selection_word_reads_back_as_the_layers_it_names(first, heads):
    decompose = {"kinds": ["kxk", "linear"], "include_first": first, "include_heads": heads}
    word = recipes.calibration_selection({"decompose": decompose})
    assert recipes.parse_calibration_selection(word) == decompose
    assert recipes.calibration_selection({"prune": {"reconstruct": True}}) == "prune"
    assert recipes.parse_calibration_selection("prune") is None
    assert list(recipes.LAYER_KINDS) == _schema_node("decompose", "kinds")["items"]["enum"]


@pytest.mark.parametrize("word", ["kxk+hedas", "first", ""])
def test_a_malformed_calibration_selection_names_what_it_does_not_know(word):
    with pytest.raises(ValueError, match="unknown hedas" if "hedas" in word else "no layer kind"):
        recipes.parse_calibration_selection(word)
