"""The DAG: dvc.yaml generated and fresh, Snakemake lint, cluster dry run, the smoke run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pandas as pd
import pytest
import yaml

from conftest import BIN, ROOT, run_command as _run
from lwpar.report import COLUMNS


def test_dvc_yaml_is_generated_and_fresh():
    run = _run([str(BIN / "lwpar"), "dvc", "--check"], ROOT)
    assert run.returncode == 0, run.stderr


def test_stale_dvc_yaml_is_detected(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    run = _run([str(BIN / "lwpar"), "dvc", "--check", "--out", str(tmp_path / "dvc.yaml")], ROOT)
    assert run.returncode == 2 and "dvc.yaml is stale: run `lwpar dvc" in run.stderr


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
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
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

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
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


def _imported_modules(module: str, root: Path, seen: set[str]) -> set[str]:
    """The package files `module` imports, directly or through others (by reading the source)."""
    import ast

    if module in seen or not (root / module).is_file():
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse((root / module).read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lwpar":
            base = node.module.split(".")[1:]
            names = ["/".join(base), *("/".join([*base, alias.name]) for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = ["/".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "lwpar"]
        for name in filter(None, names):
            for candidate in (f"{name}.py", f"{name}/__init__.py"):
                _imported_modules(candidate, root, seen)
    return seen


def test_every_job_depends_on_every_module_its_stage_imports():
    """A module missing from a stage's list would let a code change leave that stage's results stale."""
    from lwpar import pipeline

    root = ROOT / "src" / "lwpar"
    missing = {}
    for stage in pipeline.stages(yaml.safe_load((ROOT / "params.yaml").read_text())).values():
        listed = {*stage.modules, *pipeline.COMMON_MODULES}
        unlisted = _imported_modules(stage.modules[0], root, set()) - listed
        if unlisted:
            missing[stage.name] = sorted(unlisted)
    assert missing == {}
