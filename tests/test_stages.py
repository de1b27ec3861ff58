"""Every stage's CLI, in the order and with the command lines the pipeline gives both engines, on a
synthetic release and a tiny ALM (in process: `lwpar.cli.main`, no engine). Each job must write every
output it declares, with content that an idle stage could not have produced."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import onnx
import pandas as pd
import pytest

import synthetic
from lwpar import pipeline
from lwpar.cli import main

pytestmark = pytest.mark.timeout(600)  # the first test runs the chain
VARIANTS = ["svd_r50", "prune_l2_r50", "control"]  # decomposition, pruning and their matched control (the sensitivity CLI: test_rank_search)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    members, truth = synthetic.make_release(persons_per_subset=12, images_per_person=3)
    synthetic.write_zip(tmp / "mirror" / "PETA.zip", members)
    params = synthetic.tiny_training_params(tmp, tmp / "mirror", epochs=1)
    params["train"]["max_steps_per_epoch"] = 4
    for name in VARIANTS:
        recipe = params["variants"][name]
        recipe["finetune"].update(epochs=1)
        if "decompose" in recipe:  # a ResNet-18 has few 1 x 1 MACs: the budgets are of what they can give
            recipe["decompose"]["rank"]["macs_fraction"] = 0.99
    params["variants"]["svd_r50"]["finetune"]["score_before_recalibration"] = True
    params["quantize"]["calibration_images"] = 16
    params["profile"].update(batch_sizes=[1], threads=[1], warmup=1, rounds=2, iters_per_round=1)
    params["experiment"].update(variants=VARIANTS, int8=["svd_r50"], targets=["local_cpu"])
    params_file = synthetic.write_params(tmp / "params.yaml", params)
    jobs, seconds = [], {}
    for stage, wildcards in pipeline.grid(params):
        command = stage.command(str(params_file), params, wildcards)
        started, before = time.perf_counter(), set(sys.modules)
        code = main(shlex.split(command)[1:])
        loaded = {Path(sys.modules[n].__file__).resolve() for n in set(sys.modules) - before
                  if n.startswith("lwpar") and getattr(sys.modules[n], "__file__", None)}
        jobs.append((stage.name, wildcards, command, code, stage.job_outputs(wildcards), loaded))
        seconds[stage.job_name(wildcards)] = round(time.perf_counter() - started, 1)
        assert code == 0, command
    print("job seconds:", sorted(seconds.items(), key=lambda item: -item[1]))
    return len(truth), jobs


def _outputs(chain, stage, **wildcards):
    return next(outputs for name, w, _, _, outputs, _ in chain[1] if name == stage and wildcards.items() <= w.items())


def test_every_job_runs_and_writes_every_declared_output(chain):
    _, jobs = chain
    assert {name for name, *_ in jobs} == {"data", "train", "decompose", "prune", "finetune",
                                          "export", "quantize", "evaluate", "profile", "card", "report"}
    for name, wildcards, command, code, outputs, _ in jobs:
        missing = [path for path in outputs.values() if not Path(path).exists()]
        assert code == 0 and not missing, (command, missing)


def test_no_job_runs_package_code_outside_its_module_list(chain):
    """Every package module a job loaded for the first time (in this process: modules an earlier job
    loaded are not seen again) is among its job's module inputs, so editing it reruns that job."""
    root = (Path(pipeline.__file__).parent).resolve()
    from conftest import ROOT
    from lwpar.config import load_params

    stages = pipeline.stages(load_params(ROOT / "params.yaml"))
    unlisted = {}
    for name, _, _, _, _, loaded in chain[1]:
        listed = {root / m for m in [*pipeline.COMMON_MODULES, *stages[name].modules]}
        if loaded - listed:
            unlisted[name] = sorted(str(p.relative_to(root)) for p in loaded - listed)
    assert unlisted == {}


def _json(path) -> dict:
    return json.loads(Path(path).read_text())


def trained_attributes(chain) -> list[str]:
    from lwpar.runtime import load_torch

    return load_torch(_outputs(chain, "train")["model"])["attributes"]


def test_each_stage_did_its_work(chain):
    prepared = pd.read_csv(Path(_outputs(chain, "data")["prepared"]) / "samples.csv")
    assert set(prepared.split) == {"train", "val", "test"} and len(prepared) == chain[0]
    trained = _json(_outputs(chain, "train")["summary"])
    assert trained["best_epoch"] == 1 and trained["precision"] == "float32" and trained["pretrained_weights"] is None
    layers = pd.read_csv(_outputs(chain, "decompose", variant="svd_r50")["table"])
    assert len(layers) > 5 and (layers.params_after < layers.params_before).all()
    pruned = _json(_outputs(chain, "prune", variant="prune_l2_r50")["summary"])
    assert 0.45 < pruned["macs_after"] / pruned["macs_before"] < 0.55, pruned
    for variant in VARIANTS:
        outputs = _outputs(chain, "finetune", variant=variant)
        tuned = _json(outputs["summary"])
        assert tuned["val_after"]["mA"] > 0, variant
        # the pass before BatchNorm re-estimation runs only when asked (svd_r50)
        assert (tuned["val_before"] is not None) == (variant == "svd_r50"), variant
        # the kept weights' validation score: the kept epoch's, or the starting point's if none beat it
        if tuned["best_epoch"]:
            kept = pd.read_csv(outputs["history"]).iloc[tuned["best_epoch"] - 1]
            assert tuned["val_after"]["mA"] == pytest.approx(kept.val_mA), variant
        else:
            assert tuned["val_after"] == (tuned["val_after_bn_recalibration"] or tuned["val_before"]), variant
    for name in ("baseline", "baseline_reference", *VARIANTS):
        parity = _json(_outputs(chain, "export", name=name)["parity"])
        assert parity["max_abs_diff"] <= parity["bound"], name
    ops = {n.op_type for n in onnx.load(_outputs(chain, "quantize", name="svd_r50")["onnx"]).graph.node}
    assert "QuantizeLinear" in ops
    scored = ["baseline", *VARIANTS, "svd_r50+int8"]
    for name in scored:
        assert 0 < _json(_outputs(chain, "evaluate", name=name)["metrics"])["mA"] <= 1, name
    assert set(_json(_outputs(chain, "profile", target="local_cpu")["profile"])["variants"]) == {"baseline_reference", *scored}
    for name in scored:  # thresholds chosen on val, and the test scores at them
        tuned = _json(Path(_outputs(chain, "evaluate", name=name)["metrics"]).parents[1] / "thresholds.json")
        assert tuned["chosen_on"] == "val" and len(tuned["thresholds"]) == len(trained_attributes(chain))
        assert 0 < _json(_outputs(chain, "evaluate", name=name)["metrics"])["tuned_thresholds"]["mA"] <= 1
    card = _json(_outputs(chain, "card", name="svd_r50+int8")["json"])
    assert card["model"]["precision"] == "int8" and card["parity"]["of"] == "its FP32 source"
    assert [step["stage"] for step in card["made_by"]] == ["train", "decompose", "finetune"]
    assert card["made_by"][1]["recipe"]["rank"]["macs_fraction"] == 0.99
    assert card["latency"][0]["median_ms"] > 0 and card["complexity"]["macs"] > 0
    assert card["metrics"]["at_tuned_thresholds"]["mA"] > 0 and card["dataset"]["split_sizes"]["test"] > 0
    assert "| tuned on validation" in Path(_outputs(chain, "card", name="svd_r50+int8")["markdown"]).read_text()
    table = pd.read_csv(_outputs(chain, "report")["csv"])
    assert set(table.variant) == {"baseline_reference", *scored} and (table[table.variant == "baseline"].speedup == 1.0).all()
    assert table[table.variant != "baseline_reference"].mA_tuned.between(0, 1).all()


def test_every_model_file_records_its_lineage_and_no_two_jobs_write_the_same_bytes(chain):
    """Two jobs whose weights come out equal (a fine-tuning that keeps its start model) must still
    write different files: DVC's hardlink cache would join them, and touching one would move the
    other's mtime under Snakemake."""
    import hashlib

    from lwpar.artifact import read_metadata
    from lwpar.runtime import load_torch

    steps = {"control": ["train", "finetune"], "svd_r50": ["train", "decompose", "finetune"],
             "prune_l2_r50": ["train", "prune", "finetune"]}
    for variant, expected in steps.items():
        model = load_torch(_outputs(chain, "finetune", variant=variant)["model"])
        assert [step["stage"] for step in model["lineage"]] == expected, variant
        assert model["lineage"][-1]["variant"] == variant
        assert read_metadata(_outputs(chain, "export", name=variant)["onnx"])["lineage"] == model["lineage"]
    digests = {}
    for _, _, _, _, outputs, _ in chain[1]:
        for path in outputs.values():
            if Path(path).is_file() and Path(path).suffix in (".pt", ".onnx"):
                digests.setdefault(hashlib.sha256(Path(path).read_bytes()).hexdigest(), []).append(path)
    assert [paths for paths in digests.values() if len(paths) > 1] == []
