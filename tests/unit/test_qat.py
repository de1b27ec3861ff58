"""Quantization-aware fine-tuning's INT8 simulation against what ONNX Runtime's quantizer makes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from lwpar.deploy.artifact import onnx_session
from lwpar.deploy.export import export_onnx
from lwpar.models import build_model
from lwpar.training import qat

pytestmark = pytest.mark.timeout(120)


def _model():
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 5).eval()
    with torch.no_grad():  # BatchNorms that scale their channels unevenly: folding them must not move the grid
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.2, 4.0)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.weight.uniform_(-1.5, 1.5)
    return model


def _batches(count=3, shape=(4, 3, 64, 32)):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]


def _quantize(source, target, batches):
    from conftest import ROOT
    from lwpar.config import load_params
    from lwpar.deploy.quantize import quantize_model

    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "mode": "static", "reduce_range": False,
           "error_images": 0}
    quantize_model(source, target, cfg, iter(batches))
    return target


def _weight_rounding(fp32: os.PathLike, int8) -> float:
    """The largest change ONNX Runtime's quantizer makes to any convolution weight, in units of its step."""
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    graph = onnx.load(str(int8)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    worst = 0.0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in tensors or tensors[node.input[0]].dtype != np.int8:
            continue
        name = node.input[0].removesuffix("_quantized")
        if name not in floats or floats[name].ndim != 4:
            continue
        scale = tensors[node.input[1]].reshape(-1, *([1] * (floats[name].ndim - 1)))
        dequantized = tensors[node.input[0]].astype(np.float32) * scale
        worst = max(worst, float(np.max(np.abs(dequantized - floats[name]) / scale)))
    return worst


def test_the_onnx_runtime_quantizer_keeps_stripped_weights_exactly(tmp_path):
    """After `strip`, every exported (BatchNorm-folded) convolution weight is already on the grid
    ONNX Runtime's quantizer computes for it; the untouched model's weights move by up to half a step."""
    batches = _batches()
    plain = _model()
    export_onnx(plain, (64, 32), tmp_path / "plain.onnx")
    rounded = _weight_rounding(tmp_path / "plain.onnx", _quantize(tmp_path / "plain.onnx", tmp_path / "p8.onnx", batches))
    assert rounded > 0.3

    model = _model()
    assert qat.prepare(model) == len([m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)])
    qat.calibrate(model, batches, torch.device("cpu"))
    qat.strip(model)
    assert not any(hasattr(m, "input_grid") or m._forward_pre_hooks for m in model.modules())
    export_onnx(model, (64, 32), tmp_path / "qat.onnx")
    assert _weight_rounding(tmp_path / "qat.onnx", _quantize(tmp_path / "qat.onnx", tmp_path / "q8.onnx", batches)) < 1e-3


def test_calibration_takes_the_float_inputs_min_and_max():
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Conv2d(3, 1, 1))
    qat.prepare(conv)
    batches = [torch.randn(2, 2, 5, 5) * 3 + 1 for _ in range(2)]
    assert qat.calibrate(conv, batches, torch.device("cpu")) == 4
    first = conv[0].input_grid
    assert first.low.item() == pytest.approx(min(0.0, min(b.min().item() for b in batches)))
    assert first.high.item() == pytest.approx(max(b.max().item() for b in batches))
    assert conv[2].input_grid.low.item() == 0.0  # after a ReLU: ONNX Runtime's range starts at 0 too


def test_the_simulation_reproduces_the_int8_model_of_a_convolution_chain(tmp_path):
    """On a chain of Conv + BatchNorm + ReLU, where every tensor ONNX Runtime quantizes is a
    convolution's input or the output, simulating those gives the INT8 model's logits to within a
    few percent of the FP32 model's distance from them."""
    torch.manual_seed(0)
    layers = [m for i, o in ((3, 8), (8, 16), (16, 16))
              for m in (torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.Conv2d(16, 4, 1)).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.2, 4.0)
            bn.weight.uniform_(-1.5, 1.5)
    torch.onnx.export(model, (torch.randn(1, 3, 64, 32),), str(tmp_path / "fp32.onnx"), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    batches = _batches()
    int8 = onnx_session(_quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", batches))
    images = _batches(1, (8, 3, 64, 32))[0]
    with torch.no_grad():
        fp32 = model(torch.from_numpy(images)).numpy()
        qat.prepare(model)
        simulated = torch.nn.Sequential(model, qat.InputGrid("uint8")).eval()  # the logits are quantized too
        qat.calibrate(simulated, batches, torch.device("cpu"))
        predicted = simulated(torch.from_numpy(images)).numpy()
    quantized = int8.run(None, {"image": images})[0]
    assert np.abs(predicted - quantized).mean() < 0.1 * np.abs(fp32 - quantized).mean()


def test_gradients_pass_the_rounding_and_the_grids_survive_a_deep_copy():
    import copy

    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Conv2d(3, 1, 1))
    qat.prepare(conv)
    qat.calibrate(conv, [torch.randn(2, 2, 5, 5)], torch.device("cpu"))
    conv.train()
    conv(torch.randn(2, 2, 5, 5)).sum().backward()
    assert conv[0].parametrizations.weight.original.grad.abs().sum() > 0
    averaged = copy.deepcopy(conv)
    averaged[0].input_grid.high.fill_(1e-3)  # the copy quantizes with its own range, not the original's
    x = torch.rand(1, 2, 5, 5) + 0.5
    assert not torch.equal(averaged(x), conv(x))


def test_quantization_aware_finetuning_scores_the_simulation_and_leaves_weights_on_their_grids(tiny, tmp_path):
    from lwpar.data.loader import Prepared, build_transform, calibration_batches
    from lwpar.training.finetune import finetune
    from lwpar.training.loop import Run

    folder, params = tiny
    data = Prepared(folder / "prepared")
    recipe = {"epochs": 1, "max_steps_per_epoch": 2, "lr": 1e-4, "recalibrate_bn": True,
              "score_before_recalibration": True, "distill_weight": 0.0, "distill_temperature": 4.0, "qat": True}
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", len(data.attributes))
    batches = calibration_batches(data.split("train")[0], build_transform((64, 32), False), 16, 0)
    _, scores = finetune(model, data, (64, 32), recipe, params["train"], tmp_path, Run(torch.device("cpu")),
                         qat={"per_channel": True, "seven_bit": False, "activations": "uint8", "batches": batches})
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert scores["qat"]["layers"] == len(convs) and scores["qat"]["calibration_images"] == 16
    assert not any(parametrize_names(m) for m in convs)
    for conv in convs:  # every output channel's weights are integers times max|w| / 127
        w = conv.weight.detach().flatten(1)
        steps = w / (w.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)
        assert torch.allclose(steps, steps.round(), atol=1e-3)


def parametrize_names(module) -> list[str]:
    return list(getattr(module, "parametrizations", {}))
