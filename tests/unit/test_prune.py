"""Pruning: a structured-pruned ALM keeps its outputs, exports, reloads and meets its MAC budget or,
timed by a fake target, its speed-up; unstructured pruning leaves zeros but the same MACs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lwpar.evaluation.complexity import count_macs
from lwpar.models import build_model
from lwpar.core.errors import LwparError
from lwpar.compress.prune import SPEEDUP_GRID, prune_to_budget, prune_to_speedup, sparsity, unstructured_prune

CFG = {"kind": "structured", "importance": "l2", "global_pruning": False, "round_to": 8, "iterative_steps": 1,
       "macs_fraction": 0.5, "amount": 0.5}


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 2).eval()
    before = count_macs(model, (64, 32))
    small, ratio, fraction = prune_to_budget(model, (64, 32), 0.5, CFG)
    return model, small, before, fraction


def test_structured_pruning_meets_budget_and_keeps_shapes(pruned):
    model, small, before, fraction = pruned
    assert abs(count_macs(small, (64, 32)) / before - 0.5) <= 0.02 and abs(fraction - 0.5) <= 0.02
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 3, 64, 32)).shape == (2, 2)
    small.train()
    assert all(o.shape == (2, 2) for o in small(torch.randn(2, 3, 64, 32)))
    assert small.st_3b.head == "fused"


def test_heads_follow_the_pruned_pyramid(pruned):
    _, small, _, _ = pruned
    c5, c4, c3 = (small.latlayer_5b.out_channels, small.latlayer_4d.out_channels, small.latlayer_3b.out_channels)
    assert c5 + c4 + c3 < 3 * 256, "the pyramid channels are pruned, not ignored"
    for level, width in ((small.st_3b, c5 + c4 + c3), (small.st_4d, c5 + c4), (small.st_5b, c5)):
        for att, stn, fc in zip(level.att_list, level.stn_list, level.fc_list):
            assert att.conv1.in_channels == att.conv2.out_channels == stn.in_features == fc.in_features == width
    x = torch.randn(2, 3, 64, 32)
    small.eval()
    with torch.no_grad():
        fused = small(x)
        small.set_head("reference")
        reference = small(x)
        small.set_head("fused")
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_pruned_model_exports_and_reloads(pruned, tmp_path):
    import torch_pruning as tp

    from lwpar.deploy.artifact import onnx_session
    from lwpar.deploy.export import export_onnx, parity
    from lwpar.core.modelfile import save_model
    from lwpar.compress.structure import load_model

    _, small, _, _ = pruned
    small.eval()
    export_onnx(small, (64, 32), tmp_path / "pruned.onnx")
    assert parity(small, onnx_session(tmp_path / "pruned.onnx"), torch.randn(3, 3, 64, 32))["max_abs_diff"] < 1e-4
    cfg = {"arch": "alm", "backbone": "resnet18", "pretrained": False, "alm_head": "fused", "align_corners": False,
           "input_size": [64, 32]}
    save_model(tmp_path / "m.pt", small, cfg, list("ab"), structure=[{"op": "prune", "tp_state": tp.state_dict(small)}])
    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), small(x))


def test_unstructured_pruning_zeros_weights_not_macs():
    model = build_model("alm", "resnet18", 5).eval()
    before = count_macs(model, (64, 32))
    unstructured_prune(model, 0.6)
    assert sparsity(model) == pytest.approx(0.6, abs=0.01)
    assert count_macs(model, (64, 32)) == before


@pytest.mark.fault
def test_structured_pruning_refuses_factorized_heads():
    """Pruning traces the heads stacked per level; after their attention convs were factorized (a
    multi-stage variant) that is not possible, and the error says which order works."""
    from lwpar.core.errors import LwparError
    from lwpar.compress.decompose.factorize import factorize_layer

    model = build_model("alm", "resnet18", 2).eval()
    for att in model.st_5b.att_list:
        att.conv1 = factorize_layer(att.conv1, "svd", 4)[0]
    cfg = {"importance": "l2", "global_pruning": False, "round_to": 8, "iterative_steps": 1}
    with pytest.raises(LwparError, match="prune first, then decompose the heads"):
        prune_to_budget(model, (64, 32), 0.5, cfg)


def _fake_target(overhead_ms: float, ms_per_gmac: float, calls: list):
    """A timer for `prune_to_speedup`: a fixed per-run cost plus a cost per MAC (latency is not
    proportional to MACs, as on a real target), recording what each call timed."""
    def timer(models: dict) -> dict:
        calls.append(sorted(models))
        return {name: overhead_ms + ms_per_gmac * count_macs(m, (64, 32)) / 1e9 for name, m in models.items()}
    return timer


def test_pruning_to_a_measured_speedup_follows_the_timer_not_the_macs():
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 2).eval()
    before = count_macs(model, (64, 32))
    calls = []
    small, ratio, speedup, trials = prune_to_speedup(model, (64, 32), 1.5, CFG, _fake_target(1.0, 40.0, calls))
    expected = 1.0 + 40.0 * before / 1e9
    assert speedup == pytest.approx(expected / (1.0 + 40.0 * count_macs(small, (64, 32)) / 1e9))
    assert abs(speedup / 1.5 - 1) <= 0.05, trials
    # a fixed cost per run: the MACs must fall further than 1 / 1.5 to be 1.5x faster
    assert count_macs(small, (64, 32)) / before < 1 / 1.5 - 0.05
    # the grid in one timing run, then each check in its own, always beside the unpruned model
    assert len(calls[0]) == 1 + len(SPEEDUP_GRID) and all(len(c) == 2 and "<model>" in c for c in calls[1:])
    assert len(trials) == len(SPEEDUP_GRID) + len(calls) - 1 and ratio in [t["ratio"] for t in trials]
    assert small.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 2)


def test_pruning_to_an_unreachable_speedup_names_the_best_measured():
    model = build_model("alm", "resnet18", 2).eval()
    with pytest.raises(LwparError, match=r"cannot reach 5x: the most pruned trial measured 1\.\d\dx"):
        prune_to_speedup(model, (64, 32), 5.0, CFG, _fake_target(5.0, 40.0, []), grid=(0.4, 0.8))


def test_a_mac_budget_inside_a_rounding_gap_names_the_gap():
    """With one ratio for all layers, round_to moves every layer of a width at once: 0.8 of the MACs
    lies between the unpruned model and the first rounding step."""
    model = build_model("alm", "resnet18", 2).eval()
    with pytest.raises(LwparError, match=r"could not reach 0.8 of the MACs \(closest: 0\.\d+ at channel ratio 0\.\d+; "
                                         r"it jumps from 1\.000 at channel ratio 0\.000 to 0\.\d+ at 0\.\d+\): .* round_to 32"):
        prune_to_budget(model, (64, 32), 0.8, {**CFG, "round_to": 32})


class _Chain(nn.Module):
    """Three conv - BN - ReLU blocks, pooled, then a classifier: the third conv consumes what pruning
    removes from the second (the first, as in every model, is never pruned)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                                      nn.Conv2d(24, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.classifier = nn.Linear(32, 5)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def test_reconstruction_refits_the_layers_whose_inputs_pruning_removed():
    """After channels are pruned, each layer that lost inputs is refitted by least squares on the
    calibration statistics: its output error on held-out inputs falls below that of merely dropping them."""
    import copy

    from lwpar.compress.calibration import second_moments
    from lwpar.compress.prune import reconstruct, structured_prune

    torch.manual_seed(0)
    original = _Chain().eval()
    with torch.no_grad():  # correlated channels: what the kept ones carry says much about the removed ones
        mix = torch.randn(24, 6) @ torch.randn(6, 24) / 3 + torch.eye(24)
        original.features[3].weight.copy_(torch.einsum("oc,cihw->oihw", mix, original.features[3].weight))
    cfg = {"importance": "l2", "global_pruning": False, "iterative_steps": 1, "round_to": 1}
    pruned = structured_prune(copy.deepcopy(original), (12, 12), 0.4, cfg)
    assert pruned.kept_channels["features.6"]["in"] != list(range(24))  # the consumer lost inputs

    def images(seed):
        generator = torch.Generator().manual_seed(seed)
        return [torch.randn(8, 3, 12, 12, generator=generator) for _ in range(4)]
    names = ["features.3", "features.6", "classifier"]
    fitted, _ = second_moments(original, names, images(1), torch.device("cpu"))
    heldout, _ = second_moments(original, names, images(2), torch.device("cpu"))

    class Statistics:
        def layer(self, name):
            return {"second_moment": fitted[name]}

        def heldout(self, name):
            return heldout[name].double().numpy()

    before = pruned.features[6].weight.detach().clone()
    rows = {row["layer"]: row for row in reconstruct(pruned, original, Statistics(), 1e-3)}
    assert "features.6" in rows and rows["features.6"]["kept_inputs"] < rows["features.6"]["inputs"] == 24
    assert all(row["output_error_refit"] < row["output_error_dropped"] for row in rows.values()), rows
    assert not torch.equal(before, pruned.features[6].weight)
