"""params.yaml validation: one line naming the key, for every kind of mistake."""

from __future__ import annotations

import copy

import pytest
import yaml

from lwpar.cli import main
from lwpar.config import ParamsError, load_params, schema, validate_params

from conftest import ROOT

DEFAULT = load_params(ROOT / "params.yaml")
SMOKE = load_params(ROOT / "workflow/params/smoke.yaml")  # has every rank policy and a two-stage variant


def problem(mutate, base: dict | None = None) -> str:
    params = copy.deepcopy(base or DEFAULT)
    mutate(params)
    with pytest.raises(ParamsError) as info:
        validate_params(params)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_params_are_valid():
    validate_params(copy.deepcopy(DEFAULT))


@pytest.mark.fault
def test_misspelled_key_is_named():
    def typo(p):
        p["train"]["lrr"] = p["train"].pop("lr")
    assert problem(typo).startswith("params.yaml: train.lrr: unknown key")


@pytest.mark.fault
def test_wrong_type_names_key_and_value():
    def fast(p):
        p["train"]["lr"] = "fast"
    assert problem(fast) == "params.yaml: train.lr: expected number, got 'fast'"


@pytest.mark.fault
def test_missing_key_is_named():
    assert problem(lambda p: p["train"].pop("epochs")) == "params.yaml: train.epochs: missing key"


@pytest.mark.fault
def test_negative_epochs_refused():
    def negative(p):
        p["train"]["epochs"] = -3
    assert problem(negative) == "params.yaml: train.epochs: expected a value >= 1, got -3"


@pytest.mark.fault
def test_nested_dataset_key_and_enum():
    def bad_split(p):
        p["datasets"]["peta"]["split"] = "random"
    assert problem(bad_split).startswith("params.yaml: datasets.peta.split: expected one of 'identity_disjoint'")


@pytest.mark.fault
def test_fractions_must_sum_to_one():
    def fractions(p):
        p["datasets"]["peta"]["fractions"] = [0.5, 0.2, 0.2]
    assert problem(fractions) == "params.yaml: datasets.peta.fractions: must sum to 1, got 0.9"


@pytest.mark.fault
def test_experiment_names_must_exist():
    def unknown(p):
        p["experiment"]["models"] = ["nope"]
    assert problem(unknown).startswith("params.yaml: experiment.models[0]: unknown model 'nope'")


# The keys a params file must give: they name the experiment's data, networks and recipes.
REQUIRED = {"datasets", "models", "experiment", "experiment.datasets", "experiment.models", "datasets.*.kind",
            "datasets.*.archive", "models.*.backbone", "variants.*.prune", "variants.*.decompose",
            "variants.*.decompose.rank", "variants.*.decompose.rank.policy"}


def test_every_schema_key_has_a_default_or_must_be_given():
    """The schema carries every default; only the keys in REQUIRED have none. Every object refuses
    unknown keys, and every default is valid for its own key."""
    import jsonschema

    from lwpar.config.load import _resolved
    from lwpar.config.reference import schema_keys

    keys = schema_keys()
    assert {path for path, node in keys if "default" not in node} == REQUIRED
    for path, node in keys:
        node = _resolved(node) | ({"default": node["default"]} if "default" in node else {})
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        if "default" in node and not isinstance(node["default"], dict):
            jsonschema.validate(node["default"], {**node, "$defs": schema()["$defs"]})
    variant = schema()["$defs"]["variant"]
    assert variant["not"] == {"required": ["decompose", "prune"]}  # none of the two: a fine-tuning control


@pytest.mark.fault
def test_a_variant_cannot_both_decompose_and_prune():
    def both(p):
        p["variants"]["svd_r50"]["prune"] = copy.deepcopy(p["variants"]["prune_l2_r50"]["prune"])
    assert problem(both) == "params.yaml: variants.svd_r50: has both decompose and prune: give at most one"


def test_a_variant_without_compression_is_a_fine_tuning_control():
    params = copy.deepcopy(DEFAULT)
    params["variants"]["finetune_only"] = {"base": None, "finetune": copy.deepcopy(params["variants"]["svd_r50"]["finetune"])}
    params["experiment"]["variants"].append("finetune_only")
    validate_params(params)


def test_workflow_schema_is_the_package_schema():
    assert yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text()) == schema()


@pytest.mark.fault
def test_cli_reports_bad_params_in_one_line(tmp_path, capsys):
    params = copy.deepcopy(DEFAULT)
    params["runtime"]["devise"] = params["runtime"].pop("device")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert main(["data", "--params", str(path), "--dataset", "peta", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lwpar data: error: params.yaml: runtime.devise: unknown key (allowed: amp, device, threads, workers)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.fault
def test_unreadable_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML at line 2"):
        load_params(path)


def test_cli_help_lists_every_command_with_its_one_line_description():
    from lwpar.cli import COMMANDS, build_parser, module_of
    from lwpar.stages import summary

    text = " ".join(build_parser().format_help().split())
    for command in COMMANDS:
        assert f"{command} {' '.join(summary(module_of(command)).split())}" in text, command
    prune = build_parser("prune")._subparsers._group_actions[0].choices["prune"].format_help()
    assert "--summary" in prune and "--params" in prune  # the stage's own arguments


@pytest.mark.fault
def test_key_given_twice_is_refused(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    start = text.index("  svd_r50:")
    end = text.index("\nexperiment:")
    block = text[start:end]
    path = tmp_path / "params.yaml"
    path.write_text(text[:end] + "\n" + block + text[end:])
    with pytest.raises(ParamsError, match=r"^params.yaml: variants.svd_r50: key given twice \(lines \d+ and \d+\)$"):
        load_params(path)


@pytest.mark.fault
def test_variant_names_and_budgets_are_checked():
    def unknown(p):
        p["experiment"]["variants"] = ["nope"]
    assert problem(unknown).startswith("params.yaml: experiment.variants[0]: unknown variant 'nope'")

    def over_budget(p):
        p["variants"]["svd_r50"]["decompose"]["rank"]["macs_fraction"] = 1.5
    assert problem(over_budget) == ("params.yaml: variants.svd_r50.decompose.rank.macs_fraction: "
                                    "expected a value <= 1, got 1.5")

    def unknown_method(p):
        p["variants"]["svd_r50"]["decompose"]["methods"]["kxk"] = "magic"
    assert problem(unknown_method).startswith("params.yaml: variants.svd_r50.decompose.methods.kxk: expected one of")


@pytest.mark.fault
def test_remote_targets_and_shared_sensitivity_are_checked():
    def half_remote(p):
        p["profile"]["targets"]["local_cpu"]["copy_command"] = "scp {src} dev:{dst}"
    assert problem(half_remote) == ("params.yaml: profile.targets.local_cpu.remote_dir: "
                                    "copy_command and remote_dir go together (both set or both null)")

    def copy_without_placeholders(p):
        p["profile"]["targets"]["local_cpu"].update(copy_command="scp model dev:", remote_dir="/tmp/x")
    assert problem(copy_without_placeholders).startswith("params.yaml: profile.targets.local_cpu.copy_command: ")

    def from_formula_variant(p):
        p["variants"]["svd_greedy50"]["decompose"]["rank"]["search"]["sensitivity_from"] = "svd_r50"
    assert problem(from_formula_variant, SMOKE) == (
        "params.yaml: variants.svd_greedy50.decompose.rank.search.sensitivity_from: 'svd_r50' is not a "
        "decomposition variant with a measured rank policy (search, greedy, latency)")

    def from_other_layers(p):
        p["variants"]["svd_greedy50"]["decompose"]["rank"]["search"]["sensitivity_from"] = "lwalm"
    assert problem(from_other_layers, SMOKE).endswith("'lwalm' factorizes other layers or by other methods: "
                                               "its measurements do not apply")


@pytest.mark.fault
def test_multi_stage_bases_are_checked():
    def circle(p):
        p["variants"]["lwalm"]["base"] = "lwalm_heads"
    assert problem(circle, SMOKE).startswith("params.yaml: variants.")
    assert "start from each other in a circle" in problem(circle, SMOKE)

    def base_outside_experiment(p):
        p["experiment"]["variants"] = ["lwalm_heads"]
        p["experiment"]["int8"] = ["baseline"]
    assert problem(base_outside_experiment, SMOKE) == (
        "params.yaml: variants.lwalm_heads.base: 'lwalm' must be a variant of the experiment (it is built first)")

    def heads_maybe(p):
        p["variants"]["lwalm_heads"]["decompose"]["include_heads"] = "maybe"
    assert problem(heads_maybe, SMOKE).startswith("params.yaml: variants.lwalm_heads.decompose.include_heads: expected one of")


@pytest.mark.fault
def test_every_compressed_variant_needs_its_matched_control():
    from lwpar.compress.recipes import matched_control

    staged = copy.deepcopy(SMOKE)
    staged["experiment"]["variants"] += ["lwalm_heads", "control_ft2"]
    assert matched_control(staged, "lwalm") == "control"
    assert matched_control(staged, "lwalm_heads+int8") == "control_ft2"  # two stages: the two-stage control
    assert matched_control(staged, "control") is None
    staged["variants"]["lwalm"]["finetune"]["score_before_recalibration"] = False  # one more score, same training
    assert matched_control(staged, "lwalm") == "control"

    def other_schedule(p):
        p["variants"]["lwalm"]["finetune"]["lr"] = 0.001
    assert problem(other_schedule, SMOKE) == (
        "params.yaml: experiment.variants[2]: 'lwalm' has no matched control: the experiment needs a variant "
        "without compression whose fine-tuning schedule is the same (1 stage: the `finetune` keys of the variant "
        "and of each base)")

    def no_second_stage_control(p):
        p["experiment"]["variants"].append("lwalm_heads")
    assert "'lwalm_heads' has no matched control" in problem(no_second_stage_control, SMOKE)


def test_every_schema_key_has_a_description():
    from lwpar.config.reference import schema_keys

    keys = schema_keys()
    assert len(keys) == 155  # every key of the configuration, named entries (`*`) counted once
    assert [path for path, node in keys if not node.get("description")] == []


def test_the_configuration_reference_is_generated_from_the_schema():

    from lwpar.config import load_params
    from lwpar.config.reference import reference_markdown

    root = ROOT
    committed = (root / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(load_params(root / "params.yaml")), \
        "docs/configuration.md is stale: lwpar config --reference > docs/configuration.md"


# Overlays: a file names what it sets; `extends` merges it onto another.

def _write(path, text):
    path.write_text(text)
    return path


def test_every_experiment_file_is_an_overlay_on_params_yaml():
    from lwpar.config import layers

    files = sorted((ROOT / "workflow/params").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        chain = layers(path)
        assert [p.resolve() for p, _ in chain] == [(ROOT / "params.yaml").resolve(), path.resolve()], path
        load_params(path)
    assert len(layers(ROOT / "params.yaml")) == 1


def test_an_overlay_merges_mappings_key_by_key_and_replaces_lists(tmp_path):
    _write(tmp_path / "base.yaml", (ROOT / "params.yaml").read_text())
    overlay = _write(tmp_path / "overlay.yaml", (
        "extends: base.yaml\n"
        "train: {epochs: 5}\n"
        "variants:\n"
        "  lwalm: {decompose: {rank: {policy: search}}}\n"  # base's macs_fraction no longer applies: dropped
        "  tucker2_r30: {decompose: {methods: {kxk: tucker2}, rank: {policy: budget, macs_fraction: 0.3}}}\n"
        "experiment: {variants: [lwalm, tucker2_r30, control], int8: [baseline, lwalm], mixed: [lwalm], nncf: [lwalm]}\n"))
    params = load_params(overlay)
    assert params["train"]["epochs"] == 5 and params["train"]["frozen_stages"] == DEFAULT["train"]["frozen_stages"]
    assert params["train"]["batch_size"] == schema()["properties"]["train"]["properties"]["batch_size"]["default"]
    assert params["experiment"]["variants"] == ["lwalm", "tucker2_r30", "control"]
    lwalm = params["variants"]["lwalm"]["decompose"]
    assert lwalm["rank"]["policy"] == "search" and "macs_fraction" not in lwalm["rank"]
    assert lwalm["epc"] == {**DEFAULT["variants"]["lwalm"]["decompose"]["epc"]}  # the base's als_iter kept
    tucker = params["variants"]["tucker2_r30"]
    assert "epc" not in tucker["decompose"] and "search" not in tucker["decompose"]["rank"]  # not read: not shown
    assert tucker["finetune"] == DEFAULT["variants"]["control"]["finetune"]  # the default schedule: same control


@pytest.mark.fault
@pytest.mark.parametrize("variant,error", [
    ("{decompose: {methods: {kxk: tucker2}, rank: {policy: budget}, epc: {iterations: 5}}}",
     "overlay.yaml: variants.v.decompose.epc: applies only to CP-ALS decomposition of k x k convolutions "
     "(kinds with kxk, methods.kxk: cp); this variant uses tucker2"),
    # cp4 runs tensorly's parafac and reads no `epc` key: an EPC asked of it would silently not run
    ("{decompose: {methods: {kxk: cp4}, rank: {policy: budget}, epc: {enabled: true}}}",
     "overlay.yaml: variants.v.decompose.epc: applies only to CP-ALS decomposition of k x k convolutions "
     "(kinds with kxk, methods.kxk: cp); this variant uses cp4"),
    ("{decompose: {rank: {policy: budget, search: {val_images: 8}}}}",
     "overlay.yaml: variants.v.decompose.rank.search: not read by rank policy 'budget' (only by search, greedy and latency)"),
    ("{decompose: {rank: {policy: greedy, search: {eps: 0.02}}}}",
     "overlay.yaml: variants.v.decompose.rank.search.eps: not read by rank policy 'greedy' (only by search)"),
    ("{decompose: {rank: {policy: ratio, energy: 0.8}}}",
     "overlay.yaml: variants.v.decompose.rank.energy: not read by rank policy 'ratio' (only by energy)"),
    ("{prune: {kind: unstructured, macs_fraction: 0.4}}",
     "overlay.yaml: variants.v.prune.macs_fraction: not read by unstructured pruning (only by structured)"),
    ("{decompose: {kinds: [kxk]}}", "overlay.yaml: variants.v.decompose.rank: missing key"),
    ("{decompose: {rank: {policy: budget, speedup: 3}}}",
     "overlay.yaml: variants.v.decompose.rank.speedup: not read by rank policy 'budget' (only by latency)"),
    ("{prune: {kind: structured, speedup: 2}}",
     "overlay.yaml: variants.v.prune.speedup: not read by budget 'macs' (only by latency)"),
    ("{prune: {kind: structured, budget: latency, macs_fraction: 0.4}}",
     "overlay.yaml: variants.v.prune.macs_fraction: not read by budget 'latency' (only by macs)"),
    ("{prune: {kind: unstructured, target: local_cpu}}",
     "overlay.yaml: variants.v.prune.target: not read by unstructured pruning (only by structured)"),
])
def test_a_key_that_does_not_apply_where_it_is_set_is_refused(tmp_path, variant, error):
    overlay = _write(tmp_path / "overlay.yaml", f"extends: {ROOT / 'params.yaml'}\nvariants:\n  v: {variant}\n")
    with pytest.raises(ParamsError) as info:
        load_params(overlay)
    assert str(info.value) == error


@pytest.mark.fault
@pytest.mark.parametrize("quantize,error", [
    ("quantize: {error_images: 0}",
     "overlay.yaml: quantize.error_images: mixed precision (experiment.mixed) needs >= 1: the nodes kept in FP32 "
     "are where the measured error is worst"),
    ("quantize: {mode: dynamic}",
     "overlay.yaml: quantize.mode: mixed precision by measured error (experiment.mixed) applies only to static INT8"),
    # keep_float shapes only the mixed forms: set without one, it would silently change nothing
    ("quantize: {keep_float: {worst: 2}}\nexperiment: {mixed: []}",
     "overlay.yaml: quantize.keep_float: read only for the experiment.mixed models (<name>+mixed; <name>+int8 stays "
     "fully INT8), and experiment.mixed names none"),
    ("experiment: {mixed: [svd_r70]}",
     "overlay.yaml: experiment.mixed[0]: 'svd_r70' is neither 'baseline' nor a variant of the experiment"),
])
def test_mixed_precision_that_cannot_be_measured_is_refused(tmp_path, quantize, error):
    overlay = _write(tmp_path / "overlay.yaml", f"extends: {ROOT / 'params.yaml'}\n{quantize}\n")
    with pytest.raises(ParamsError) as info:
        load_params(overlay)
    assert str(info.value) == error


@pytest.mark.fault
def test_an_error_names_the_file_that_set_the_key(tmp_path):
    _write(tmp_path / "base.yaml", (ROOT / "params.yaml").read_text().replace("epochs: 2", "epochs: 0"))
    overlay = _write(tmp_path / "overlay.yaml", "extends: base.yaml\nseed: 1\n")
    with pytest.raises(ParamsError, match=r"^base.yaml: train.epochs: expected a value >= 1, got 0$"):
        load_params(overlay)
    _write(tmp_path / "loop.yaml", "extends: overlay2.yaml\n")
    _write(tmp_path / "overlay2.yaml", "extends: loop.yaml\n")
    with pytest.raises(ParamsError, match=r"^loop.yaml: extends: the files extend each other in a circle: "):
        load_params(tmp_path / "loop.yaml")
    _write(tmp_path / "orphan.yaml", "extends: gone.yaml\n")
    with pytest.raises(ParamsError, match=r"gone.yaml: params file not found$"):
        load_params(tmp_path / "orphan.yaml")


def test_lwpar_config_prints_the_merged_configuration_as_a_standalone_file(tmp_path, capsys):
    overlay = ROOT / "workflow/params/smoke.yaml"
    assert main(["config", "--params", str(overlay)]) == 0
    out = capsys.readouterr().out
    printed = _write(tmp_path / "merged.yaml", out)
    assert load_params(printed) == SMOKE and "extends" not in yaml.safe_load(out)
    assert "&id" not in out and "*id" not in out  # every shared value written where it applies
    assert main(["config", "--sources", "--params", str(overlay)]) == 0
    assert [line.rsplit("/", 1)[-1] for line in capsys.readouterr().out.split()] == ["params.yaml", "smoke.yaml"]


def test_dvc_tracks_each_key_in_the_files_that_set_it():
    """DVC reads params from files: each job's keys are listed under every file of the chain that
    sets them, and a key no file sets (a default) is left to the schema file, a dependency of every job."""
    from lwpar.config import layers
    from lwpar.pipeline.dvc import dvc_yaml

    sources = [(path.name, given) for path, given in layers(ROOT / "workflow/params/smoke.yaml")]
    stages = dvc_yaml(SMOKE, "smoke.yaml", sources)["stages"]
    train = stages["train-peta-alm_effl0"]
    assert train["params"] == [{"params.yaml": ["train"]}, {"smoke.yaml": ["runtime.amp", "train", "models.alm_effl0"]}]
    assert "src/lwpar/config/params.schema.yaml" in train["deps"]
    decompose = stages["decompose-peta-alm_effl0-lwalm"]["params"]
    assert decompose == [{"params.yaml": ["variants.lwalm.decompose"]}, {"smoke.yaml": ["variants.lwalm.decompose"]}]


@pytest.mark.fault
def test_under_dvc_a_stage_refuses_a_dvc_yaml_older_than_its_params_files(tmp_path, monkeypatch):
    """DVC tracks only the keys each file set when dvc.yaml was written: a key added later (here
    `seed`, a default before) would change the job unseen, so the job refuses to run."""
    from lwpar.core.errors import LwparError
    from lwpar.cli import check_dvc_yaml
    from lwpar.pipeline.dvc import render as render_dvc_yaml

    params_file = _write(tmp_path / "params.yaml", (ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(render_dvc_yaml(load_params("params.yaml"), "params.yaml"))
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", "train-peta-alm_r50h")
    check_dvc_yaml("params.yaml", load_params("params.yaml"))  # fresh: runs
    params_file.write_text(params_file.read_text() + "\nseed: 1\n")
    with pytest.raises(LwparError, match=r"^dvc.yaml is stale for params.yaml: run `lwpar dvc --params params.yaml`"):
        check_dvc_yaml("params.yaml", load_params("params.yaml"))
    monkeypatch.delenv("DVC_STAGE")
    check_dvc_yaml("params.yaml", load_params("params.yaml"))  # outside DVC (Snakemake, by hand): not its business


def test_the_report_labels_every_recipe_of_every_experiment_file():
    """Resolved recipes hold only the keys their method reads: code that labels them must not
    expect the others (an `epc` block on an SVD variant, `importance` on unstructured pruning)."""
    from lwpar.compress.recipes import mac_planned_label, method_label

    files = [ROOT / "params.yaml", *sorted((ROOT / "workflow/params").glob("*.yaml"))]
    for path in files:
        params = load_params(path)
        for name in params["variants"]:
            assert method_label(params, name), (path.name, name)
    params = copy.deepcopy(DEFAULT)
    params["variants"]["zeros"] = {"base": None, "finetune": params["variants"]["control"]["finetune"],
                                   "prune": {"kind": "unstructured", "amount": 0.5}}
    assert method_label(params, "zeros") == "prune unstructured l1"
    sweep = load_params(ROOT / "workflow/params/dense_sweep.yaml")
    assert method_label(sweep, "prune_l2_lat2x") == "prune structured l2 (latency)"
    assert method_label(sweep, "prune_l2_r50+int8") == "prune structured l2+int8"
    # a latency-planned variant's MAC-planned counterpart: the same method spending the budget by MACs
    assert mac_planned_label(sweep, "prune_l2_lat2x") == method_label(sweep, "prune_l2_r30")
    assert mac_planned_label(sweep, "lwalm_lat2x") == method_label(sweep, "lwalm_r30") == "cp-epc+svd (greedy, ALS 100)"
    # the CP-ALS cap tells two otherwise equal recipes apart
    assert method_label(sweep, "cpd_epc_r50") == "cp-epc+svd (budget, ALS 100)"
    assert method_label(sweep, "cpd_epc_r50_i1000") == "cp-epc+svd (budget, ALS 1000)"
    assert method_label(sweep, "svd_r50") == "spatial_svd+svd (budget)"
    assert mac_planned_label(sweep, "lwalm_r30") is None


@pytest.mark.fault
def test_a_latency_plan_needs_a_measured_target_and_the_ranks_it_times():
    def fast(step, block):
        """A variant `fast` whose `step` (decompose or prune) is `block`, with the control's schedule."""
        def mutate(p):
            made = block(p)
            p["variants"]["fast"] = {"base": None, "finetune": copy.deepcopy(p["variants"]["control"]["finetune"]),
                                     step: made}
            p["experiment"]["variants"].append("fast")
        return mutate

    def plan_on(target):
        return fast("decompose", lambda p: {**copy.deepcopy(p["variants"]["lwalm"]["decompose"]), "rank": {
            "policy": "latency", "speedup": 2.0, "target": target, "multiple": 8,
            "search": copy.deepcopy(p["variants"]["lwalm"]["decompose"]["rank"]["search"])}})

    def prune_on(target):
        return fast("prune", lambda p: {"kind": "structured", "importance": "l2", "global_pruning": False, "round_to": 8,
                                        "iterative_steps": 1, "budget": "latency", "speedup": 2.0, "target": target})

    for make, key in ((plan_on, "decompose.rank"), (prune_on, "prune")):
        validate_params(_mutated(make("local_cpu")))
        assert problem(make("phone")) == (f"params.yaml: variants.fast.{key}.target: 'phone' is not one of "
                                          "experiment.targets (local_cpu, local_openvino): the profile would not measure what the plan "
                                          "predicts")

    def other_fractions(p):
        plan_on("local_cpu")(p)
        p["variants"]["fast"]["decompose"]["rank"]["search"].update(fractions=[0.5], sensitivity_from="lwalm")
    assert problem(other_fractions) == (
        "params.yaml: variants.fast.decompose.rank.search.sensitivity_from: 'lwalm' does not score the ranks this "
        "latency plan times (it needs a greedy or latency policy with the same search.fractions and multiple)")


def _mutated(mutate):
    params = copy.deepcopy(DEFAULT)
    mutate(params)
    return params


QAT_VARIANTS = ("variants:\n  svd_qat: {decompose: {methods: {kxk: spatial_svd}, rank: {policy: budget, macs_fraction: 0.5}},"
                " finetune: {qat: true}}\n  control_qat: {finetune: {qat: true}}\n")


@pytest.mark.fault
@pytest.mark.parametrize("rest,error", [
    ("experiment: {variants: [svd_qat, control_qat], int8: [], mixed: [], nncf: []}",
     "variants.svd_qat.finetune.qat: trains 'svd_qat' for INT8, but no quantized form (experiment.int8, mixed, nncf) "
     "names it (add 'svd_qat' to experiment.int8)"),
    ("experiment: {variants: [svd_qat, control_qat], int8: [svd_qat], mixed: [], nncf: []}",
     "variants.svd_qat.finetune.qat: 'svd_qat'+int8 is read against its control 'control_qat' in that form: add "
     "'control_qat' to experiment.int8"),
    ("experiment: {variants: [svd_qat, control_qat], int8: [svd_qat, control_qat], mixed: [svd_qat], nncf: []}",
     "variants.svd_qat.finetune.qat: 'svd_qat'+mixed is read against its control 'control_qat' in that form: add "
     "'control_qat' to experiment.mixed"),
    ("experiment: {variants: [svd_qat, control_qat], int8: [svd_qat, control_qat], mixed: [], nncf: []}\nquantize: {mode: dynamic}",
     "variants.svd_qat.finetune.qat: trains for ONNX Runtime's static INT8 model, but quantize makes a dynamic one "
     "with engine onnxruntime (set quantize.engine: onnxruntime, mode: static)"),
])
def test_quantization_aware_finetuning_for_an_int8_model_that_is_not_made_is_refused(tmp_path, rest, error):
    overlay = _write(tmp_path / "overlay.yaml", f"extends: {ROOT / 'params.yaml'}\n{QAT_VARIANTS}{rest}\n")
    with pytest.raises(ParamsError) as info:
        load_params(overlay)
    assert str(info.value) == f"overlay.yaml: {error}"
    load_params(_write(tmp_path / "sound.yaml", f"extends: {ROOT / 'params.yaml'}\n{QAT_VARIANTS}"
                       "experiment: {variants: [svd_qat, control_qat], int8: [svd_qat, control_qat], mixed: [], nncf: []}\n"))
