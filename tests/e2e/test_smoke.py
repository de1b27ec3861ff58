"""The smoke configuration run end to end by Snakemake (the shared `smoke_run`): every artifact made,
nothing left to do afterwards, and the HTML report."""

from __future__ import annotations

import json

import onnx
import pandas as pd
import pytest

from conftest import BIN, run_command as _run
from lwpar.report.tables import COLUMNS


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


@pytest.mark.timeout(2700)
def test_snakemake_has_nothing_to_do_after_the_run(smoke_run):
    work, _ = smoke_run
    run = _run([str(BIN / "snakemake"), "-n", "--config", "params=smoke.yaml"], work, timeout=300)
    assert run.returncode == 0
    assert "Nothing to be done" in run.stdout + run.stderr


@pytest.mark.timeout(2700)
def test_snakemake_html_report_shows_the_tables_and_plots(smoke_run, tmp_path):
    work, _ = smoke_run
    report = tmp_path / "report.html"
    run = _run([str(BIN / "snakemake"), "--config", "params=smoke.yaml", "--report", str(report)], work, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    html = report.read_text(errors="replace")
    for caption in ("comparison.md", "mA_vs_latency.svg", "mA_vs_macs.svg", "per_attribute_delta.csv"):
        assert caption in html, caption
