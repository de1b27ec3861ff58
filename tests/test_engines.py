"""Snakemake and DVC run the same DAG: each sees the other's results as done, and a change to one
variant's parameters makes both rerun exactly that variant's jobs and what depends on them.

One temporary git + DVC repository with the smoke configuration (profiling trimmed to one batch size
and one thread count, so the test stays short).
"""

from __future__ import annotations

import re
import shutil
import sys

import pytest
import yaml

from conftest import BIN, ROOT, run_command
from lwpar import pipeline
from lwpar.config import load_params

pytestmark = pytest.mark.slow

VARIANT = "svd_r50"


def _snakemake(work, *args, timeout=2700):  # against hangs; a slow 2-core VM needs 10-15 min
    return run_command([str(BIN / "snakemake"), "--cores", "2", *args], work, timeout=timeout)


def _dvc(work, *args, timeout=2700):
    return run_command([str(BIN / "dvc"), *args], work, timeout=timeout)


def _planned_by_snakemake(work) -> list[str]:
    """The jobs `snakemake -n` would run, named as dvc.yaml names its stages."""
    run = _snakemake(work, "-n")
    assert run.returncode == 0, run.stderr[-2000:]
    stages = pipeline.stages(load_params(work / "params.yaml"))
    jobs, rule = [], None
    for line in run.stdout.splitlines():
        started = re.match(r"^(?:local)?rule (\w+):", line)
        if started:
            rule = started.group(1)
            if rule in stages and not stages[rule].wildcards:
                jobs.append(rule)
            continue
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and rule in stages:
            values = dict(item.split("=", 1) for item in wildcards.group(1).split(", "))
            jobs.append(stages[rule].job_name(values))
    return sorted(jobs)


def _run_by_dvc(output: str) -> list[str]:
    return sorted(re.findall(r"Running stage '([^']+)'", output))


def _expected_after_finetune_change(params) -> list[str]:
    """The variant's jobs from fine-tuning on (its decomposition does not read fine-tuning settings),
    its INT8 form's, and the jobs that read every variant (profile, report)."""
    names = {VARIANT, f"{VARIANT}+int8"}
    jobs = []
    for stage, wildcards in pipeline.grid(params):
        mine = (wildcards.get("variant") in names and stage.name != "decompose") or wildcards.get("name") in names
        if mine or stage.name in ("profile", "report"):
            jobs.append(stage.job_name(wildcards))
    return sorted(jobs)


def _set_finetune_lr(work, lr):
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["variants"][VARIANT]["finetune"]["lr"] = lr
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    regenerate = run_command([sys.executable, "-m", "lwpar.pipeline", "dvc", "--params", "params.yaml",
                              "--out", "dvc.yaml"], work)
    assert regenerate.returncode == 0, regenerate.stderr


@pytest.fixture(scope="module")
def repo(real_mirror, tmp_path_factory):
    work = tmp_path_factory.mktemp("engines")
    for name in ("Snakefile", "workflow", "profiles"):
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "workflow/params/smoke.yaml").read_text())
    params["paths"]["mirror"] = str(real_mirror)
    params["profile"].update(batch_sizes=[1], threads=[1], warmup=1, rounds=2, iters_per_round=1)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run_command([sys.executable, "-m", "lwpar.pipeline", "dvc", "--params", "params.yaml",
                        "--out", "dvc.yaml"], work).returncode == 0
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                    [str(BIN / "dvc"), "config", "core.analytics", "false"],
                    # as the project's .dvc/config: a copy would give every committed file a new mtime,
                    # which Snakemake would take for new inputs
                    [str(BIN / "dvc"), "config", "cache.type", "hardlink"]):
        assert run_command(command, work).returncode == 0
    shutil.copy(ROOT / ".dvcignore", work / ".dvcignore")
    return work


def test_both_engines_agree(repo):
    work = repo
    # 1. dvc repro runs everything; Snakemake then has nothing to do.
    first = _dvc(work, "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    all_jobs = sorted(stage.job_name(w) for stage, w in pipeline.grid(load_params(work / "params.yaml")))
    assert _run_by_dvc(first.stdout) == all_jobs
    assert _planned_by_snakemake(work) == []
    # DVC sees the metrics and plots the stages declare.
    metrics = _dvc(work, "metrics", "show")
    assert metrics.returncode == 0 and "train.json" in metrics.stdout and "mA" in metrics.stdout, metrics.stdout
    plots = _dvc(work, "plots", "show", "--out", "dvc_plots")
    assert plots.returncode == 0 and (work / "dvc_plots/index.html").stat().st_size > 1000, plots.stderr

    # Hand-over to Snakemake: it records which params made the outputs (it judges parameter changes by
    # its own records, and DVC keeps none for it). Nothing is recomputed; DVC stays clean.
    touched = _snakemake(work, "--touch", "--forceall")
    assert touched.returncode == 0, touched.stderr[-2000:]
    assert "up to date" in _dvc(work, "status").stdout.lower()

    # 2. One variant's parameter changes: Snakemake plans exactly that variant's jobs and what reads
    #    them, and runs them; after `dvc commit -f`, DVC has nothing to do.
    _set_finetune_lr(work, 0.0002)
    expected = _expected_after_finetune_change(load_params(work / "params.yaml"))
    assert _planned_by_snakemake(work) == expected
    by_snakemake = _snakemake(work)
    assert by_snakemake.returncode == 0, by_snakemake.stderr[-3000:]
    assert _planned_by_snakemake(work) == []
    assert _dvc(work, "commit", "-f").returncode == 0
    status = _dvc(work, "status")
    assert status.returncode == 0 and "up to date" in status.stdout.lower(), status.stdout

    # 3. The same kind of change under DVC reruns the same job list; Snakemake plans the same list
    #    (its records are older than DVC's run) until the hand-over records the new params.
    _set_finetune_lr(work, 0.0001)
    locked = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    by_dvc = _dvc(work, "repro")
    assert by_dvc.returncode == 0, by_dvc.stdout[-3000:] + by_dvc.stderr[-3000:]
    ran = _run_by_dvc(by_dvc.stdout)
    # DVC skips a stage whose inputs hash as before: when fine-tuning never beats its starting point
    # (the smoke run's one short epoch), both rates keep the same weights and the FP32 export is the
    # same file. Every skipped job must be such a stage; the rest must have run.
    relocked = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    skipped = [job for job in expected if job not in ran]
    assert set(ran) <= set(expected) and "finetune-peta-alm_effl0-" + VARIANT in ran, ran
    assert all(locked[job]["deps"] == relocked[job]["deps"] and locked[job].get("params") == relocked[job].get("params")
               for job in skipped), skipped
    assert _planned_by_snakemake(work) == expected
    assert _snakemake(work, "--touch").returncode == 0
    assert _planned_by_snakemake(work) == []
    assert "up to date" in _dvc(work, "status").stdout.lower()
