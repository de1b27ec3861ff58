"""Every stage's CLI, in the order and with the command lines the pipeline gives both engines, on a
synthetic release and a tiny ALM (in process: `lwpar.cli.main`, no engine). Each job must write every
output it declares, with content that an idle stage could not have produced. The release is a user's
own data (dataset kind `csv`, as workflow/params/own_data.yaml declares it): PETA's other kinds are
tested by the data stage's tests and the end-to-end runs."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

import synthetic
from lwpar import pipeline
from lwpar.cli import main

pytestmark = pytest.mark.timeout(900)  # the first test runs the chain: 430 s of ~45 jobs on Sapphire Rapids, 2 cores
# a decomposition, the same fitted to the layers' outputs on calibration statistics, and fitted layer
# after layer from its own inputs then reconstructed block by block, a pruning (and the same with the
# layers that lost inputs refitted on those statistics), two decompositions planned by measured
# sensitivity (one by measured latency, from the other's probes), and their matched control
QUANTIZED = ["svd_r50+int8", "control_qat+int8", "prune_l2_r50+int8", "prune_l2_r50+mixed", "prune_l2_r50+nncf"]
VARIANTS = ["svd_r50", "svd_cov", "svd_seq", "prune_l2_r50", "prune_rec", "svd_greedy", "svd_lat", "control",
            "control_qat"]  # svd_r50 is fine-tuned quantization-aware, as its control control_qat


# Keys that say where and how a job runs, not what it computes: reading them never reruns a job.
EXECUTION_KEYS = ("runtime.device", "runtime.threads", "runtime.workers", "paths.mirror", "paths.weights")


class Tracked(dict):
    """A params mapping that records the dotted path of every value read from it (a nested mapping
    records its own reads; iterating a mapping reads its keys)."""

    def __init__(self, data: dict, reads: set, path: str = ""):
        super().__init__({k: Tracked(v, reads, f"{path}{k}.") if isinstance(v, dict) else v for k, v in data.items()})
        self.reads, self.path = reads, path

    def _read(self, key):
        value = super().__getitem__(key)
        if not isinstance(value, Tracked):
            self.reads.add(f"{self.path}{key}")
        return value

    def __getitem__(self, key):
        return self._read(key)

    def get(self, key, default=None):
        return self._read(key) if key in self else default

    def _whole(self):
        self.reads.add(self.path.rstrip(".") or "<all>")

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return [(k, self._read(k)) for k in super().keys()]

    def values(self):
        return [v for _, v in self.items()]


def _covered(read: str, declared: list[str]) -> bool:
    return any(read == key or read.startswith(f"{key}.") for key in [*declared, *EXECUTION_KEYS])


LEFTOVERS = ("old_variant", "old_target")  # what an earlier configuration left in the results tree


def _plant_leftovers(params: dict) -> None:
    """An earlier configuration's variant folder and target profile, beside this run's."""
    run = Path(params["paths"]["results"]) / params["experiment"]["datasets"][0] / "tiny"
    profile = json.loads((run / "profile-local_cpu.json").read_text())
    (run / "profile-old_target.json").write_text(json.dumps({**profile, "target": "old_target"}))
    old = run / "old_variant"
    (old / "eval").mkdir(parents=True)
    for name in ("eval/metrics.json", "eval/per_attribute.csv", "finetune.json", "layers.csv"):
        (old / name).write_text((run / "svd_r50" / name).read_text())


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every job of a small experiment run through `lwpar.cli.main` with the command the pipeline
    derives for it; per job: (stage, wildcards, command, exit code, outputs, package files it loaded
    first, the params keys it read)."""
    import lwpar.config

    tmp = tmp_path_factory.mktemp("stages")
    from conftest import ROOT

    members, _ = synthetic.make_release(persons_per_subset=12, images_per_person=3)
    own = lwpar.config.load_params(ROOT / "workflow/params/own_data.yaml")["datasets"]["own"]
    rows = synthetic.write_labels_csv_release(tmp / "mirror" / own["archive"], tmp / "mirror" / own["annotation"],
                                              members)
    params = synthetic.tiny_training_params(tmp, tmp / "mirror", epochs=1)
    params["datasets"] = {"own": own}
    params["experiment"]["datasets"] = ["own"]
    # svd_r50 and prune_l2_r50 as the kernel fit and plain pruning; svd_cov and prune_rec below fit outputs
    params["variants"]["svd_r50"]["decompose"]["fit"] = "weights"
    params["variants"]["prune_l2_r50"]["prune"]["reconstruct"] = False
    params["train"]["max_steps_per_epoch"] = 4
    # SVD of the 3 x 3 convs: the fastest factorization to probe (the chain times ONNX, not tensorly)
    search = {"metric": "mA", "val_images": 8, "calibration_batches": 0, "fractions": [0.1, 0.3], "sensitivity_from": None}
    measured = {"kinds": ["kxk"], "methods": {"kxk": "svd", "pointwise": "svd"}, "include_first": False,
                "include_heads": False}
    params["variants"]["svd_greedy"] = {"base": None, "finetune": dict(params["variants"]["svd_r50"]["finetune"]), "decompose": {
        **measured, "rank": {"policy": "greedy", "macs_fraction": 0.9, "multiple": 8, "search": search}}}
    # the 1 x 1 convs at a quarter of their parameters: ranks the tiny release's images can fit
    params["variants"]["svd_cov"] = {"base": None, "finetune": dict(params["variants"]["svd_r50"]["finetune"]),
                                     "decompose": {**params["variants"]["svd_r50"]["decompose"], "fit": "covariance",
                                                   "kinds": ["pointwise"], "rank": {"policy": "ratio", "fraction": 0.25,
                                                                                    "multiple": 8}}}
    params["variants"]["svd_seq"] = {**params["variants"]["svd_cov"], "finetune": dict(params["variants"]["svd_r50"]["finetune"]),
                                     "decompose": {**params["variants"]["svd_cov"]["decompose"], "fit": "sequential"},
                                     "blockwise": {"steps": 3, "images": 16, "heldout_images": 8, "batch_size": 4,
                                                   "lr": 0.001}}
    params["calibration"].update(images=48, heldout_images=16, batch_size=16)
    params["variants"]["prune_rec"] = {"base": None, "finetune": dict(params["variants"]["prune_l2_r50"]["finetune"]),
                                       "prune": {**params["variants"]["prune_l2_r50"]["prune"], "reconstruct": True}}
    params["variants"]["svd_lat"] = {"base": None, "finetune": dict(params["variants"]["control"]["finetune"]), "decompose": {
        **measured, "rank": {"policy": "latency", "speedup": 1.05, "target": "local_cpu", "multiple": 8,
                             "search": {**search, "sensitivity_from": "svd_greedy"}}}}
    params["variants"]["svd_r50"]["finetune"]["qat"] = True
    params["variants"]["control_qat"] = {"base": None, "finetune": {**params["variants"]["control"]["finetune"],
                                                                    "qat": True}}
    for name in VARIANTS:
        recipe = params["variants"][name]
        recipe["finetune"].update(epochs=1)
        if "macs_fraction" in recipe.get("decompose", {}).get("rank", {}):
            recipe["decompose"]["rank"]["macs_fraction"] = 0.99  # a ResNet-18's budgets are of what it can give
    params["variants"]["svd_r50"]["finetune"]["score_before_recalibration"] = True
    params["quantize"]["calibration_images"] = 16
    params["profile"].update(batch_sizes=[1], threads=[1], warmup=1, rounds=2, iters_per_round=1)
    params["experiment"].update(variants=VARIANTS, int8=["svd_r50", "control_qat", "prune_l2_r50"],
                                mixed=["prune_l2_r50"], nncf=["prune_l2_r50"],
                                targets=["local_cpu", "local_openvino"])
    params_file = synthetic.write_params(tmp / "params.yaml", params)
    load = lwpar.config.load_params
    jobs, seconds = [], {}
    for stage, wildcards in pipeline.grid(params):
        if stage.name == "report":
            _plant_leftovers(params)
        command = stage.command(str(params_file), params, wildcards)
        started, before, reads = time.perf_counter(), set(sys.modules), set()
        lwpar.config.load_params = lambda path: Tracked(load(path), reads)
        try:
            code = main(shlex.split(command)[1:])
        finally:
            lwpar.config.load_params = load
        loaded = {Path(sys.modules[n].__file__).resolve() for n in set(sys.modules) - before
                  if n.startswith("lwpar") and getattr(sys.modules[n], "__file__", None)}
        jobs.append((stage.name, wildcards, command, code, stage.job_outputs(wildcards), loaded, reads,
                     stage.param_keys(params, wildcards)))
        seconds[stage.job_name(wildcards)] = round(time.perf_counter() - started, 1)
        assert code == 0, command
    print("job seconds:", sorted(seconds.items(), key=lambda item: -item[1]))
    return rows, jobs


def _outputs(chain, stage, **wildcards):
    return next(outputs for name, w, _, _, outputs, *_ in chain[1] if name == stage and wildcards.items() <= w.items())


def test_every_job_runs_and_writes_every_declared_output(chain):
    _, jobs = chain
    assert {name for name, *_ in jobs} == {"data", "train", "calibrate", "sensitivity", "latency", "decompose", "prune", "finetune",
                                          "export", "quantize", "evaluate", "evaluate_on", "profile", "card", "report"}
    for name, wildcards, command, code, outputs, *_ in jobs:
        missing = [path for path in outputs.values() if not Path(path).exists()]
        assert code == 0 and not missing, (command, missing)


def test_no_job_runs_package_code_outside_its_module_list(chain):
    """Every package module a job loaded for the first time (in this process: modules an earlier job
    loaded are not seen again) is among its job's module inputs, so editing it reruns that job."""
    from conftest import ROOT
    from lwpar.config import load_params
    from lwpar.pipeline.code import common_modules

    root = (ROOT / "src" / "lwpar").resolve()
    stages = pipeline.stages(load_params(ROOT / "params.yaml"))
    unlisted = {}
    for name, _, _, _, _, loaded, *_ in chain[1]:
        listed = {root / m for m in [*common_modules(), *stages[name].modules]}
        if loaded - listed:
            unlisted[name] = sorted(str(p.relative_to(root)) for p in loaded - listed)
    assert unlisted == {}


def _json(path) -> dict:
    return json.loads(Path(path).read_text())


def trained_attributes(chain) -> list[str]:
    from lwpar.core.modelfile import load_torch

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
    errors = pd.read_csv(_outputs(chain, "quantize", name="svd_r50")["errors"])
    assert (errors["kind"] == "activation").sum() > 10 and errors["accumulated_sqnr_db"].notna().any()
    scored = ["baseline", *VARIANTS, *QUANTIZED]
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
    assert set(table.target) == {"local_cpu", "local_openvino"}  # the leftovers of an earlier configuration stay out
    assert "old_variant" not in pd.read_csv(_outputs(chain, "report")["compression"]).variant.tolist()
    assert table[table.variant != "baseline_reference"].mA_tuned.between(0, 1).all()
    int8 = pd.read_csv(_outputs(chain, "report")["int8_errors"])
    assert sorted(int8.variant) == sorted(QUANTIZED)
    # ONNX Runtime's QDQ debugging cannot pair NNCF's tensors: its form's row says nothing rather than wrong
    measured = int8.variant.str.endswith("+nncf")
    assert np.isfinite(int8[~measured].output_sqnr_db).all() and int8[measured].output_sqnr_db.isna().all()
    assert int8.largest_drops[0]


def test_the_mixed_and_nncf_forms_stand_beside_the_full_int8_one(chain):
    """`experiment.mixed`, `experiment.nncf`: the pruned model quantized three ways, fully, with
    quantize.keep_float's places of worst error left FP32, and by NNCF; the mixed form names what it
    kept and holds fewer quantized convs, NNCF's says its engine; all read against the FP32 control."""
    from lwpar.deploy.artifact import read_metadata

    def quantized_convs(name):
        graph = onnx.load(_outputs(chain, "quantize", name="prune_l2_r50", form=name)["onnx"]).graph
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return sum(n.op_type == "Conv" and n.input[0] in dequantized for n in graph.node)

    def kept(form):
        onnx_file = _outputs(chain, "quantize", name="prune_l2_r50", form=form)["onnx"]
        return read_metadata(onnx_file)["quantization"]["kept_float"]

    assert kept("int8") == [] and kept("mixed")
    assert 0 < quantized_convs("mixed") < quantized_convs("int8") and quantized_convs("nncf") > 0
    nncf = _outputs(chain, "quantize", name="prune_l2_r50", form="nncf")["onnx"]
    assert read_metadata(nncf)["quantization"]["engine"] == "nncf"
    table = pd.read_csv(_outputs(chain, "report")["csv"])
    rows = table[table.variant.str.startswith("prune_l2_r50+") & (table.target == "local_cpu")].set_index("variant")
    assert set(rows.index) == {"prune_l2_r50+int8", "prune_l2_r50+mixed", "prune_l2_r50+nncf"}
    assert (rows.control == "control").all() and rows.loc["prune_l2_r50+mixed", "method"].endswith("+mixed")


def test_the_openvino_target_scores_every_artifact_as_onnx_runtime_does_and_the_report_reads_it(chain):
    """evaluate_on: every artifact scored by the OpenVINO target's runtime, the FP32 ones within 0.05
    mA points of ONNX Runtime's (evaluation batches of several images); the report's rows of that
    target carry those scores, and its 'Across runtimes' table sets each speed-up against ONNX Runtime's."""
    table = pd.read_csv(_outputs(chain, "report")["csv"])
    for name in ["baseline", *VARIANTS, *QUANTIZED]:
        scored = _json(_outputs(chain, "evaluate_on", name=name, target="local_openvino")["metrics"])
        assert scored["runtime"]["name"] == "openvino" and scored["runtime"]["inference_precision"] == "f32"
        reference = _json(_outputs(chain, "evaluate", name=name)["metrics"])["mA"]
        if name not in QUANTIZED:
            assert abs(scored["mA"] - reference) <= 0.0005, name
        row = table[(table.variant == name) & (table.target == "local_openvino")].iloc[0]
        assert row.scored_on == "openvino" and row.mA == pytest.approx(scored["mA"]), name
    across = pd.read_csv(Path(_outputs(chain, "report")["csv"]).parent / "across_runtimes.csv")
    assert set(across.target) == {"local_openvino"} and across.speedup_target.gt(0).all()
    assert "## Across runtimes" in Path(_outputs(chain, "report")["markdown"]).read_text()


def test_quantization_aware_finetuning_trains_on_the_int8_grids_and_is_read_against_its_control_in_int8(chain):
    tuned = _json(_outputs(chain, "finetune", variant="svd_r50")["summary"])
    assert tuned["qat"]["layers"] > 10 and tuned["qat"]["calibration_images"] == 16
    assert "qat" not in _json(_outputs(chain, "finetune", variant="svd_cov")["summary"])
    table = pd.read_csv(_outputs(chain, "report")["csv"])
    row = table[(table.variant == "svd_r50+int8") & (table.target == "local_cpu")].iloc[0]
    assert row.control == "control_qat+int8"
    control = table[(table.variant == "control_qat+int8") & (table.target == "local_cpu")].iloc[0]
    assert row.delta_control_mA == pytest.approx(row.mA - control.mA)


def test_every_model_file_records_its_lineage_and_no_two_jobs_write_the_same_bytes(chain):
    """Two jobs whose weights come out equal (a fine-tuning that keeps its start model) must still
    write different files: DVC's hardlink cache would join them, and touching one would move the
    other's mtime under Snakemake."""
    import hashlib

    from lwpar.deploy.artifact import read_metadata
    from lwpar.core.modelfile import load_torch

    steps = {"control": ["train", "finetune"], "svd_r50": ["train", "decompose", "finetune"],
             "prune_l2_r50": ["train", "prune", "finetune"]}
    for variant, expected in steps.items():
        model = load_torch(_outputs(chain, "finetune", variant=variant)["model"])
        assert [step["stage"] for step in model["lineage"]] == expected, variant
        assert model["lineage"][-1]["variant"] == variant
        assert read_metadata(_outputs(chain, "export", name=variant)["onnx"])["lineage"] == model["lineage"]
    # the attribute names come from the labels CSV's header, through to the artifacts
    header = list(pd.read_csv(Path(_outputs(chain, "data")["prepared"]) / "samples.csv", nrows=0).columns[3:])
    assert trained_attributes(chain) == header == read_metadata(_outputs(chain, "quantize", name="svd_r50")["onnx"])["attributes"]
    digests = {}
    for _, _, _, _, outputs, *_ in chain[1]:
        for path in outputs.values():
            if Path(path).is_file() and Path(path).suffix in (".pt", ".onnx"):
                digests.setdefault(hashlib.sha256(Path(path).read_bytes()).hexdigest(), []).append(path)
    assert [paths for paths in digests.values() if len(paths) > 1] == []


def test_every_params_key_a_job_reads_is_one_its_job_declares(chain):
    """A job reruns when the params it reads change only if they are among its declared keys (its
    `params.values` for Snakemake, its `params:` for DVC): every value a stage really read, recorded
    while the chain ran, falls under a declared key (or says only where the job runs)."""
    undeclared = {}
    for name, wildcards, _, _, _, _, reads, declared in chain[1]:
        missing = sorted(read for read in reads if not _covered(read, declared))
        if missing:
            undeclared[f"{name} {wildcards}"] = missing
    assert undeclared == {}
    train = next(reads for name, *_, reads, _ in chain[1] if name == "train")
    assert {"train.lr", "models.tiny.backbone", "seed"} <= train  # the recording sees real reads


def test_a_latency_plan_holds_what_it_was_measured_under_and_refuses_another_model(chain, capsys):
    """The latency stage times every candidate with the real benchmark worker and records what it was
    measured under; decompose plans from it and the sensitivity cache, its per-layer table says what it
    predicted; a table of another start model, or an unreachable speed-up, fails in one line."""
    from lwpar.compress.ranks.latency import Calibration
    from lwpar.core.io import sha256_file

    table = _outputs(chain, "latency", variant="svd_greedy")["table"]
    model = Path(_outputs(chain, "train")["model"])
    measured = _json(table)
    assert measured["model_sha256"] == sha256_file(model) and measured["target"] == "local_cpu"
    assert (measured["batch"], measured["threads"]) == (1, 1) and measured["machine"]["versions"]["onnxruntime"]
    layers = {c["layer"] for c in measured["candidates"] if c["method"] is None}
    assert "<model>" in layers and len(layers) > 10  # resnet18's 3 x 3 convs, and the whole model
    assert all(c["median_ms"] > 0 and c["q1_ms"] <= c["median_ms"] <= c["q3_ms"] for c in measured["candidates"])
    assert len({c["rank"] for c in measured["candidates"] if c["method"]}) >= 2
    # the calibration models: the whole model with sets of layers replaced, timed beside the whole model
    assert measured["calibration"] and measured["calibration_model_ms"] > 0
    for point in measured["calibration"]:
        assert point["layers"] >= 1 and point["raw_saving_ms"] > 0 and point["median_ms"] > 0
        assert point["saving_ms"] == pytest.approx(measured["calibration_model_ms"] - point["median_ms"])
    rows = pd.read_csv(_outputs(chain, "decompose", variant="svd_lat")["table"])
    assert len(rows) >= 1 and (rows.predicted_ms < rows.own_ms).all()
    whole = next(c["median_ms"] for c in measured["candidates"] if c["layer"] == "<model>")
    assert rows.plan_model_ms.iloc[0] == pytest.approx(whole)
    summed = (rows.own_ms - rows.predicted_ms).sum()
    calibration = Calibration([(c["raw_saving_ms"], c["saving_ms"]) for c in measured["calibration"]])
    assert rows.plan_uncalibrated_ms.iloc[0] == pytest.approx(whole - summed)
    assert rows.plan_predicted_ms.iloc[0] == pytest.approx(whole - calibration(summed))
    assert rows.plan_predicted_ms.iloc[0] <= whole / 1.05

    command = next(c for name, w, c, *_ in chain[1] if name == "decompose" and w["variant"] == "svd_lat")
    args = shlex.split(command)[1:]
    other = model.parent / "other.json"
    other.write_text(json.dumps(dict(measured, model_sha256="0" * 64)))
    out = model.parent / "other.pt"
    capsys.readouterr()
    assert main([*args, "--latency-table", str(other), "--out", str(out)]) == 2  # the last flag given wins
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "other.json: measured on another start model" in error[0] and not out.exists()


def test_a_covariance_fit_decomposes_in_the_start_models_calibration_statistics(chain):
    """The calibrate job measures every layer its variants may factorize, on training images only; the
    decomposition that fits outputs records its regulariser and, per layer, its output error on the
    held-out images beside its weights' error."""
    import torch

    from lwpar.core.io import sha256_file

    statistics = torch.load(_outputs(chain, "calibrate")["statistics"], weights_only=False)
    assert statistics["model_sha256"] == sha256_file(_outputs(chain, "train")["model"])
    assert (statistics["images"], statistics["heldout_images"]) == (48, 16) and statistics["seconds"] >= 0
    fitted = pd.read_csv(_outputs(chain, "decompose", variant="svd_cov")["table"])
    plain = pd.read_csv(_outputs(chain, "decompose", variant="svd_r50")["table"])
    assert len(fitted) > 3 and set(fitted.layer) <= set(statistics["layers"])  # prune_rec's layers too
    for layer in fitted.layer:
        entry = statistics["layers"][layer]
        size = entry["second_moment"].shape[0]
        assert entry["rows"] >= 48 and entry["heldout_rows"] >= 16 and entry["heldout_second_moment"].shape == (size, size)
    assert (fitted.fit == "covariance").all() and (fitted.ridge == 0.01).all()
    assert fitted.output_error.between(0, 1).all() and "output_error" not in plain


def test_a_sequential_fit_runs_the_images_and_block_wise_reconstruction_trains_the_changed_blocks(chain):
    """The sequential fit fits the same layers at the same ranks from the compressed model's inputs
    (the calibration images run, each layer's capture timed); block-wise reconstruction then trains
    every block holding one of them, records each block's errors, and leaves other variants alone."""
    sequential = pd.read_csv(_outputs(chain, "decompose", variant="svd_seq")["table"])
    covariance = pd.read_csv(_outputs(chain, "decompose", variant="svd_cov")["table"])
    assert sorted(sequential.layer) == sorted(covariance.layer) and (sequential.fit == "sequential").all()
    assert (sequential.set_index("layer").loc[covariance.layer, "rank"].values == covariance["rank"].values).all()
    assert (sequential.capture_seconds > 0).all() and sequential.output_error.between(0, 1).all()
    # the first layer fitted sees the uncompressed inputs: as the covariance fit; a later one does not
    first = sequential.iloc[0].layer
    assert sequential.iloc[0].output_error == pytest.approx(covariance.set_index("layer").loc[first, "output_error"], rel=1e-3)
    record = _json(_outputs(chain, "finetune", variant="svd_seq")["summary"])["blockwise"]
    blocks = record["blocks"]
    assert blocks and record["seconds"] > 0 and all(b["steps"] == 3 and b["parameters"] > 0 for b in blocks)
    assert {b["block"] for b in blocks} >= {".".join(layer.split(".")[:3]) for layer in sequential.layer
                                            if layer.startswith("main_branch.layer")}
    for b in blocks:
        assert 0 <= b["heldout_error_before"] and (b["heldout_error_after"] <= b["heldout_error_before"]) == b["kept"], b
    assert "blockwise" not in _json(_outputs(chain, "finetune", variant="svd_cov")["summary"])


def test_a_reconstructing_pruning_refits_the_layers_that_lost_inputs(chain):
    refitted = _json(_outputs(chain, "prune", variant="prune_rec")["summary"])
    plain = _json(_outputs(chain, "prune", variant="prune_l2_r50")["summary"])
    assert "reconstruction" not in plain and refitted["macs_after"] == plain["macs_after"]  # the same channels
    rows = refitted["reconstruction"]
    assert len(rows) > 5 and all(r["kept_inputs"] < r["inputs"] for r in rows)
    # on held-out inputs the refit beats merely dropping the channels, layer by layer (a few layers may tie)
    better = [r["output_error_refit"] < r["output_error_dropped"] for r in rows]
    assert sum(better) >= 0.8 * len(rows), rows
