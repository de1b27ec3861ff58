"""Snakemake and DVC run the same DAG: each sees the other's results as done, and a change to one
variant's parameters makes both rerun exactly that variant's jobs and what depends on them.

One temporary git + DVC repository made from a copy of the shared smoke run (Snakemake's results),
handed over to DVC; the parameter changes also trim profiling to one batch size and one thread
count, so the reruns stay short (profile and report rerun after any variant's change anyway).
"""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from conftest import BIN, ROOT, copy_run, run_command
from lwpar import pipeline
from lwpar.config import load_params

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

VARIANT = "svd_r50"
CONTROL = "control_changed_lr"  # the matched control of VARIANT once its fine-tuning changes


PARAMS = "smoke.yaml"  # the shared run's params file: its name is part of every job's command


def _snakemake(work, *args, timeout=1200):  # against hangs
    return run_command([str(BIN / "snakemake"), "--cores", "2", "--config", f"params={PARAMS}", *args], work,
                       timeout=timeout)


def _dvc(work, *args, timeout=1200):
    return run_command([str(BIN / "dvc"), *args], work, timeout=timeout)


def _planned_by_snakemake(work) -> list[str]:
    """The jobs `snakemake -n` would run, named as dvc.yaml names its stages."""
    run = _snakemake(work, "-n")
    assert run.returncode == 0, run.stderr[-2000:]
    stages = pipeline.stages(load_params(work / PARAMS))
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


def _expected_after_finetune_change(params, profile_changed: bool) -> list[str]:
    """The variant's jobs from fine-tuning on (its decomposition does not read fine-tuning settings),
    its INT8 form's, its new matched control's, and the jobs that read every variant (profile, the
    model cards, report). When the profile settings change too (a shorter benchmark), the latency
    tables, timed with them, and every variant planned from one are measured and planned again."""
    names = {VARIANT, f"{VARIANT}+int8", CONTROL}
    planned_by_latency = {v for v in params["experiment"]["variants"]
                          if params["variants"][v].get("decompose", {}).get("rank", {}).get("policy") == "latency"}
    jobs = []
    for stage, wildcards in pipeline.grid(params):
        mine = (wildcards.get("variant") in names and stage.name != "decompose") or wildcards.get("name") in names
        mine = mine or profile_changed and (stage.name == "latency"
                                            or bool(planned_by_latency & {wildcards.get("variant"), wildcards.get("name")}))
        if mine or stage.name in ("profile", "card", "report"):  # every card reads the profile
            jobs.append(stage.job_name(wildcards))
    return sorted(jobs)


def _write_dvc_yaml(work):
    generate = run_command([str(BIN / "lwpar"), "dvc", "--params", PARAMS, "--out", "dvc.yaml"],
                           work)
    assert generate.returncode == 0, generate.stderr


def _set_finetune_lr(work, lr):
    params = yaml.safe_load((work / PARAMS).read_text())
    params["variants"][VARIANT]["finetune"]["lr"] = lr
    # its schedule is now its own: it needs a matched control with the same one
    params["variants"][CONTROL] = {"base": None, "finetune": dict(params["variants"][VARIANT]["finetune"])}
    if CONTROL not in params["experiment"]["variants"]:
        params["experiment"]["variants"].append(CONTROL)
    params["profile"].update(batch_sizes=[1], threads=[1], warmup=1, rounds=2, iters_per_round=1)
    (work / PARAMS).write_text(yaml.safe_dump(params, sort_keys=False))
    _write_dvc_yaml(work)


@pytest.fixture(scope="module")
def repo(smoke_run, tmp_path_factory):
    work = copy_run(smoke_run[0], tmp_path_factory.mktemp("engines") / "repo", real_src=True)
    _write_dvc_yaml(work)
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
    # 1. Snakemake ran everything (the shared smoke run). DVC sees every job as not yet recorded;
    #    `dvc commit -f` records Snakemake's results without recomputing, and DVC is clean.
    all_jobs = sorted(stage.job_name(w) for stage, w in pipeline.grid(load_params(work / PARAMS)))
    assert _planned_by_snakemake(work) == []
    unrecorded = _dvc(work, "status")
    assert unrecorded.returncode == 0
    assert sorted(re.findall(r"^(\S+):\s*$", unrecorded.stdout, re.M)) == all_jobs, unrecorded.stdout[-3000:]
    assert _dvc(work, "commit", "-f").returncode == 0
    assert "up to date" in _dvc(work, "status").stdout.lower()
    # DVC sees the metrics and plots the stages declare.
    metrics = _dvc(work, "metrics", "show")
    assert metrics.returncode == 0 and "train.json" in metrics.stdout and "mA" in metrics.stdout, metrics.stdout
    plots = _dvc(work, "plots", "show", "--out", "dvc_plots")
    assert plots.returncode == 0 and (work / "dvc_plots/index.html").stat().st_size > 1000, plots.stderr
    # The DVC records leave Snakemake's untouched.
    assert _planned_by_snakemake(work) == []

    # 2. One variant's parameter changes: Snakemake plans exactly that variant's jobs and what reads
    #    them, and runs them; after `dvc commit -f`, DVC has nothing to do.
    _set_finetune_lr(work, 0.0002)
    expected = _expected_after_finetune_change(load_params(work / PARAMS), profile_changed=True)
    assert _planned_by_snakemake(work) == expected
    by_snakemake = _snakemake(work)
    assert by_snakemake.returncode == 0, by_snakemake.stderr[-3000:]
    assert _planned_by_snakemake(work) == []
    assert _dvc(work, "commit", "-f").returncode == 0
    status = _dvc(work, "status")
    assert status.returncode == 0 and "up to date" in status.stdout.lower(), status.stdout

    # 3. The same kind of change under DVC reruns the same job list; Snakemake plans the same list
    #    (its records are older than DVC's run) until the hand-over records the new params.
    _set_finetune_lr(work, 0.0001)  # the profile settings stay as step 2 left them
    expected = _expected_after_finetune_change(load_params(work / PARAMS), profile_changed=False)
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
