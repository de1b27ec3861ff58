"""Pruning: a structured-pruned ALM keeps its outputs, exports, reloads and meets its MAC budget;
unstructured pruning leaves zeros but the same MACs."""

from __future__ import annotations

import pytest
import torch

from lwpar.complexity import count_macs
from lwpar.models import build_model
from lwpar.prune import prune_to_budget, sparsity, unstructured_prune

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

    from lwpar.artifact import onnx_session
    from lwpar.export import export_onnx, parity
    from lwpar.runtime import save_model
    from lwpar.structure import load_model

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
    from lwpar import LwparError
    from lwpar.decompose.factorize import factorize_layer

    model = build_model("alm", "resnet18", 2).eval()
    for att in model.st_5b.att_list:
        att.conv1 = factorize_layer(att.conv1, "svd", 4)[0]
    cfg = {"importance": "l2", "global_pruning": False, "round_to": 8, "iterative_steps": 1}
    with pytest.raises(LwparError, match="prune first, then decompose the heads"):
        prune_to_budget(model, (64, 32), 0.5, cfg)
