"""Export parity, INT8 quantization and the profile benchmark on tiny models."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

from lwpar import LwparError
from lwpar.evaluation import onnx_session
from lwpar.export import export_onnx, parity
from lwpar.models import build_model


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("onnx")
    model = build_model("alm", "resnet18", 5).eval()
    export_onnx(model, (64, 32), tmp / "model.onnx")
    return model, tmp / "model.onnx"


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


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_static_int8_has_qdq_nodes_and_stays_close(tiny_onnx, tmp_path, activations):
    from lwpar.quantize import quantize_model

    model, path = tiny_onnx
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 3, 64, 32), dtype=np.float32) for _ in range(4)]
    cfg = {"mode": "static", "calibration": "minmax", "calibration_images": 16, "per_channel": True,
           "activations": activations}
    quantize_model(path, tmp_path / "int8.onnx", cfg, iter(batches))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = batches[0]
    fp32 = onnx_session(path).run(None, {"images": x})[0]
    int8 = onnx_session(tmp_path / "int8.onnx").run(None, {"images": x})[0]
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max() + 0.05


def test_uint8_activations_run_every_conv_as_qlinearconv(tiny_onnx, tmp_path):
    """What ONNX Runtime really executes: with uint8 activations no convolution is left in FP32
    behind a per-run DequantizeLinear of its weights."""
    import onnxruntime as ort

    from lwpar.quantize import quantize_model

    _, path = tiny_onnx
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 3, 64, 32), dtype=np.float32) for _ in range(2)]
    cfg = {"mode": "static", "calibration": "minmax", "calibration_images": 8, "per_channel": True,
           "activations": "uint8"}
    quantize_model(path, tmp_path / "int8.onnx", cfg, iter(batches))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = [op for op in ops if "Conv" in op]
    assert convs and all("QLinearConv" in op for op in convs), sorted(set(ops))


def test_profile_result_holds_every_field(tiny_onnx, tmp_path):
    import subprocess
    import sys

    import yaml

    from conftest import ROOT
    from lwpar.runtime import save_model

    model, path = tiny_onnx
    cfg = {"arch": "alm", "backbone": "resnet18", "pretrained": False, "alm_head": "fused", "align_corners": False,
           "input_size": [64, 32]}
    save_model(tmp_path / "model.pt", model, cfg, list("abcde"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"].update(batch_sizes=[1, 2], threads=[1, 0], warmup=1, rounds=2, iters_per_round=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "lwpar", "profile", "--params", str(tmp_path / "params.yaml"),
                          "--onnx", f"baseline={path}", f"copy={path}", "--torch", f"baseline={tmp_path / 'model.pt'}",
                          "--target", "local_cpu", "--out", str(tmp_path / "profile.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "profile.json").read_text())
    assert result["target"] == "local_cpu"
    machine = result["machine"]
    for key in ("cpu_model", "avx512f", "avx512_vnni", "versions", "cpu_count"):
        assert key in machine
    base = result["variants"]["baseline"]
    assert base["params"] > 0 and base["macs"] > 0 and base["size_mb"] > 0 and base["peak_rss_mb"] > 0
    rows = base["latency"]
    assert {(r["batch"], r["threads"]) for r in rows} == {(b, t) for b in (1, 2) for t in {1, machine["cpu_count"]}}
    for row in rows:
        for key in ("median_ms", "p90_ms", "iqr_ms", "images_per_s", "speedup", "mac_reduction",
                    "speedup_per_mac_reduction"):
            assert key in row
        assert row["speedup"] == 1.0 and row["median_ms"] > 0


def test_profile_on_a_target_behind_a_prefix_copies_artifacts_and_worker(tiny_onnx, tmp_path):
    """A remote target as a device would be reached (`ssh dev` + `scp`), here a prefix that runs the
    command in a clean environment and `cp`: the artifacts and the standalone worker are copied to
    remote_dir, the worker runs from there, and the timings come back."""
    from lwpar.profile import benchmark

    _, path = tiny_onnx
    remote = tmp_path / "device"
    target = {"providers": ["CPUExecutionProvider"], "command_prefix": f"env -i PATH={os.environ['PATH']}",
              "copy_command": "cp {src} {dst}", "remote_dir": str(remote)}
    cfg = {"batch_sizes": [1], "threads": [1], "warmup": 1, "rounds": 2, "iters_per_round": 1}
    result = benchmark({"baseline": path, "again": path}, target, cfg)
    copied = sorted(p.name for p in remote.iterdir())
    assert "lwpar_bench_worker.py" in copied and sum(name.endswith(".onnx") for name in copied) == 2
    assert all(result[name]["latency"][0]["median_ms"] > 0 for name in ("baseline", "again"))


@pytest.mark.fault
def test_failing_copy_to_a_target_is_a_clear_error(tiny_onnx, tmp_path):
    from lwpar.profile import benchmark

    _, path = tiny_onnx
    target = {"providers": ["CPUExecutionProvider"], "command_prefix": None,
              "copy_command": "false {src} {dst}", "remote_dir": str(tmp_path / "device")}
    cfg = {"batch_sizes": [1], "threads": [1], "warmup": 1, "rounds": 1, "iters_per_round": 1}
    with pytest.raises(LwparError, match=r"copying .*bench_worker.py to the target failed \(false "):
        benchmark({"baseline": path}, target, cfg)
