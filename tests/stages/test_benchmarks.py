"""The benchmark scripts run, compare their settings in one run and report the machine."""

import importlib.util
from pathlib import Path

import pytest


def _load(name: str):
    path = Path(__file__).parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_training_step_benchmark_compares_its_settings_interleaved():
    bench = _load("train_step")
    args = bench.get_args_parser().parse_args(
        ["--height", "64", "--width", "32", "--batch", "2", "--rounds", "2", "--frozen", "4", "--fold", "off", "on"])
    result = bench.main(args)
    assert set(result["frozen_stages"]) == {"4 fold off", "4 fold on"} and "cpu_flags" in result
    assert result["frozen_stages"]["4 fold off"]["speedup"] == 1.0
    args = bench.get_args_parser().parse_args(
        ["--height", "64", "--width", "32", "--batch", "2", "--rounds", "2", "--frozen", "0", "--precision", "float32",
         "bfloat16", "--backbone", "resnet18"])
    assert set(bench.main(args)["frozen_stages"]) == {"0 float32", "0 bfloat16"}


def test_the_backbone_benchmark_counts_and_times_every_model_against_the_first():
    bench = _load("backbones")
    args = bench.get_args_parser().parse_args(["resnet18:32x32", "mobilenet_v2:32x32", "--rounds", "2",
                                               "--iters-per-round", "1"])
    models = bench.main(args)["models"]
    assert list(models) == ["resnet18 32x32", "mobilenet_v2 32x32"]
    first, second = models.values()
    assert first["latency"][0]["ratio_to_first"] == 1.0 and second["latency"][0]["median_ms"] > 0
    assert first["gmacs"] > second["gmacs"] > 0 and first["params_m"] > second["params_m"] > 0


def test_a_malformed_model_argument_is_a_clear_error(capsys):
    bench = _load("backbones")
    with pytest.raises(SystemExit):
        bench.get_args_parser().parse_args(["resnet18:32"])
    assert "'resnet18:32': expected BACKBONE:HEIGHTxWIDTH" in capsys.readouterr().err


def test_the_planning_benchmark_times_snakemake_and_the_configuration_alone():
    bench = _load("planning")
    result = bench.main(bench.get_args_parser().parse_args(["workflow/params/smoke.yaml", "--rounds", "1"]))
    names = ["snakemake -n (workflow/params/smoke.yaml)", "lwpar config (workflow/params/smoke.yaml)"]
    assert list(result["median_s"]) == names and result["machine"]["cpu_count"]
    planned, configured = (result["median_s"][name] for name in names)
    assert planned > configured > 0  # planning does all the configuration does, and more
