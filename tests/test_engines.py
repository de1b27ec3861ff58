"""Snakemake and DVC run the same DAG: after one engine, the other has nothing to do, and a changed
variant parameter makes both rerun exactly that variant's jobs (compared as command lines)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(args, cwd, timeout=1200):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    run = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, f"{' '.join(args)}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def _tiny_params(mirror: Path) -> dict:
    params = yaml.safe_load((ROOT / "workflow/params/smoke.yaml").read_text())
    params["paths"].update(mirror=str(mirror), data="data", results="results")
    params["datasets"]["peta"]["max_persons"] = 60
    params["experiment"].update(variants=["svd_r50"], int8=[])
    params["variants"] = {"svd_r50": params["variants"]["svd_r50"]}
    params["variants"]["svd_r50"]["finetune"]["epochs"] = 0
    params["profile"].update(batch_sizes=[1], threads=[1], warmup=1, rounds=1, iters_per_round=1)
    return params


def _repo(tmp: Path, mirror: Path) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    for name in ("Snakefile", "workflow", "src", "profiles"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
        else:
            shutil.copy(source, repo / name)
    (repo / "tiny.yaml").write_text(yaml.safe_dump(_tiny_params(mirror), sort_keys=False))
    _run([sys.executable, "-m", "lwpar.pipeline", "dvc", "--params", "tiny.yaml"], repo)
    _run(["git", "init", "-q"], repo)
    _run([str(BIN / "dvc"), "init", "-q"], repo)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo)
    (repo / ".gitignore").write_text("/data/\n/results/\n/logs/\n/benchmarks/\n/.snakemake/\n")
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo)
    return repo


def snakemake_commands(repo: Path) -> set[str]:
    out = _run([str(BIN / "snakemake"), "-n", "-p", "--config", "params=tiny.yaml"], repo)
    return {re.sub(r"\s*>\s*logs/\S+ 2>&1$", "", line.strip()) for line in out.splitlines()
            if line.strip().startswith("lwpar ")}


def dvc_commands(repo: Path) -> set[str]:
    out = _run([str(BIN / "dvc"), "repro", "--dry"], repo)
    return {line[2:].strip() for line in out.splitlines() if line.startswith("> lwpar ")}


def test_engines_agree(real_mirror, tmp_path):
    repo = _repo(tmp_path, real_mirror)
    everything = snakemake_commands(repo)
    assert everything == dvc_commands(repo) and len(everything) > 5

    _run([str(BIN / "dvc"), "repro"], repo)
    assert snakemake_commands(repo) == set(), "after dvc repro, snakemake must have nothing to do"

    shutil.rmtree(repo / "results")
    _run([str(BIN / "snakemake"), "--cores", "2", "--config", "params=tiny.yaml"], repo)
    _run([str(BIN / "dvc"), "commit", "-f"], repo)
    assert "up to date" in _run([str(BIN / "dvc"), "status"], repo).lower()

    params = yaml.safe_load((repo / "tiny.yaml").read_text())
    params["variants"]["svd_r50"]["decompose"]["rank"]["macs_fraction"] = 0.6
    (repo / "tiny.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun_snakemake, rerun_dvc = snakemake_commands(repo), dvc_commands(repo)
    assert rerun_snakemake == rerun_dvc
    stages = sorted(c.split()[1] for c in rerun_snakemake)
    assert stages == ["decompose", "evaluate", "export", "finetune", "profile", "report"], stages
    assert all("baseline/model.onnx" not in c or c.startswith("lwpar profile") for c in rerun_snakemake)
