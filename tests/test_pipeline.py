"""The DAG: dvc.yaml generated and fresh, Snakemake lint, cluster dry run, the smoke run end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pandas as pd
import pytest
import yaml

from conftest import BIN, ROOT, run_command as _run
from lwpar import pipeline
from lwpar.config import load_params
from lwpar.report import COLUMNS


def test_dvc_yaml_is_generated_and_fresh():
    run = _run([str(BIN / "lwpar"), "dvc", "--check"], ROOT)
    assert run.returncode == 0, run.stderr


def test_stale_dvc_yaml_is_detected(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    run = _run([str(BIN / "lwpar"), "dvc", "--check", "--out", str(tmp_path / "dvc.yaml")], ROOT)
    assert run.returncode == 2 and "dvc.yaml is stale: run `lwpar dvc" in run.stderr


def test_slurm_profile_is_generated_and_fresh(tmp_path):
    run = _run([str(BIN / "lwpar"), "slurm-profile", "--check"], ROOT)
    assert run.returncode == 0, run.stderr
    stale = tmp_path / "config.yaml"
    stale.write_text("executor: slurm\n")
    run = _run([str(BIN / "lwpar"), "slurm-profile", "--check", "--out", str(stale)], ROOT)
    assert run.returncode == 2 and "config.yaml is stale: run `lwpar slurm-profile" in run.stderr


def test_each_stage_entry_is_one_rule_and_one_subcommand():
    """The rules are made from the stage entries (workflow/rules/stages.smk), with their descriptions;
    the CLI has a subcommand for each."""
    from lwpar.cli import STAGES as COMMANDS

    stages = pipeline.stages(load_params(ROOT / "params.yaml"))
    run = _run([str(BIN / "snakemake"), "--list-rules"], ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    rules = {line.split(" ", 1)[0]: line for line in run.stdout.splitlines() if line.strip()}
    assert set(rules) == {"all", *stages}
    assert all(stage.doc and stage.doc in rules[name] for name, stage in stages.items())
    assert set(COMMANDS) == set(stages)


def test_every_dvc_stage_mirrors_a_snakemake_job():
    from lwpar import pipeline
    from lwpar.config import load_params

    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    jobs = pipeline.grid(params)
    assert len(stages) == len(jobs)
    for stage, wildcards in jobs:
        entry = stages[stage.job_name(wildcards)]
        assert entry["cmd"].startswith(f"lwpar {stage.name} --params params.yaml")
        assert set(stage.module_files()) <= set(entry["deps"])


def test_no_stage_depends_on_another_stages_folder():
    """A folder dependency is hashed file by file on every `dvc status`, once per dependent stage:
    with 19,000 images and ~30 stages that was most of a no-op status. Stages read the manifest."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    folders = {out for stage in stages.values() for out in stage.get("outs", [])
               if isinstance(out, str) and not Path(out).suffix}
    assert "data/prepared/peta" in folders
    for name, stage in stages.items():
        assert not folders & set(stage.get("deps", [])), name


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


@pytest.mark.e2e
@pytest.mark.timeout(2700)  # the first end-to-end test runs the shared smoke run
def test_smoke_pipeline_produces_every_artifact(smoke_run):
    work, params = smoke_run
    run_dir = work / params["paths"]["results"] / "peta" / "alm_effl0"
    meta = json.loads((work / params["paths"]["data"] / "prepared/peta/dataset.json").read_text())
    assert meta["num_persons"] == 150
    train = json.loads((run_dir / "baseline/train.json").read_text())
    assert train["best_epoch"] == 1
    layers = pd.read_csv(run_dir / "svd_r50/layers.csv")
    assert len(layers) > 10 and (layers.params_after < layers.params_before).all()
    finetune = json.loads((run_dir / "svd_r50/finetune.json").read_text())
    assert finetune["val_before"]["mA"] > 0 and finetune["val_after"]["mA"] > 0
    experiment = params["experiment"]
    for name in ("baseline", "baseline_reference", *experiment["variants"]):
        parity = json.loads((run_dir / name / "parity.json").read_text())
        assert parity["max_abs_diff"] <= parity["bound"] <= 1e-3
    ops = {n.op_type for n in onnx.load(str(run_dir / "baseline+int8/model.onnx")).graph.node}
    assert "QuantizeLinear" in ops
    scored = ["baseline", *experiment["variants"], *(f"{n}+int8" for n in experiment["int8"])]
    for name in scored:
        assert 0 < json.loads((run_dir / name / "eval/metrics.json").read_text())["mA"] <= 1
    profile = json.loads((run_dir / "profile-local_cpu.json").read_text())
    names = {"baseline_reference", *scored}
    assert set(profile["variants"]) == names
    split = profile["variants"]["svd_r50"]["latency"][0]
    assert 0 < split["backbone_ms_median"] < split["median_ms"]
    table = pd.read_csv(work / params["paths"]["results"] / "comparison.csv")
    assert list(table.columns) == COLUMNS
    assert len(table) == len(names) * 2 * 2  # variants x batch sizes x thread counts
    assert (table[table.variant == "baseline"].speedup == 1.0).all()
    for plot in ("mA_vs_latency.png", "mA_vs_latency.svg", "mA_vs_macs.png", "mA_vs_macs.svg"):
        assert (work / params["paths"]["results"] / "plots" / plot).stat().st_size > 1000


@pytest.mark.e2e
@pytest.mark.timeout(2700)
def test_snakemake_has_nothing_to_do_after_the_run(smoke_run):
    work, _ = smoke_run
    run = _run([str(BIN / "snakemake"), "-n", "--config", "params=smoke.yaml"], work, timeout=300)
    assert run.returncode == 0
    assert "Nothing to be done" in run.stdout + run.stderr


@pytest.mark.e2e
@pytest.mark.timeout(2700)
def test_snakemake_html_report_shows_the_tables_and_plots(smoke_run, tmp_path):
    work, _ = smoke_run
    report = tmp_path / "report.html"
    run = _run([str(BIN / "snakemake"), "--config", "params=smoke.yaml", "--report", str(report)], work, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    html = report.read_text(errors="replace")
    for caption in ("comparison.md", "mA_vs_latency.svg", "mA_vs_macs.svg", "per_attribute_delta.csv"):
        assert caption in html, caption


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


def test_a_control_variant_fine_tunes_its_start_model_without_a_compression_job():
    """A recipe with neither decompose nor prune: fine-tuning reads the base's model.pt directly."""
    from lwpar.pipeline import grid, stages

    params = load_params(ROOT / "params.yaml")
    finetune = params["variants"]["svd_r50"]["finetune"]
    params["variants"]["finetune_only"] = {"base": None, "finetune": finetune}
    params["variants"]["finetune_twice"] = {"base": "finetune_only", "finetune": finetune}
    params["experiment"]["variants"] += ["finetune_only", "finetune_twice"]
    jobs = {(stage.name, w.get("variant")) for stage, w in grid(params)}
    assert ("finetune", "finetune_only") in jobs and ("finetune", "finetune_twice") in jobs
    assert not {("decompose", "finetune_only"), ("prune", "finetune_only"), ("decompose", "finetune_twice")} & jobs
    stage = stages(params)["finetune"]
    w = {"dataset": "peta", "model": params["experiment"]["models"][0]}
    assert stage.inputs(params, {**w, "variant": "finetune_only"})["model"].endswith("/baseline/model.pt")
    assert stage.inputs(params, {**w, "variant": "finetune_twice"})["model"].endswith("/finetune_only/model.pt")
    assert stage.inputs(params, {**w, "variant": "svd_r50"})["model"].endswith("/svd_r50/compressed.pt")
    # Snakemake also tries the rule for baseline/model.pt (the train rule's output): no error, no producer.
    assert stage.inputs(params, {**w, "variant": "baseline"})["model"].endswith("/baseline/compressed.pt")


@pytest.mark.timeout(300)
def test_every_job_depends_on_the_modules_its_stage_loads():
    """The job lists come from reading the sources; importing each stage in a fresh interpreter must
    load no package module outside its job's list (a dynamic import the reading would miss)."""
    import subprocess
    import sys

    listed = {stage.name: {*stage.modules, *pipeline.COMMON_MODULES}
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


def test_training_does_not_depend_on_compression_code():
    """Core modules import no compression code, so editing the pruning or decomposition code reruns
    only the jobs that can run it: not the baseline's training."""
    compression = {"prune.py", "decompose/__init__.py", "decompose/factorize.py", "decompose/_cp.py"}
    for core in ("config.py", "io.py", "runtime.py", "cli.py", "stages/train.py"):
        assert compression.isdisjoint(pipeline.package_imports(core)), core
    smoke = load_params(ROOT / "workflow/params/smoke.yaml")
    on_prune = sorted({stage.name for stage, w in pipeline.grid(smoke)
                       if f"{pipeline.PACKAGE}/prune.py" in stage.module_files()})
    assert on_prune == ["prune"]


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_unreachable_budget_and_nothing_to_factorize_fail_at_planning():
    from lwpar import LwparError

    smoke = load_params(ROOT / "workflow/params/smoke.yaml")
    pipeline.check_plannable(smoke)  # EfficientNet-Lite0 at 64 x 32: every variant plannable

    tight = copy.deepcopy(smoke)
    tight["variants"]["svd_r50"]["decompose"]["rank"]["macs_fraction"] = 0.05
    with pytest.raises(LwparError, match=r"^variant svd_r50: MAC budget 0.05 is out of reach on alm_effl0: the "
                                         r"smallest ranks its budget policy can choose leave 0\.\d+ of the MACs$"):
        pipeline.check_plannable(tight)

    depthwise = copy.deepcopy(smoke)
    depthwise["variants"]["lwalm"]["decompose"]["kinds"] = ["kxk"]  # Lite0's k x k convs are depthwise
    with pytest.raises(LwparError, match=r"^variant lwalm: nothing to factorize in alm_effl0 "):
        pipeline.check_plannable(depthwise)


def test_pruning_by_latency_reruns_when_the_timing_settings_change():
    """A latency budget's pruning is timed with the profile's settings on its target: they are part of
    its job's params (a MAC budget's pruning reads none of them)."""
    params = load_params(ROOT / "workflow/params/dense_sweep.yaml")
    prune = pipeline.stages(params)["prune"]
    w = {"dataset": "peta", "model": params["experiment"]["models"][0]}
    timed = prune.param_keys(params, {**w, "variant": "prune_l2_lat2x"})
    assert {"profile.rounds", "profile.iters_per_round", "profile.targets.local_cpu"} <= set(timed)
    assert not [k for k in prune.param_keys(params, {**w, "variant": "prune_l2_r50"}) if k.startswith("profile")]
    assert f"{pipeline.PACKAGE}/bench_worker.py" in prune.module_files()
