"""`lwpar train` and `lwpar evaluate` as processes: a killed run resumes to bit-identical weights, a
checkpoint of other settings is not resumed, NaN and frozen random layers stop with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch


import synthetic

pytestmark = pytest.mark.timeout(600)  # each test trains a tiny ALM in a child process, some of them three times


class Run:
    """A `lwpar train` child whose output goes to a file: a pipe read only after wait() would
    deadlock as soon as the child printed more than the pipe holds."""

    def __init__(self, tmp, params_path, out):
        out.mkdir(parents=True, exist_ok=True)
        self.log = out.parent / f"{out.name}.{time.time_ns()}.log"
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lwpar", "train", "--params", str(params_path), "--dataset-dir",
                 str(tmp / "prepared"), "--model", "tiny", "--out", str(out)],
                stdout=handle, stderr=subprocess.STDOUT, text=True)
        self.pid = self.process.pid

    def wait(self, timeout=None):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never leave a training child eating the CPU of later tests
            self.process.wait()
            raise AssertionError(f"lwpar train did not finish in {timeout} s:\n{self.output()[-2000:]}")

    def poll(self):
        return self.process.poll()

    def output(self) -> str:
        return self.log.read_text()


def _train(tmp, params_path, out):
    return Run(tmp, params_path, out)


def _refused(tiny, name: str, **train_overrides) -> str:
    """Train with some `train` params changed; the run must exit with 2. Returns its output."""
    tmp, params = tiny
    bad = dict(params, train={**params["train"], **train_overrides})
    run = _train(tmp, synthetic.write_params(tmp / f"{name}.yaml", bad), tmp / name)
    assert run.wait(timeout=300) == 2
    return run.output()


@pytest.mark.fault
# one schedule as a process (SIGKILL mid-epoch); the others are resumed in process (unit/test_training)
@pytest.mark.parametrize("schedule,ema_decay", [("cosine_steps", 0.8)])
def test_killed_training_resumes_bit_identical(tiny, schedule, ema_decay):
    tmp, params = tiny
    suffix = ("" if schedule == "cosine" else f"_{schedule}") + (f"_ema{ema_decay}" if ema_decay else "")
    params = dict(params, train={**params["train"], "schedule": schedule, "ema_decay": ema_decay})
    params_path = synthetic.write_params(tmp / f"params{suffix}.yaml", params)
    whole = _train(tmp, params_path, tmp / f"whole{suffix}")
    assert whole.wait(timeout=300) == 0, whole.output()

    victim = _train(tmp, params_path, tmp / f"killed{suffix}")
    checkpoint = tmp / f"killed{suffix}" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)  # mid-epoch 2: epoch 1's checkpoint was just written
    victim.wait()
    log = victim.output()
    assert "epoch 2:" not in log and "epoch 3:" not in log, "the kill must land before epoch 2 ends"
    assert not (tmp / f"killed{suffix}" / "model.pt").exists(), "a killed run must not leave a finished-looking output"

    resumed = _train(tmp, params_path, tmp / f"killed{suffix}")
    assert resumed.wait(timeout=300) == 0
    assert "resuming from" in resumed.output()
    a = torch.load(tmp / f"whole{suffix}" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp / f"killed{suffix}" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    history = json.loads((tmp / f"whole{suffix}" / "train.json").read_text())
    assert history["best_epoch"] in (1, 2, 3)
    # 3 epochs, the first warm-up; the last epoch's final update ran at: per-epoch cosine half the
    # rate, per-update cosine close to 0
    rates = pd.read_csv(tmp / f"whole{suffix}" / "history.csv")["lr"].tolist()
    base = params["train"]["lr"]
    assert rates[0] == pytest.approx(base) and rates[1] <= base
    assert rates[2] == pytest.approx(base / 2) if schedule == "cosine" else rates[2] < base / 4


@pytest.mark.fault
def test_checkpoint_from_other_settings_is_not_resumed(tiny):
    tmp, params = tiny
    first = dict(params, train={**params["train"], "epochs": 1})
    run = _train(tmp, synthetic.write_params(tmp / "p1.yaml", first), tmp / "changed")
    assert run.wait(timeout=300) == 0
    second = dict(params, train={**params["train"], "epochs": 1, "lr": 0.0005})
    run = _train(tmp, synthetic.write_params(tmp / "p2.yaml", second), tmp / "changed")
    assert run.wait(timeout=300) == 0
    assert "resuming" not in run.output()


@pytest.mark.fault
def test_nan_loss_names_epoch_and_step(tiny):
    out = _refused(tiny, "nan", lr=1e30, warmup_epochs=0)
    assert "lwpar train: error: loss is nan at epoch 1, step" in out or "loss is inf at epoch 1, step" in out


def test_evaluate_scores_a_model_file_on_a_split(tiny):
    """`lwpar evaluate` on a PyTorch model file (the pipeline scores ONNX artifacts; this is the other path)."""
    from lwpar.core.modelfile import save_model
    from lwpar.data.loader import Prepared
    from lwpar.models import model_from_params

    tmp, params = tiny
    params_path = synthetic.write_params(tmp / "params.yaml", params)
    attributes = Prepared(tmp / "prepared").attributes
    torch.manual_seed(0)
    model = model_from_params(params["models"]["tiny"], len(attributes))
    save_model(tmp / "untrained.pt", model, params["models"]["tiny"], attributes)
    run = subprocess.run([sys.executable, "-m", "lwpar", "evaluate", "--params", str(params_path),
                          "--dataset-dir", str(tmp / "prepared"), "--model", str(tmp / "untrained.pt"),
                          "--split", "test", "--out-dir", str(tmp / "eval")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["mA"] <= 1 and metrics["images"] == len(Prepared(tmp / "prepared").split("test")[0])
    assert (tmp / "eval" / "per_attribute.csv").read_text().count("\n") == len(attributes) + 1


@pytest.mark.fault
def test_frozen_stages_without_pretrained_weights_are_refused(tiny):
    out = _refused(tiny, "frozen", frozen_stages=1)
    assert "train.frozen_stages: 1 freezes randomly initialised layers of model 'tiny'" in out


