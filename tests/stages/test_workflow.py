"""The workflow as Snakemake and a fresh interpreter see it: one rule per stage, lint, bad params
refused before any job, the SLURM profile and every documented configuration planning their DAG,
and each stage loading no package module outside its job's code inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, run_command as _run
from lwpar import pipeline
from lwpar.config import load_params
from lwpar.pipeline.code import common_modules

pytestmark = pytest.mark.timeout(300)


def test_each_stage_entry_is_one_rule_and_one_subcommand():
    """The rules are made from the stage entries (workflow/rules/stages.smk), with their descriptions;
    the CLI has a subcommand for each."""
    from lwpar.cli import COMMANDS

    stages = pipeline.stages(load_params(ROOT / "params.yaml"))
    run = _run([str(BIN / "snakemake"), "--list-rules"], ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    rules = {line.split(" ", 1)[0]: line for line in run.stdout.splitlines() if line.strip()}
    assert set(rules) == {"all", *stages}
    assert all(stage.doc and stage.doc in rules[name] for name, stage in stages.items())
    assert {stage.command_name for stage in stages.values()} <= set(COMMANDS)


def test_snakemake_lint_passes():
    run = _run([str(BIN / "snakemake"), "--lint"], ROOT, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.fault
def test_bad_params_refused_before_any_job(tmp_path):
    params = load_params(ROOT / "params.yaml")
    params["train"]["epochs"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    run = _run([str(BIN / "snakemake"), "-n", "--config", f"params={tmp_path / 'bad.yaml'}"], ROOT, timeout=300)
    assert run.returncode != 0
    assert "bad.yaml: train.epochs: expected a value >= 1, got -1" in run.stdout + run.stderr


def test_slurm_profile_plans_the_whole_dag():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    run = _run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "-n"], ROOT, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "report" in run.stdout and "train" in run.stdout


@pytest.mark.parametrize("config, jobs", [
    # LWALM as published, for GPU machines
    ("lwalm_gpu.yaml", ("sensitivity", "decompose", "finetune", "quantize", "profile", "report")),
    # ALM-BN-Inception on the CPU: the dense k x k comparison (CP-ALS, CPD-EPC, Tucker-2, SVD, pruning)
    ("bninception_cpu.yaml", ("decompose", "prune", "finetune", "quantize", "profile", "report")),
])
def test_documented_configuration_plans_its_dag(config, jobs):
    """The documented configurations in workflow/params stay valid and plan their DAG."""
    run = _run([str(BIN / "snakemake"), "-n", "--config", f"params=workflow/params/{config}"], ROOT, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for job in jobs:
        assert f"rule {job}:" in run.stdout, job


@pytest.mark.timeout(300)
def test_every_job_depends_on_the_modules_its_stage_loads():
    """The job lists come from reading the sources; importing each stage in a fresh interpreter must
    load no package module outside its job's list (a dynamic import the reading would miss)."""
    import subprocess
    import sys

    listed = {stage.command_name: {*stage.modules, *common_modules()}
              for stage in pipeline.stages(load_params(ROOT / "params.yaml")).values()}
    code = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
            "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items()) if n.startswith('lwpar') and getattr(m, '__file__', None)))")
    root = ROOT / "src" / "lwpar"
    missing = {}
    for name in listed:
        run = subprocess.run([sys.executable, "-c", code, f"lwpar.stages.{name}"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        loaded = {str(Path(f).resolve().relative_to(root.resolve())) for f in run.stdout.split()}
        if loaded - listed[name]:
            missing[name] = sorted(loaded - listed[name])
    assert missing == {}


def test_the_cli_imports_only_the_chosen_command():
    """`lwpar <command>` imports that command's module and no other (each job runs only its own code);
    `lwpar --help` reads every one's description."""
    probe = ("import sys; from lwpar.cli import build_parser; build_parser({chosen}); "
             "print(sorted(m for m in sys.modules if m.startswith('lwpar.stages.')))")
    imported = {}
    for chosen in ("train", "slurm-profile"):
        run = subprocess.run([sys.executable, "-c", probe.format(chosen=repr(chosen))], capture_output=True, text=True)
        imported[chosen] = run.stdout.strip()
    assert imported == {"train": "['lwpar.stages.train']", "slurm-profile": "['lwpar.stages.slurm_profile']"}
    run = subprocess.run([sys.executable, "-m", "lwpar", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "slurm-profile" in run.stdout
