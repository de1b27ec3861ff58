"""Fault injection on the smoke run: training killed under Snakemake and under DVC is rerun and
resumes from its checkpoint, and a second Snakemake in the same folder is refused."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, copy_run, run_command, scratch_workflow

pytestmark = pytest.mark.fault


# --- the pipeline under faults: Snakemake and DVC on the smoke configuration -------------------------

def _two_epoch_smoke(params):
    params["train"].update(epochs=2)


def _two_epoch_copy(smoke_run, dest: Path) -> dict:
    """A copy of the shared smoke run whose training now has two epochs: Snakemake reruns the
    training and everything after it, and nothing before it (the prepared data is reused)."""
    work = copy_run(smoke_run[0], dest)
    params = yaml.safe_load((work / "smoke.yaml").read_text())
    _two_epoch_smoke(params)
    (work / "smoke.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the finished run's last checkpoint (other settings) would otherwise be there before training starts
    (work / params["paths"]["results"] / "peta" / "alm_effl0" / "baseline" / "checkpoint.pt").unlink()
    return params


def _start(args, cwd, log: Path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    with open(log, "w") as handle:
        return subprocess.Popen(args, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _kill_tree(process):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for(path: Path, process, log: Path, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


@pytest.mark.timeout(1200)
def test_killed_training_under_snakemake_is_rerun_and_resumes(smoke_run, tmp_path):
    tmp_path = tmp_path / "run"
    params = _two_epoch_copy(smoke_run, tmp_path)
    run_dir = tmp_path / params["paths"]["results"] / "peta" / "alm_effl0" / "baseline"
    snakemake = [str(BIN / "snakemake"), "--cores", "2", "--config", "params=smoke.yaml"]
    first = _start([*snakemake, "--until", "train"], tmp_path, tmp_path / "first.log")
    _wait_for(run_dir / "checkpoint.pt", first, tmp_path / "first.log")
    _kill_tree(first)  # the whole process group: Snakemake and its training job, by SIGKILL
    assert not (run_dir / "model.pt").exists()

    plan = run_command([*snakemake, "-n", "--until", "train"], tmp_path)
    assert "train" in plan.stdout and "Nothing to be done" not in plan.stdout, plan.stdout[-2000:]
    # A SIGKILLed Snakemake cannot release its lock: the next run says so and names the way out.
    locked = run_command([*snakemake, "--until", "train"], tmp_path)
    assert locked.returncode != 0 and "--unlock" in locked.stderr, locked.stderr[-2000:]
    assert run_command([*snakemake, "--unlock"], tmp_path).returncode == 0
    rerun = run_command([*snakemake, "--until", "train"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (tmp_path / "logs" / params["paths"]["results"] / "train/peta/alm_effl0.log").read_text()
    assert "resuming from" in log and "after epoch 1" in log, log[-2000:]
    assert (run_dir / "model.pt").is_file()


@pytest.mark.timeout(1200)
def test_killed_training_under_dvc_is_rerun_and_resumes(real_mirror, tmp_path):
    # DVC has no records of the shared run, so it prepares the data itself (a subset: seconds)
    params = scratch_workflow(tmp_path, real_mirror, edit=_two_epoch_smoke)
    (tmp_path / "params.yaml").write_text((tmp_path / "smoke.yaml").read_text())
    generate = run_command([str(BIN / "lwpar"), "dvc", "--params", "params.yaml", "--out", "dvc.yaml"], tmp_path)
    assert generate.returncode == 0, generate.stderr
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                    [str(BIN / "dvc"), "config", "core.analytics", "false"]):
        assert run_command(command, tmp_path).returncode == 0
    stage = "train-peta-alm_effl0"
    run_dir = tmp_path / params["paths"]["results"] / "peta" / "alm_effl0" / "baseline"
    first = _start([str(BIN / "dvc"), "repro", stage], tmp_path, tmp_path / "first.log")
    _wait_for(run_dir / "checkpoint.pt", first, tmp_path / "first.log")
    _kill_tree(first)
    assert not (run_dir / "model.pt").exists()

    status = run_command([str(BIN / "dvc"), "status", stage], tmp_path)
    assert stage in status.stdout, status.stdout + status.stderr
    rerun = run_command([str(BIN / "dvc"), "repro", stage], tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    assert (run_dir / "model.pt").is_file()
    clean = run_command([str(BIN / "dvc"), "status", stage], tmp_path)
    assert "up to date" in clean.stdout.lower() or clean.stdout.strip() == "", clean.stdout


@pytest.mark.timeout(900)
def test_second_snakemake_in_the_same_directory_refuses(smoke_run, tmp_path):
    tmp_path = tmp_path / "run"
    _two_epoch_copy(smoke_run, tmp_path)  # a run with work to do: training and everything after it
    snakemake = [str(BIN / "snakemake"), "--cores", "1", "--config", "params=smoke.yaml"]
    first = _start(snakemake, tmp_path, tmp_path / "first.log")
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.1)
        second = run_command(snakemake, tmp_path, timeout=300)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr, (second.stdout + second.stderr)[-2000:]
        assert first.poll() is None, "the refused run must not disturb the first"
    finally:
        _kill_tree(first)
