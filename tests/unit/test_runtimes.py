"""The second runtime (OpenVINO) and the second quantizer (NNCF) on a tiny exported ALM: the same
logits as ONNX Runtime, batches that agree with single images, the benchmark worker, and the one-line
errors for what is not installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pandas as pd
import pytest

from lwpar.core.errors import LwparError
from lwpar.deploy.runtimes import open_session, require

openvino = pytest.importorskip("openvino")


def _images(batch: int, shape=(3, 64, 32)) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, *shape), dtype=np.float32)


def _logits(session, images: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.mark.parametrize("batch", [1, 8])
def test_both_runtimes_give_the_same_logits_and_a_batch_equals_its_single_images(tiny_onnx, batch):
    _, path = tiny_onnx
    images = _images(batch)
    reference = _logits(open_session(path, threads=1), images)
    session = open_session(path, threads=1, runtime="openvino")
    logits = _logits(session, images)
    scale = max(1.0, float(np.abs(reference).max()))
    assert logits.shape == reference.shape
    assert np.abs(logits - reference).max() <= 1e-4 * scale
    singles = np.concatenate([_logits(session, images[i:i + 1]) for i in range(batch)])
    assert np.abs(singles - logits).max() <= 1e-4 * scale


def test_openvino_runs_fp32_layers_in_f32_unless_asked(tiny_onnx):
    """Its CPU plugin's own default is bfloat16 where the CPU has AMX or AVX512-BF16: the session pins it."""
    _, path = tiny_onnx
    session = open_session(path, threads=1, runtime="openvino")
    assert session.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32


def test_a_runtime_that_is_not_installed_is_one_line_naming_pip(monkeypatch, tiny_onnx):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(LwparError, match=r"^runtime openvino: openvino is not installed \(pip install openvino\)$"):
        open_session(tiny_onnx[1], runtime="openvino")
    with pytest.raises(LwparError, match="unknown"):
        require("tensorrt")


def test_a_target_on_a_runtime_that_is_not_installed_is_refused_at_planning(monkeypatch):
    from conftest import ROOT
    from lwpar.config import load_params
    from lwpar.config.checks import problems

    params = load_params(ROOT / "params.yaml")
    params["profile"]["targets"]["local_cpu"]["runtime"] = "openvino"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    found = dict(problems(params))
    assert found["profile.targets.local_cpu.runtime"] == "openvino is not installed (pip install openvino)"


def test_an_unreadable_model_names_the_file_on_openvino(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model" * 8)
    with pytest.raises(LwparError, match=r"model\.onnx: OpenVINO cannot read this model"):
        open_session(broken, runtime="openvino")


def test_the_benchmark_workers_runner_compiles_each_batch_size_on_openvino(tiny_onnx):
    from lwpar.deploy.bench_worker import openvino_runner

    for batch in (1, 4):
        call = openvino_runner(tiny_onnx[1], 1, batch, "f32")
        assert call()[0].shape == (batch, 5)


def test_the_predictor_gives_the_same_probabilities_on_both_runtimes(artifact):
    from lwpar.deploy.predict import Predictor

    folder, photos = artifact
    images = sorted(p for p in photos.glob("*") if p.is_file())[:3]
    onnx_runtime = Predictor(folder, threads=1).predict(images)
    on_openvino = Predictor(folder, threads=1, runtime="openvino").predict(images)
    assert on_openvino.attributes == onnx_runtime.attributes
    assert np.abs(on_openvino.probabilities - onnx_runtime.probabilities).max() <= 1e-5


def test_nncf_int8_is_a_qdq_model_that_both_runtimes_load_and_score(tiny_onnx, tmp_path):
    pytest.importorskip("nncf")
    from conftest import ROOT
    from lwpar.config import load_params
    from lwpar.deploy.quantize import quantize_model

    _, path = tiny_onnx
    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "engine": "nncf", "calibration_images": 16}
    batches = [_images(4) for _ in range(4)]
    quantize_model(path, tmp_path / "int8.onnx", cfg, iter(batches), tmp_path / "node_error.csv",
                   (batch for batch in batches[:2]))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert pd.read_csv(tmp_path / "node_error.csv").empty  # not measured for NNCF's tensor names: nothing, not a guess
    images = batches[0]
    fp32 = _logits(open_session(path, threads=1), images)
    for runtime in ("onnxruntime", "openvino"):
        # OpenVINO runs the QDQ pairs as INT8 kernels, ONNX Runtime partly as float ops between them:
        # on a random tiny net their rounding differs, so the bound is loose; a collapsed model is far out
        int8 = _logits(open_session(tmp_path / "int8.onnx", threads=1, runtime=runtime), images)
        assert np.abs(int8 - fp32).max() < 0.25 * np.abs(fp32).max() + 0.05, runtime


def test_a_bundle_with_openvino_ir_runs_as_its_onnx_model(artifact, tmp_path):
    from lwpar.deploy.bundle import OPENVINO_IR, bundle

    folder, _ = artifact
    copied, _ = bundle(folder, tmp_path / "device", openvino_ir=True)
    assert OPENVINO_IR in copied and (tmp_path / "device" / OPENVINO_IR).with_suffix(".bin").is_file()
    core = openvino.Core()
    ir = core.read_model(str(tmp_path / "device" / OPENVINO_IR))
    assert "attributes" in ir.get_rt_info(["lwpar"]).astype(str)
    compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    images = _images(2)
    reference = _logits(open_session(folder / "model.onnx", threads=1), images)
    assert np.abs(compiled(images)[compiled.outputs[0]] - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_the_node_profile_counts_each_runtimes_nodes_per_inference(tiny_onnx):
    """`lwpar node-profile`: every executed convolution is counted once per inference, on both
    runtimes, and the times are per inference (more runs do not add up)."""
    from lwpar.deploy.node_profile import compare, node_times

    path = tiny_onnx[1]
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    tables = []
    for runtime in ("onnxruntime", "openvino"):
        table = node_times(path, runtime, runs=2, warmup=1).assign(artifact="tiny")
        assert (table.ms > 0).any() and table.share.sum() == pytest.approx(1.0), runtime
        assert table[table.op.isin(["Conv", "Convolution"])].nodes.sum() >= 1, runtime
        tables.append(table)
    ort = tables[0]
    assert 0 < ort[ort.op == "Conv"].nodes.sum() <= convs  # each node once, whatever the runs
    shown = compare(pd.concat(tables), top=2)
    assert set(shown.runtime) == {"onnxruntime", "openvino"} and "all nodes" in set(shown.op)
