"""Fault injection on small real runs: each case asserts the exact outcome, not just "no crash".

The other fault cases live beside the code they exercise (bad params in unit/test_config, downloads
in unit/test_download, corrupt inputs and archives in unit/test_data, corrupt artifacts in
unit/test_deploy and unit/test_training) and on the smoke run (e2e/test_faults_e2e); every one
carries the `fault` marker, so `pytest tests -m fault` runs them all.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import synthetic
from lwpar.data.prepare import prepare

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    members, _ = synthetic.make_release(persons_per_subset=12, images_per_person=3)
    synthetic.write_zip(tmp / "mirror" / "PETA.zip", members)
    params = synthetic.tiny_training_params(tmp, tmp / "mirror", epochs=1)
    prepare(params, "peta", tmp / "prepared", tmp / "dl")
    return tmp, synthetic.write_params(tmp / "params.yaml", params)


def _lwpar(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lwpar", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _train(tmp, params_path, out):
    return _lwpar("train", "--params", params_path, "--dataset-dir", tmp / "prepared", "--model", "tiny", "--out", out)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """A small (or read-only) filesystem at `path`: a real full disk, a real unwritable folder."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _one_error_line(stderr: str, stage: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"lwpar {stage}: error: "), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return lines[-1]


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_disk_full_during_training_fails_cleanly(tiny, tmp_path):
    tmp, params_path = tiny
    with _tmpfs(tmp_path / "full", "256k") as disk:
        run = _train(tmp, params_path, disk / "run")
        assert run.returncode == 2
        line = _one_error_line(run.stderr, "train")
        assert "No space left on device" in line and str(disk / "run") in line
        assert _files_under(disk) == [], "a failed write must leave no partial file"


def test_unwritable_output_directory_fails_cleanly(tiny, tmp_path):
    tmp, params_path = tiny
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        run = _train(tmp, params_path, disk / "run")
        assert run.returncode == 2
        line = _one_error_line(run.stderr, "train")
        assert "Read-only file system" in line and str(disk / "run") in line
        assert _files_under(disk) == []


def test_unwritable_evaluation_output_leaves_nothing(tiny, tmp_path):
    tmp, params_path = tiny
    model = tmp_path / "model"
    assert _train(tmp, params_path, model).returncode == 0
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        run = _lwpar("evaluate", "--params", params_path, "--dataset-dir", tmp / "prepared",
                     "--model", model / "model.pt", "--split", "test", "--out-dir", disk / "eval")
        assert run.returncode == 2
        assert "Read-only file system" in _one_error_line(run.stderr, "evaluate")


def test_same_params_and_seed_give_the_same_metrics(tiny, tmp_path):
    tmp, params_path = tiny
    for name in ("a", "b"):
        assert _train(tmp, params_path, tmp_path / name).returncode == 0
        run = _lwpar("evaluate", "--params", params_path, "--dataset-dir", tmp / "prepared", "--model",
                     tmp_path / name / "model.pt", "--split", "test", "--out-dir", tmp_path / name / "eval")
        assert run.returncode == 0, run.stderr
    a = torch.load(tmp_path / "a/model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((tmp_path / n / "eval/metrics.json").read_text()) for n in ("a", "b")]
    assert metrics[0].pop("model") != metrics[1].pop("model")  # the only field that may differ
    assert metrics[0] == metrics[1]
    assert (tmp_path / "a/eval/per_attribute.csv").read_text() == (tmp_path / "b/eval/per_attribute.csv").read_text()
