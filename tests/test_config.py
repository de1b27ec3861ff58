"""params.yaml validation: one line naming the key, for every kind of mistake."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from lwpar.config import ParamsError, load_params, schema, validate_params

from conftest import ROOT

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
SMOKE = yaml.safe_load((ROOT / "workflow/params/smoke.yaml").read_text())  # has every rank policy and a two-stage variant


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


def test_schema_has_no_hidden_defaults():
    """Every object in the schema requires all its keys and refuses others: defaults live in params.yaml."""
    def walk(node, where):
        if isinstance(node, dict):
            assert "default" not in node, f"default in schema at {where}"
            if node.get("type") == "object" and "properties" in node and node is not variant:
                assert set(node["required"]) == set(node["properties"]), where
                assert node.get("additionalProperties") is False, where
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
    tree = schema()
    # The one exception: a variant has at most one compression step (none: a fine-tuning control).
    variant = tree["$defs"]["variant"]
    walk(tree, "schema")
    assert set(variant["required"]) == {"base", "finetune"} and variant["not"] == {"required": ["decompose", "prune"]}


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
def test_cli_reports_bad_params_in_one_line(tmp_path):
    params = copy.deepcopy(DEFAULT)
    params["runtime"]["devise"] = params["runtime"].pop("device")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "lwpar", "data", "--params", str(path), "--dataset", "peta",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "lwpar data: error: params.yaml: runtime.devise: unknown key (allowed: amp, device, threads, workers)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.fault
def test_unreadable_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML at line 2"):
        load_params(path)


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "lwpar", "--help"], capture_output=True, text=True).stdout
    from lwpar.cli import STAGES
    for stage in STAGES:
        assert stage in out


def test_the_cli_imports_only_the_chosen_stage():
    probe = ("import sys; from lwpar.cli import build_parser; build_parser({chosen}); "
             "print(sorted(m for m in sys.modules if m.startswith('lwpar.stages.')))")
    imported = {}
    for chosen in (None, "train"):
        run = subprocess.run([sys.executable, "-c", probe.format(chosen=repr(chosen))], capture_output=True, text=True)
        imported[chosen] = run.stdout.strip()
    assert imported == {None: "[]", "train": "['lwpar.stages.train']"}
    run = subprocess.run([sys.executable, "-m", "lwpar", "prune", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--summary" in run.stdout  # the stage's own arguments


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
        "decomposition variant with a measured rank policy (search or greedy)")

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
    from lwpar.config import matched_control

    staged = copy.deepcopy(SMOKE)
    staged["experiment"]["variants"] += ["lwalm_heads", "control_ft2"]
    assert matched_control(staged, "lwalm") == "control"
    assert matched_control(staged, "lwalm_heads+int8") == "control_ft2"  # two stages: the two-stage control
    assert matched_control(staged, "control") is None

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
    from lwpar.config import schema_keys

    keys = schema_keys()
    assert len(keys) > 100
    assert [path for path, node in keys if not node.get("description")] == []


def test_the_configuration_reference_is_generated_from_the_schema():
    from pathlib import Path

    from lwpar.config import load_params, reference_markdown

    root = Path(__file__).parents[1]
    committed = (root / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(load_params(root / "params.yaml")), \
        "docs/configuration.md is stale: python -m lwpar.config reference > docs/configuration.md"
