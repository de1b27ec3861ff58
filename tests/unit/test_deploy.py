"""Export parity, INT8 quantization and the profile's paired speed-up on tiny models."""

from __future__ import annotations


import numpy as np
import onnx
import pandas as pd
from onnx import numpy_helper
import pytest
import torch

from lwpar.core.errors import LwparError
from lwpar.deploy.artifact import onnx_session
from lwpar.deploy.export import export_onnx, parity
from lwpar.models import build_model


def test_export_has_one_output_dynamic_batch_and_plain_ops(tiny_onnx):
    model, path = tiny_onnx
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {n.op_type for n in graph.node}
    assert not ops & {"GridSample", "AffineGrid", "Einsum"}, "the fused head must export with plain operators"
    session = onnx_session(path)
    for batch in (1, 3):
        report = parity(model, session, torch.randn(batch, 3, 64, 32))
        assert report["max_abs_diff"] < 1e-4
        assert report["bound"] == max(1e-4, 4 * report["torch_float32_error"]) and report["torch_float32_error"] < 1e-5


def test_reference_head_exports_with_a_dynamic_batch(tmp_path):
    """The published head's per-attribute zeros must follow the batch, not be folded at export's."""
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 3, alm_head="reference").eval()
    export_onnx(model, (64, 32), tmp_path / "reference.onnx")
    session = onnx_session(tmp_path / "reference.onnx")
    for batch in (1, 3):
        assert parity(model, session, torch.randn(batch, 3, 64, 32))["max_abs_diff"] < 1e-4
    assert "Resize" not in {n.op_type for n in onnx.load(str(tmp_path / "reference.onnx")).graph.node}


class _Branches(torch.nn.Module):
    """Branches reading one tensor: two 1x1 convs and two 3x3 convs of equal geometry (two groups to
    merge), a strided 3x3 and a depthwise conv (left alone)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 6, 1, bias=False)
        self.c, self.d = torch.nn.Conv2d(8, 5, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1)
        self.strided = torch.nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        same = torch.cat([self.a(x), torch.relu(self.b(x)), self.c(x), self.d(x) * 2, self.depthwise(x)], 1)
        return torch.cat([same.mean((2, 3)), self.strided(x).mean((2, 3))], 1)


def test_export_merges_convs_that_read_one_tensor_with_one_geometry(tmp_path):
    torch.manual_seed(0)
    model = _Branches().eval()
    export_onnx(model, (16, 12), tmp_path / "branches.onnx")
    graph = onnx.load(str(tmp_path / "branches.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    sizes = {init.name: list(init.dims) for init in graph.initializer}
    assert len(convs) == 5 and sum(n.op_type == "Split" for n in graph.node) == 2  # stem, 2 merged, strided, depthwise
    assert sorted(sizes[n.input[1]][0] for n in convs) == [4, 8, 8, 8, 10]
    assert len(graph.initializer) == len({name for n in graph.node for name in n.input} & set(sizes))  # no orphans
    x = torch.randn(3, 3, 16, 12)
    out = onnx_session(tmp_path / "branches.onnx").run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.fault
def test_parity_failure_is_detected_on_a_broken_export(tiny_onnx, tmp_path):
    model, path = tiny_onnx
    broken = onnx.load(str(path))
    initializer = max(broken.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(initializer) * 1.5  # a wrong weight, as a faulty export would leave
    initializer.CopyFrom(onnx.numpy_helper.from_array(array, initializer.name))
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(LwparError, match=r"ONNX parity failed: max \|logit difference\| [0-9.e+-]+ > 0.0001 on 4 images "
                                         r"\(PyTorch float32 vs float64: [0-9.e+-]+\)"):
        parity(model, onnx_session(tmp_path / "broken.onnx"), torch.randn(4, 3, 64, 32))


@pytest.mark.fault
def test_truncated_onnx_is_a_clear_error(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:2000])
    with pytest.raises(LwparError, match=r"cut.onnx: corrupt or unreadable ONNX model"):
        onnx_session(tmp_path / "cut.onnx")


def _quantize(source, target, batches, **overrides):
    """Static INT8 with the default experiment's settings (params.yaml), `overrides` applied."""
    from conftest import ROOT
    from lwpar.config import load_params
    from lwpar.deploy.quantize import quantize_model

    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "mode": "static", **overrides}
    quantize_model(source, target, cfg, iter(batches))
    return target


def _executed_ops(path, tmp_path) -> list[str]:
    """The operators ONNX Runtime really runs: its optimized graph, not the QDQ file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def _random_batches(count, shape=(4, 3, 64, 32)):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_static_int8_has_qdq_nodes_and_stays_close(tiny_onnx, tmp_path, activations):
    _, path = tiny_onnx
    batches = _random_batches(4)
    _quantize(path, tmp_path / "int8.onnx", batches, activations=activations)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = batches[0]
    fp32 = onnx_session(path).run(None, {"images": x})[0]
    int8 = onnx_session(tmp_path / "int8.onnx").run(None, {"images": x})[0]
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max() + 0.05


def test_uint8_activations_run_every_conv_as_qlinearconv(tiny_onnx, tmp_path):
    """With uint8 activations no convolution is left in FP32 behind a per-run DequantizeLinear of its
    weights (int8 activations left 20 of ALM-Lite0's 51 convs so)."""
    _, path = tiny_onnx
    ops = _executed_ops(_quantize(path, tmp_path / "int8.onnx", _random_batches(2), activations="uint8"), tmp_path)
    convs = [op for op in ops if "Conv" in op]
    assert convs and all("QLinearConv" in op for op in convs), sorted(set(ops))


def _stacked_weight_dequantizations(path) -> int:
    """MatMuls fed by a DequantizeLinear of per-attribute stacked (3-D) weights."""
    graph = onnx.load(str(path)).graph
    stacked = {t.name for t in graph.initializer if len(t.dims) == 3}  # conv weights are 4-D
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stacked}
    return sum(n.op_type == "MatMul" and bool(dequantized & set(n.input)) for n in graph.node)


def test_op_types_keep_the_fused_head_matmuls_in_float(tiny_onnx, tmp_path):
    """The fused ALM head multiplies by per-attribute stacked weights (3-D initializers); quantized,
    ONNX Runtime dequantizes them on every run. The default op list leaves them FP32."""
    _, path = tiny_onnx
    batches = _random_batches(2)
    every_op = _quantize(path, tmp_path / "all.onnx", batches, op_types=None)
    default = _quantize(path, tmp_path / "default.onnx", batches)
    assert _stacked_weight_dequantizations(every_op) > 0  # the case the default avoids does arise
    assert _stacked_weight_dequantizations(default) == 0
    assert "QLinearConv" in _executed_ops(default, tmp_path)


class _ResidualWithFloatHead(torch.nn.Module):
    """Conv, ReLU and a residual Add (INT8 reaches them), then a float MatMul and its bias Add and
    ReLU, as the ALM head has them."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        # stacked per-attribute weights: a batched MatMul that no optimizer folds with its bias into a Gemm
        self.weight, self.bias = torch.nn.Parameter(torch.randn(2, 8, 5)), torch.nn.Parameter(torch.randn(2, 1, 5))

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = y + torch.relu(self.conv2(y))
        return torch.relu(torch.matmul(y.mean((2, 3)), self.weight) + self.bias).transpose(0, 1).flatten(1)


def _int8_adds(model) -> list[str]:
    """Adds of a QDQ model that read a DequantizeLinear (ONNX Runtime runs them as QLinearAdd)."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "Add" and any(producer.get(i) == "DequantizeLinear" for i in n.input)]


def test_ops_that_no_int8_tensor_reaches_stay_float(tmp_path, monkeypatch):
    """Quantizing the head's bias Add and ReLU would only wrap them in QuantizeLinear and
    DequantizeLinear (on ALM-BN-Inception 17 QLinearAdds and their glue): they are left out, the
    residual Add that INT8 convs feed is quantized."""
    from lwpar.deploy.quantize import float_islands

    path = tmp_path / "model.onnx"
    torch.onnx.export(_ResidualWithFloatHead().eval(), (torch.randn(1, 3, 16, 16),), str(path), input_names=["images"],
                      dynamic_axes={"images": {0: "batch"}}, opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    kinds = {n.name: n.op_type for n in graph.node}
    excluded = float_islands(onnx.load(str(path)), ["Conv", "Relu", "Add"])
    assert sorted(kinds[name] for name in excluded) == ["Add", "Relu"]

    batches = _random_batches(2, (2, 3, 16, 16))
    quantized = onnx.load(str(_quantize(path, tmp_path / "int8.onnx", batches, op_types=["Conv", "Relu", "Add"])))
    assert len(_int8_adds(quantized)) == 1 and _int8_adds(quantized)[0] not in excluded  # the residual one
    producer = {o: n.op_type for n in quantized.graph.node for o in n.output}
    assert not [n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) == "MatMul"]

    monkeypatch.setattr("lwpar.deploy.quantize.float_islands", lambda model, op_types: [])
    everything = onnx.load(str(_quantize(path, tmp_path / "all.onnx", batches, op_types=["Conv", "Relu", "Add"])))
    assert len(_int8_adds(everything)) == 2  # without the exclusion the head's Add is wrapped too


@pytest.mark.fault
def test_unknown_op_type_is_a_clear_error(tiny_onnx, tmp_path):
    _, path = tiny_onnx
    with pytest.raises(LwparError, match=r"^quantize.op_types: Conv2d is not an ONNX operator"):
        _quantize(path, tmp_path / "int8.onnx", _random_batches(1), op_types=["Conv", "Conv2d"])
    assert not (tmp_path / "int8.onnx").exists()


class _PooledNet(torch.nn.Module):
    def __init__(self, count_include_pad: bool):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=count_include_pad)
        self.conv2 = torch.nn.Conv2d(8, 4, 1)

    def forward(self, images):
        return self.conv2(torch.relu(self.pool(torch.relu(self.conv1(images))))).mean((2, 3))


def _saturating_conv(tmp_path):
    """A 1x1 conv whose u8 x s8 products, added pairwise in int16, overflow: every weight at its
    channel's maximum (int8 127) and every input near the calibrated maximum (uint8 near 255)."""
    conv = torch.nn.Conv2d(64, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.rand(2, 64, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.9
    path = tmp_path / "conv.onnx"
    torch.onnx.export(conv, x, str(path), opset_version=18, input_names=["x"], dynamo=False)
    return path, x.numpy(), conv(x).detach().numpy()


@pytest.mark.parametrize("reduce_range", [True, False, "auto"])
def test_reduce_range_avoids_int16_saturation(tmp_path, reduce_range):
    """7-bit weights keep a pair of u8 x s8 products inside int16 (255 * 63 * 2 < 32767), so ONNX
    Runtime's kernels for x86 CPUs without VNNI do not saturate; with 8-bit weights they do there.
    `auto` takes 8 bits only where that is safe, on whatever CPU runs the test."""
    import onnxruntime as ort

    from lwpar.core.machine import machine_info
    from lwpar.deploy.quantize import weight_range

    source, x, expected = _saturating_conv(tmp_path)
    out = _quantize(source, tmp_path / "int8.onnx", [x], reduce_range=reduce_range, op_types=["Conv"])
    weights = [numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    reduced = weight_range(reduce_range)[0]
    assert max(int(np.abs(w.astype(int)).max()) for w in weights) == (64 if reduced else 127)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    info = machine_info()
    saturates = info.get("avx2") and not (info.get("avx512_vnni") or info.get("avx_vnni"))
    if reduced or not saturates or reduce_range == "auto":
        assert error < 0.01, error
    else:
        assert error > 0.1, f"no saturation measured on a CPU without VNNI ({error:.4f}): is reduce_range still needed?"


def test_auto_weight_range_takes_8_bits_only_where_products_accumulate_in_int32():
    from lwpar.deploy.quantize import weight_range

    assert weight_range("auto", {"avx2", "avx512f", "avx512_vnni"}, "x86_64") == (False, "auto: this CPU has avx512_vnni")
    assert weight_range("auto", {"avx2", "avx_vnni"}, "x86_64")[0] is False
    assert weight_range("auto", {"avx2", "fma"}, "x86_64")[0] is True
    assert weight_range("auto", set(), "aarch64")[0] is False
    assert weight_range(True, {"avx512_vnni"}, "x86_64") == (True, "set in quantize.reduce_range")


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_average_pools_become_depthwise_convs_only_where_exact(tmp_path, count_include_pad):
    """BN-Inception's 3x3 stride-1 pools: as QLinearAveragePool they cost 4x the FP32 pool; rewritten
    as a depthwise conv they run as QLinearConv. A pool that excludes padding is no convolution and stays."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from lwpar.deploy.quantize import pools_as_depthwise_convs

    torch.manual_seed(0)
    export_onnx(_PooledNet(count_include_pad).eval(), (16, 8), tmp_path / "fp32.onnx")
    quant_pre_process(str(tmp_path / "fp32.onnx"), str(tmp_path / "prepared.onnx"), skip_symbolic_shape=True)
    graph = onnx.load(str(tmp_path / "prepared.onnx"))
    assert pools_as_depthwise_convs(graph) == int(count_include_pad)
    onnx.save(graph, str(tmp_path / "rewritten.onnx"))
    x = _random_batches(1, (2, 3, 16, 8))[0]
    before = onnx_session(tmp_path / "fp32.onnx").run(None, {"images": x})[0]
    after = onnx_session(tmp_path / "rewritten.onnx").run(None, {"images": x})[0]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
    ops = _executed_ops(_quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [x]), tmp_path)
    assert ("QLinearAveragePool" in ops) != count_include_pad, sorted(set(ops))


def test_paired_speed_up_cancels_the_machine_drift_that_the_ratio_of_medians_keeps():
    """The machine slows down 3x for the last three rounds, and the variant always takes half the
    baseline's time in its round, except that in round 3 the slow spell started between the two.
    Four of five rounds say 2x, so the paired median and quartiles do; the pooled medians fall on
    either side of the spell's start and give 0.8x."""
    from lwpar.deploy.benchmark import paired_speedup

    drift = np.array([1.0, 1.0, 3.0, 3.0, 3.0])
    base, variant = 10 * drift, 5 * drift
    base[2] = 12                    # one round where the slow spell had not yet reached the baseline
    paired = paired_speedup(list(base), list(variant))
    assert paired["speedup_paired"] == pytest.approx(2.0)
    assert paired["speedup_q1"] == pytest.approx(2.0) and paired["speedup_q3"] == pytest.approx(2.0)
    assert np.median(base) / np.median(variant) != pytest.approx(2.0)


def _cancelling_chain_onnx(path):
    """conv -> relu -> a 1 x 1 factor chain whose two terms are 1e3 times its output and cancel, -> relu:
    the INT8 error is born at the chain's last factor."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False),
                          nn.Conv2d(2, 4, 1), nn.ReLU()).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 0.5, -0.3, 0.2], [1.0, 0.5, -0.3, 0.2001]]).view(2, 4, 1, 1) * 1e3)
        model[3].weight.copy_(torch.tensor([[1.0, -1.0]] * 4).view(4, 2, 1, 1))
        model[0].bias.zero_()  # an all-zero tensor: exact in INT8
    torch.onnx.export(model, (torch.randn(1, 3, 16, 8),), str(path), input_names=["images"], dynamo=False,
                      dynamic_axes={"images": {0: "batch"}})
    return path


def test_the_int8_error_table_finds_where_error_is_born(tmp_path):
    from lwpar.config import load_params
    from lwpar.deploy.quantize import quantize_model
    from conftest import ROOT

    source = _cancelling_chain_onnx(tmp_path / "chain.onnx")
    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "mode": "static"}
    batches = _random_batches(2, (4, 3, 16, 8))
    line = quantize_model(source, tmp_path / "int8.onnx", cfg, iter(batches), tmp_path / "node_error.csv", batches[:1])
    table = pd.read_csv(tmp_path / "node_error.csv")
    activations = table[table["kind"] == "activation"]
    assert len(activations) >= 3 and (table["kind"] == "weight").sum() >= 3
    assert activations["accumulated_sqnr_db"].notna().all()
    born = activations.loc[activations["drop_db"].idxmax()]
    assert born["op"] in ("Conv", "Relu") and born["order"] == activations["order"].max()  # the last factor's output
    assert born["drop_db"] > 20 and "largest drops" in line
    weights = table[table["kind"] == "weight"].set_index("tensor")["own_sqnr_db"]
    assert weights["0.bias"] == np.inf and np.isfinite(weights.drop("0.bias")).all()
    dynamic = quantize_model(source, tmp_path / "dynamic.onnx", {**cfg, "mode": "dynamic"}, None,
                             tmp_path / "none.csv", batches)
    assert pd.read_csv(tmp_path / "none.csv").empty and dynamic == "no tensor error measured"


def test_keep_float_keeps_the_nodes_where_error_is_born_and_lowers_it(tmp_path):
    from lwpar.config import load_params
    from lwpar.deploy.artifact import onnx_session
    from lwpar.deploy.quantize import quantize_model
    from conftest import ROOT

    source = _cancelling_chain_onnx(tmp_path / "chain.onnx")
    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "mode": "static"}
    batches = _random_batches(2, (4, 3, 16, 8))
    x = batches[0]
    reference = onnx_session(source).run(None, {"images": x})[0]

    def error(path):
        return np.linalg.norm(onnx_session(path).run(None, {"images": x})[0] - reference) / np.linalg.norm(reference)

    quantize_model(source, tmp_path / "full.onnx", cfg, iter(batches), None, batches[:1])
    line = quantize_model(source, tmp_path / "mixed.onnx", cfg, iter(batches), tmp_path / "mixed.csv", batches[:1],
                          keep_float={"worst": 1, "min_drop_db": None})
    kept = line.rsplit("kept in FP32: ", 1)[1].split(", ")
    assert {"/2/Conv", "/3/Conv"} <= set(kept) and "/0/Conv" not in kept  # the factor chain, not what feeds it
    assert error(tmp_path / "mixed.onnx") < error(tmp_path / "full.onnx") / 3
    with pytest.raises(LwparError, match="keep_float would keep all 3 quantizable compute nodes in FP32"):
        quantize_model(source, tmp_path / "none.onnx", cfg, iter(batches), None, batches[:1],
                       keep_float={"worst": 10, "min_drop_db": -1e9})
    with pytest.raises(LwparError, match="kept no node in FP32 .no place of error drop >= 1000000000.0 dB"):
        quantize_model(source, tmp_path / "nothing.onnx", cfg, iter(batches), None, batches[:1],
                       keep_float={"worst": 1, "min_drop_db": 1e9})
