"""The profile benchmark in its worker processes: `lwpar profile`'s record, targets behind a command
prefix with their files copied, one worker holding a folder of models, and a failing copy."""

from __future__ import annotations

import json
import os

import pytest

from lwpar.core.errors import LwparError

pytestmark = pytest.mark.timeout(300)
ONNX_RUNTIME = {"runtime": "onnxruntime", "inference_precision": "f32", "providers": ["CPUExecutionProvider"]}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_profile_result_holds_every_field(tiny_onnx, tmp_path, runtime):
    import subprocess
    import sys

    import yaml

    from conftest import ROOT
    from lwpar.config import load_params
    from lwpar.core.modelfile import save_model

    if runtime == "openvino":
        pytest.importorskip("openvino")
    model, path = tiny_onnx
    cfg = {"arch": "alm", "backbone": "resnet18", "pretrained": False, "alm_head": "fused", "align_corners": False,
           "input_size": [64, 32]}
    save_model(tmp_path / "model.pt", model, cfg, list("abcde"))
    params = load_params(ROOT / "params.yaml")
    params["profile"].update(batch_sizes=[1, 2], threads=[1, 0], warmup=1, rounds=2, iters_per_round=2)
    params["profile"]["targets"]["local_cpu"]["runtime"] = runtime
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "lwpar", "profile", "--params", str(tmp_path / "params.yaml"),
                          "--onnx", f"baseline={path}", f"copy={path}", "--torch", f"baseline={tmp_path / 'model.pt'}",
                          "--target", "local_cpu", "--out", str(tmp_path / "profile.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "profile.json").read_text())
    assert result["target"] == "local_cpu" and result["target_config"]["runtime"] == runtime
    machine = result["machine"]
    assert runtime in machine["versions"]
    for key in ("cpu_model", "avx512f", "avx512_vnni", "versions", "cpu_count"):
        assert key in machine
    base = result["variants"]["baseline"]
    assert base["params"] > 0 and base["macs"] > 0 and base["size_mb"] > 0 and base["peak_rss_mb"] > 0
    rows = base["latency"]
    assert {(r["batch"], r["threads"]) for r in rows} == {(b, t) for b in (1, 2) for t in {1, machine["cpu_count"]}}
    for row in rows:
        for key in ("median_ms", "p90_ms", "iqr_ms", "images_per_s", "speedup", "speedup_paired", "speedup_q1",
                    "speedup_q3", "mac_reduction", "speedup_per_mac_reduction"):
            assert key in row
        assert row["speedup"] == 1.0 and row["median_ms"] > 0 and len(row["round_ms"]) == 2
        assert row["speedup_paired"] == row["speedup_q1"] == row["speedup_q3"] == 1.0
    copy = result["variants"]["copy"]["latency"]
    assert all(r["speedup_q1"] <= r["speedup_paired"] <= r["speedup_q3"] for r in copy)


def test_profile_on_a_target_behind_a_prefix_copies_artifacts_and_worker(tiny_onnx, tmp_path):
    """A remote target as a device would be reached (`ssh dev` + `scp`), here a prefix that runs the
    command in a clean environment and `cp`: the artifacts and the standalone worker are copied to
    remote_dir, the worker runs from there, and the timings come back."""
    from lwpar.deploy.benchmark import benchmark

    _, path = tiny_onnx
    remote = tmp_path / "device"
    target = {**ONNX_RUNTIME, "command_prefix": f"env -i PATH={os.environ['PATH']}",
              "copy_command": "cp {src} {dst}", "remote_dir": str(remote)}
    cfg = {"batch_sizes": [1], "threads": [1], "warmup": 1, "rounds": 2, "iters_per_round": 1}
    result = benchmark({"baseline": path, "again": path}, target, cfg)
    copied = sorted(p.name for p in remote.iterdir())
    assert "lwpar_bench_worker.py" in copied and sum(name.endswith(".onnx") for name in copied) == 2
    assert all(result[name]["latency"][0]["median_ms"] > 0 for name in ("baseline", "again"))


def test_a_folder_of_models_is_copied_and_timed_by_one_worker_behind_a_prefix(tiny_onnx, tmp_path):
    """The latency table's path: a folder of models staged on the target, one worker holding them
    all, each call naming its model; the reply is that model's timing."""
    import shutil
    from pathlib import Path

    from lwpar.deploy.benchmark import Worker, stage_on_target

    _, path = tiny_onnx
    folder = tmp_path / "table"
    folder.mkdir()
    for name in ("0000.onnx", "0001.onnx"):
        shutil.copy(path, folder / name)
    remote = tmp_path / "device"
    target = {**ONNX_RUNTIME, "command_prefix": f"env -i PATH={os.environ['PATH']}",
              "copy_command": "cp {src} {dst}", "remote_dir": str(remote)}
    placed = stage_on_target({"table": folder}, target)["table"]
    assert sorted(p.name for p in Path(placed).iterdir()) == ["0000.onnx", "0001.onnx"]
    worker = Worker(folder, target, placed)
    try:
        assert all(len(worker.run(1, 1, 3, model=name)) == 3 for name in ("0000.onnx", "0001.onnx"))
        with pytest.raises(LwparError, match=r"table: the benchmark worker has no model 'missing.onnx'"):
            worker.run(1, 1, 1, model="missing.onnx")
    finally:
        worker.close()


@pytest.mark.fault
def test_failing_copy_to_a_target_is_a_clear_error(tiny_onnx, tmp_path):
    from lwpar.deploy.benchmark import benchmark

    _, path = tiny_onnx
    target = {**ONNX_RUNTIME, "command_prefix": None,
              "copy_command": "false {src} {dst}", "remote_dir": str(tmp_path / "device")}
    cfg = {"batch_sizes": [1], "threads": [1], "warmup": 1, "rounds": 1, "iters_per_round": 1}
    with pytest.raises(LwparError, match=r"copying .*bench_worker.py to the target failed \(false "):
        benchmark({"baseline": path}, target, cfg)
