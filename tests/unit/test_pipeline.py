"""The DAG in process: generated files fresh, commands derived from the subcommands' flags with every
input an argument, code inputs read from the sources, variants' jobs, and planning's shape checks
(and their remembered verdict)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from lwpar import pipeline
from lwpar.cli import main
from lwpar.config import load_params
from lwpar.core.errors import LwparError
from lwpar.pipeline.code import PACKAGE, package_imports

DEFAULT = load_params(ROOT / "params.yaml")
SMOKE = load_params(ROOT / "workflow/params/smoke.yaml")
SWEEP = load_params(ROOT / "workflow/params/dense_sweep.yaml")


def test_dvc_yaml_and_the_slurm_profile_are_generated_and_fresh(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["dvc", "--check"]) == 0
    assert main(["slurm-profile", "--check"]) == 0
    for command, name in (("dvc", "dvc.yaml"), ("slurm-profile", "config.yaml")):
        stale = tmp_path / name
        stale.write_text("stages: {}\n")
        assert main([command, "--check", "--out", str(stale)]) == 2
        assert f"{name} is stale: run `lwpar {command}" in capsys.readouterr().err


def test_every_dvc_stage_mirrors_a_snakemake_job():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    jobs = pipeline.grid(DEFAULT)
    assert len(stages) == len(jobs)
    for stage, wildcards in jobs:
        entry = stages[stage.job_name(wildcards)]
        assert entry["cmd"] == stage.command("params.yaml", DEFAULT, wildcards)
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


@pytest.mark.parametrize("params", [DEFAULT, SMOKE, SWEEP], ids=["default", "smoke", "sweep"])
def test_every_input_of_every_job_is_an_argument_of_its_command(params):
    """Commands are derived from the subcommands' declared flags: each input and output a job has
    reaches its command, and no required flag is left without a value."""
    for stage, wildcards in pipeline.grid(params):
        words = stage.arguments(params, wildcards)
        passed = " ".join(words)
        for key, path in stage.inputs(params, wildcards).items():
            assert path in passed, (stage.job_name(wildcards), key)
        stems = {str(Path(word).with_suffix("")) for word in words}
        for key, path in stage.job_outputs(wildcards).items():  # passed, inside a passed folder, or beside a
            assert (any(path == word or path.startswith(f"{word}/") for word in words)  # passed file (card.md)
                    or str(Path(path).with_suffix("")) in stems), (stage.job_name(wildcards), key)
        for flag in stage.flags:
            if flag.settings.get("required"):
                assert flag.name in words or not flag.name.startswith("-"), (stage.name, flag.name)


def test_a_stage_is_described_once_by_its_subcommand():
    from lwpar.stages import summary

    for stage in pipeline.stages(DEFAULT).values():
        first = summary(stage.module)
        assert stage.doc == first + "." and "\n" not in first and len(first) < 120, stage.name
        fills = {flag.how for flag in stage.flags}
        assert fills - {None} <= {"input", "output", "folder", "wildcard", "inputs", "pairs", "option"}, stage.name


def test_a_control_variant_fine_tunes_its_start_model_without_a_compression_job():
    """A recipe with neither decompose nor prune: fine-tuning reads the base's model.pt directly."""
    params = copy.deepcopy(DEFAULT)
    finetune = params["variants"]["svd_r50"]["finetune"]
    params["variants"]["finetune_only"] = {"base": None, "finetune": finetune}
    params["variants"]["finetune_twice"] = {"base": "finetune_only", "finetune": finetune}
    params["experiment"]["variants"] += ["finetune_only", "finetune_twice"]
    jobs = {(stage.name, w.get("variant")) for stage, w in pipeline.grid(params)}
    assert ("finetune", "finetune_only") in jobs and ("finetune", "finetune_twice") in jobs
    assert not {("decompose", "finetune_only"), ("prune", "finetune_only"), ("decompose", "finetune_twice")} & jobs
    stage = pipeline.stages(params)["finetune"]
    w = {"dataset": "peta", "model": params["experiment"]["models"][0]}
    assert stage.inputs(params, {**w, "variant": "finetune_only"})["model"].endswith("/baseline/model.pt")
    assert stage.inputs(params, {**w, "variant": "finetune_twice"})["model"].endswith("/finetune_only/model.pt")
    assert stage.inputs(params, {**w, "variant": "svd_r50"})["model"].endswith("/svd_r50/compressed.pt")
    # Snakemake also tries the rule for baseline/model.pt (the train rule's output): no error, no producer.
    assert stage.inputs(params, {**w, "variant": "baseline"})["model"].endswith("/baseline/compressed.pt")


def test_a_code_change_reruns_only_the_jobs_that_can_run_it():
    """Jobs depend on the modules their stage imports (read from the sources): editing pruning reruns
    pruning jobs only, and nothing a baseline's training runs is compression or deployment code."""
    on_prune = sorted({stage.name for stage, w in pipeline.grid(SMOKE)
                       if f"{PACKAGE}/compress/prune.py" in stage.module_files()})
    assert on_prune == ["prune"]
    trained = package_imports("stages/train.py")
    assert not [m for m in trained if m.startswith(("compress/", "deploy/", "report/", "pipeline/"))
                and m not in ("compress/__init__.py", "compress/recipes.py")]
    assert "deploy/bench_worker.py" in pipeline.stages(SMOKE)["latency"].modules  # run as a script, still an input


def test_the_report_reads_only_the_files_its_job_declares():
    """Each profile, evaluation and per-stage record the report reads is an input of its job, passed by
    name; nothing on disk beyond them (a leftover of an earlier configuration) can reach a table."""
    report = pipeline.stages(SMOKE)["report"]
    inputs = report.inputs(SMOKE, {})
    kinds = {key.partition(":")[0] for key in inputs}
    assert kinds == {"profiles", "metrics", "per_attribute", "layers", "prune", "finetune", "int8_errors"}
    assert "--results" not in report.command("smoke.yaml", SMOKE, {})
    assert "prune:peta/alm_effl0/prune_l2_r50" in inputs  # its plan and kind: read, so declared
    assert inputs["int8_errors:peta/alm_effl0/lwalm+int8"].endswith("lwalm+int8/node_error.csv")
    # the default experiment's OpenVINO target scores every artifact on its runtime (the smoke run has none)
    declared = pipeline.stages(DEFAULT)["report"].inputs(DEFAULT, {})
    assert declared["target_metrics:peta/alm_r50h/lwalm+int8@local_openvino"].endswith(
        "lwalm+int8/eval-local_openvino/metrics.json")
    assert not [key for key in declared if key.endswith("@local_cpu")]  # ONNX Runtime's scores are every artifact's own


def test_pruning_by_latency_reruns_when_the_timing_settings_change():
    """A latency budget's pruning is timed with the profile's settings on its target: they are part of
    its job's params (a MAC budget's pruning reads none of them)."""
    prune = pipeline.stages(SWEEP)["prune"]
    w = {"dataset": "peta", "model": SWEEP["experiment"]["models"][0]}
    timed = prune.param_keys(SWEEP, {**w, "variant": "prune_l2_lat2x"})
    assert {"profile.rounds", "profile.iters_per_round", "profile.targets.local_cpu"} <= set(timed)
    assert not [k for k in prune.param_keys(SWEEP, {**w, "variant": "prune_l2_r50"}) if k.startswith("profile")]
    assert f"{PACKAGE}/deploy/bench_worker.py" in prune.module_files()


@pytest.mark.fault
def test_unreachable_budget_and_nothing_to_factorize_fail_at_planning(monkeypatch, tmp_path):
    """Planning checks what the networks' shapes say; the verdict is remembered under a hash of the
    models, the recipes and the code, so a second plan of the same experiment builds no network."""
    from lwpar.compress import feasibility
    from lwpar.pipeline.plannable import check_plannable

    monkeypatch.setenv("LWPAR_CACHE", str(tmp_path))
    built = []
    real = feasibility.check_decompositions
    monkeypatch.setattr(feasibility, "check_decompositions", lambda p: built.append(1) or real(p))
    check_plannable(SMOKE)  # EfficientNet-Lite0 at 64 x 32: every variant plannable
    check_plannable(SMOKE)
    assert len(built) == 1 and len(list(tmp_path.glob("plannable-*.json"))) == 1

    tight = copy.deepcopy(SMOKE)
    tight["variants"]["svd_r50"]["decompose"]["rank"]["macs_fraction"] = 0.05
    for _ in range(2):  # the remembered verdict fails the same way
        with pytest.raises(LwparError, match=r"^variant svd_r50: MAC budget 0.05 is out of reach on alm_effl0: the "
                                             r"smallest ranks its budget policy can choose leave 0\.\d+ of the MACs$"):
            check_plannable(tight)
    assert len(built) == 2

    depthwise = copy.deepcopy(SMOKE)
    depthwise["variants"]["lwalm"]["decompose"]["kinds"] = ["kxk"]  # Lite0's k x k convs are depthwise
    with pytest.raises(LwparError, match=r"^variant lwalm: nothing to factorize in alm_effl0 "):
        check_plannable(depthwise)


def test_the_calibrate_job_is_keyed_by_the_layers_its_variants_select_not_by_their_names():
    """Listing fewer variants that select the same layers leaves the calibrate job's command and params
    as they were (its statistics are not measured again); a variant selecting other layers changes them."""
    fit = load_params(ROOT / "workflow/params/fit_sweep.yaml")
    calibrate = pipeline.stages(fit)["calibrate"]
    w = {"dataset": "peta", "model": fit["experiment"]["models"][0], "start": "baseline"}

    def job(params):
        return calibrate.command("p.yaml", params, w), calibrate.param_keys(params, w)

    fewer = copy.deepcopy(fit)
    fewer["experiment"]["variants"] = [v for v in fit["experiment"]["variants"] if v != "svd_cov_bn"]
    assert job(fewer) == job(fit)
    assert not [k for k in job(fit)[1] if k.startswith("variants")]
    heads = copy.deepcopy(fit)
    heads["variants"]["svd_cov_bn"]["decompose"]["include_heads"] = True
    assert job(heads)[0] != job(fit)[0] and "kxk+pointwise+heads" in job(heads)[0]


def test_each_model_is_quantized_in_each_form_it_is_asked_for_and_only_the_mixed_form_reads_keep_float():
    """experiment.int8 and experiment.mixed: one quantize job per model and form, named <model>+<form>;
    editing quantize.keep_float re-quantizes the mixed forms only."""
    from lwpar.core.names import form_suffix, fp32_name, quantized_form

    jobs = {(w["name"], w["form"]): stage for stage, w in pipeline.grid(DEFAULT) if stage.name == "quantize"}
    assert set(jobs) == {(n, form) for form in ("int8", "mixed", "nncf") for n in DEFAULT["experiment"][form]}
    assert DEFAULT["experiment"]["mixed"] and DEFAULT["experiment"]["nncf"]
    w = {"dataset": "peta", "model": "alm_r50h", "name": "lwalm"}
    mixed, full = (jobs["lwalm", form].param_keys(DEFAULT, {**w, "form": form}) for form in ("mixed", "int8"))
    assert "quantize.keep_float" in mixed and "quantize.keep_float" not in full and "quantize.calibration" in full
    nncf = jobs["lwalm", "nncf"].param_keys(DEFAULT, {**w, "form": "nncf"})
    assert nncf == ["seed", "quantize.calibration_images", "quantize.op_types"]  # what NNCF's form reads
    assert "--form mixed" in jobs["lwalm", "mixed"].command("p.yaml", DEFAULT, {**w, "form": "mixed"})
    assert jobs["lwalm", "mixed"].job_outputs({**w, "form": "mixed"})["onnx"].endswith("/lwalm+mixed/model.onnx")
    assert "lwalm+mixed" in pipeline.experiment.artifact_names(DEFAULT)
    # a label's own '+' (cp-epc+svd) is not a form
    assert [quantized_form(n) for n in ("a+int8", "a+mixed", "cp-epc+svd (greedy)", "a")] == ["int8", "mixed", None, None]
    assert fp32_name("cp-epc+svd (greedy)+mixed") == "cp-epc+svd (greedy)" and form_suffix("a+int8") == "+int8"
