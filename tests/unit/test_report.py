"""The report's tables from a small results tree written here: the comparison rows, each compressed
variant's validation mA before and after fine-tuning, and the per-layer decomposition tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lwpar.compress.recipes import method_label
from lwpar.report.inputs import Inputs
from lwpar.report.markdown import markdown
from lwpar.report.tables import COLUMNS, collect, compression, decomposition_layers, decomposition_summary, int8_errors

ARTIFACTS = ("baseline", "cp_r50", "prune_r50")


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


@pytest.fixture
def results(tmp_path):
    run = tmp_path / "peta" / "alm"
    latency = lambda ms, speedup: [{"batch": 1, "threads": 1, "median_ms": ms, "p90_ms": ms * 1.1,  # noqa: E731
                                    "speedup": speedup, "speedup_q1": speedup * 0.9, "speedup_q3": speedup * 1.05}]
    _write(run / "profile-local_cpu.json", {"target": "local_cpu", "variants": {
        "baseline": {"latency": latency(4.0, 1.0), "size_mb": 30.0, "params": 8e6, "macs": 100e6},
        "cp_r50": {"latency": latency(2.0, 2.0), "size_mb": 15.0, "params": 4e6, "macs": 50e6},
        "prune_r50": {"latency": latency(2.5, 1.6), "size_mb": 14.0, "params": 3e6, "macs": 49e6}}})
    for name, mA in (("baseline", 0.70), ("cp_r50", 0.66), ("prune_r50", 0.64)):
        _write(run / name / "eval/metrics.json", {"mA": mA, "accuracy": 0.5, "precision": 0.6, "recall": 0.7, "f1": 0.65})
    for name, before, recal, after in (("cp_r50", 0.50, 0.55, 0.65), ("prune_r50", 0.48, 0.52, 0.63)):
        _write(run / name / "finetune.json", {"variant": name, "val_before": {"mA": before},
                                              "val_after_bn_recalibration": {"mA": recal}, "val_after": {"mA": after},
                                              "best_epoch": 1, "epochs": 1, "seconds": 12.3})
    _write(run / "prune_r50/prune.json", {"kind": "structured"})
    pd.DataFrame([
        {"layer": "a", "method": "cp", "rank": 8, "relative_error": 0.2, "seconds": 1.0, "lambda_sq_before": 9.0,
         "lambda_sq_after": 3.0, "sensitivity_before": 50.0, "sensitivity_after": 5.0, "macs_before": 1000,
         "macs_after": 400},
        {"layer": "b", "method": "cp", "rank": 16, "relative_error": 0.4, "seconds": 2.0, "lambda_sq_before": 1.0,
         "lambda_sq_after": 1.0, "sensitivity_before": 10.0, "sensitivity_after": 10.0, "macs_before": 3000,
         "macs_after": 1000},
        {"layer": "c", "method": "svd", "rank": 8, "relative_error": 0.1, "seconds": 0.5, "lambda_sq_before": np.nan,
         "lambda_sq_after": np.nan, "sensitivity_before": np.nan, "sensitivity_after": np.nan, "macs_before": 500,
         "macs_after": 200},
    ]).to_csv(run / "cp_r50/layers.csv", index=False)
    return tmp_path


def declared(results) -> Inputs:
    """The fixture's files as the report job declares them: by name, never found by listing folders."""
    run = results / "peta" / "alm"
    return Inputs(profiles={("peta", "alm", "local_cpu"): run / "profile-local_cpu.json"},
                  metrics={("peta", "alm", n): run / n / "eval/metrics.json" for n in ARTIFACTS},
                  per_attribute={("peta", "alm", n): run / n / "eval/per_attribute.csv" for n in ARTIFACTS
                                 if (run / n / "eval/per_attribute.csv").exists()},
                  layers={("peta", "alm", "cp_r50"): run / "cp_r50/layers.csv"},
                  finetune={("peta", "alm", n): run / n / "finetune.json" for n in ("cp_r50", "prune_r50")},
                  prune={("peta", "alm", "prune_r50"): run / "prune_r50/prune.json"})


def test_compression_table_holds_validation_before_and_after_fine_tuning(results):
    table = compression(declared(results)).set_index("variant")
    assert list(table.index) == ["cp_r50", "prune_r50"]
    cp = table.loc["cp_r50"]
    assert cp.method == "cp+svd"
    assert cp.macs_fraction == pytest.approx(0.5) and cp.params_fraction == pytest.approx(0.5)
    assert (cp.val_mA_before_ft, cp.val_mA_after_bn_recalibration, cp.val_mA_after_ft) == (0.50, 0.55, 0.65)
    assert cp.test_mA == 0.66 and cp.test_delta_mA == pytest.approx(-0.04)
    assert table.loc["prune_r50"].method == "prune-structured"
    assert table.loc["prune_r50"].macs_fraction == pytest.approx(0.49)


def test_decomposition_summary_sums_each_method_over_its_layers(results):
    layers = decomposition_layers(declared(results))
    assert len(layers) == 3 and set(layers.variant) == {"cp_r50"}
    summary = decomposition_summary(layers).set_index("method")
    cp = summary.loc["cp"]
    assert (cp.layers, cp.macs_before, cp.macs_after) == (2, 4000, 1400)
    assert cp.median_relative_error == pytest.approx(0.3) and cp.max_relative_error == pytest.approx(0.4)
    assert (cp.lambda_sq_before, cp.lambda_sq_after) == (10.0, 4.0)
    assert (cp.sensitivity_before, cp.sensitivity_after) == (60.0, 15.0)
    assert np.isnan(summary.loc["svd"].lambda_sq_before)


def test_markdown_shows_the_compression_and_decomposition_sections(results):
    table, _ = collect(declared(results))
    text = markdown(table, "stamp", None, compression(declared(results)), decomposition_summary(decomposition_layers(declared(results))))
    assert "## Compression and fine-tuning" in text and "## Decomposition" in text
    assert "| peta | alm | cp_r50 | cp+svd | 0.500 | 0.500 | 50.00 | 55.00 | 65.00 | 1 | 12 | 66.00 | -4.00 |" in text
    assert "| peta | alm | cp_r50 | cp | 2 | 0.0 M | 0.0 M | 0.3000 | 0.4000 | 10 | 4 | 60 | 15 | 3.0 |" in text


def test_labels_of_nearby_points_do_not_overlap():
    from lwpar.report.plots import label_offsets

    x, y = np.array([11.10, 11.29, 15.0, 11.10]), np.array([59.22, 59.22, 59.25, 59.06])
    offsets = label_offsets(x, y, ["cpd_epc_r50", "cp_als_r50", "baseline", "svd_r50"])
    assert offsets[0] != offsets[1]  # the two CP variants sit 0.2 ms apart at the same mA
    assert offsets[2] == (3, 3)      # a point alone keeps the default place


def test_comparison_shows_the_spread_of_the_per_round_speed_ups(results):
    table, _ = collect(declared(results))
    cp = table.set_index("variant").loc["cp_r50"]
    assert (cp.speedup, cp.speedup_q1, cp.speedup_q3) == pytest.approx((2.0, 1.8, 2.1))
    text = markdown(table, "stamp")
    header = next(line for line in text.splitlines() if line.startswith("| dataset"))
    assert "| speedup | speedup_iqr |" in header and "speedup_q1" not in header
    assert "| 2.00x | 1.80-2.10 |" in text


def test_comparison_sets_the_measured_speed_up_against_the_mac_reduction(results):
    table, _ = collect(declared(results))
    rows = table.set_index("variant")
    # cp_r50: half the MACs, twice as fast; prune_r50: 100/49 = 2.04x fewer MACs, only 1.6x faster
    assert rows.loc["cp_r50", "mac_reduction"] == pytest.approx(2.0)
    assert rows.loc["cp_r50", "speedup_per_mac_reduction"] == pytest.approx(1.0)
    assert rows.loc["prune_r50", "mac_reduction"] == pytest.approx(100 / 49)
    assert rows.loc["prune_r50", "speedup_per_mac_reduction"] == pytest.approx(1.6 * 49 / 100)
    text = markdown(table, "stamp")
    assert "| 1.60x | 1.44-1.68 | 2.04x | 0.78 |" in text


def test_latency_split_gives_the_heads_what_the_backbone_alone_does_not_take(results):
    from lwpar.report.tables import latency_split

    path = results / "peta" / "alm" / "profile-local_cpu.json"
    profile = json.loads(path.read_text())
    profile["variants"]["baseline"]["latency"][0].update(backbone_ms_median=2.5, heads_ms_median=1.5)
    path.write_text(json.dumps(profile))
    split = latency_split(declared(results))
    assert split[["variant", "total_ms", "backbone_ms", "heads_ms"]].values.tolist() == [["baseline", 4.0, 2.5, 1.5]]
    table, _ = collect(declared(results))
    text = markdown(table, "stamp", split)
    assert "## Where the time goes" in text and "| peta | alm | baseline | local_cpu | 1 | 1 | 4.00 | 2.50 | 1.50 |" in text


def test_latency_plans_set_the_predicted_speedup_against_the_measured_one(results):
    from lwpar.report.plans import latency_plans

    layers_csv = results / "peta" / "alm" / "cp_r50" / "layers.csv"
    layers = pd.read_csv(layers_csv).assign(plan_model_ms=4.0, plan_uncalibrated_ms=3.2, plan_predicted_ms=2.5,
                                            plan_target="local_cpu", plan_batch=1, plan_threads=1)
    layers.to_csv(layers_csv, index=False)
    table, _ = collect(declared(results))
    params = {"variants": {"cp_r50": {"decompose": {"methods": {"kxk": "cp", "pointwise": "svd"}, "kinds": ["kxk"],
                                                    "rank": {"policy": "latency", "speedup": 1.6}},
                                      "finetune": {}, "base": None}}}
    plans = latency_plans(table, decomposition_layers(declared(results)), params)
    assert len(plans) == 1
    plan = plans.iloc[0]
    assert (plan.variant, plan.speedup_requested) == ("cp_r50", 1.6)
    assert plan.speedup_uncalibrated == pytest.approx(1.25) and plan.speedup_planned == pytest.approx(1.6)
    assert plan.speedup_measured == 2.0 and plan.plan_error == pytest.approx(0.25)
    text = markdown(table, "stamp", plans=plans)
    assert "| peta | alm | cp_r50 | local_cpu | 1 | 1 | 1.60x | 1.25x | 1.60x | 2.00x | +25.0 % |" in text
    # a table timed on another CPU than the profile (a run resumed elsewhere) is named beside the error
    layers.assign(plan_cpu="CPU A").to_csv(layers_csv, index=False)
    plans = latency_plans(table, decomposition_layers(declared(results)), params, {("peta", "alm", "local_cpu"): "CPU B"})
    assert "| +25.0 % (table measured on CPU A) |" in markdown(table, "stamp", plans=plans)
    plans = latency_plans(table, decomposition_layers(declared(results)), params, {("peta", "alm", "local_cpu"): "CPU A"})
    assert "| +25.0 % |" in markdown(table, "stamp", plans=plans)


def test_a_latency_plan_is_read_against_its_method_planned_by_macs_at_equal_measured_speed():
    from lwpar.report.plans import latency_plans

    params = {"variants": {
        "prune_r70": {"prune": {"kind": "structured", "importance": "l2", "macs_fraction": 0.7}},
        "prune_r30": {"prune": {"kind": "structured", "importance": "l2", "macs_fraction": 0.3}},
        "prune_lat2x": {"prune": {"kind": "structured", "importance": "l2", "budget": "latency", "speedup": 2.0}},
        "prune_lat3x": {"prune": {"kind": "structured", "importance": "l2", "budget": "latency", "speedup": 3.0}},
        "zeros": {"prune": {"kind": "unstructured", "amount": 0.9}}}}
    measured = {"prune_r70": (1.2, -0.01), "prune_r30": (2.4, -0.10), "prune_lat2x": (2.0, -0.05),
                "prune_lat3x": (3.0, -0.12), "zeros": (2.2, -0.02)}  # another method at the same speed
    table = pd.DataFrame([{"dataset": "peta", "model": "alm", "variant": v, "target": "local_cpu", "batch": 1,
                           "threads": 1, "speedup": s, "mA": 0.7 + d, "delta_control_mA": d,
                           "method": method_label(params, v)} for v, (s, d) in measured.items()])
    pruned = pd.DataFrame([{"dataset": "peta", "model": "alm", "variant": v, "plan_model_ms": 4.0,
                            "plan_predicted_ms": 4.0 / s, "plan_target": "local_cpu", "plan_batch": 1,
                            "plan_threads": 1} for v, s in (("prune_lat2x", 2.0), ("prune_lat3x", 3.0))])
    plans = latency_plans(table, pd.DataFrame(), params, pruned=pruned).set_index("variant")
    at2x = plans.loc["prune_lat2x"]
    assert at2x.mac_planned == "prune_r70 (1.20x) - prune_r30 (2.40x)"
    assert at2x.mac_planned_delta_control_mA == pytest.approx(-0.01 + (0.8 / 1.2) * -0.09)
    # faster than every MAC-planned variant: nothing to interpolate, the nearest named
    at3x = plans.loc["prune_lat3x"]
    assert at3x.mac_planned == "none as fast; nearest prune_r30 (2.40x)"
    assert np.isnan(at3x.mac_planned_delta_control_mA)
    text = markdown(table.reindex(columns=COLUMNS).astype({"control": object}), "stamp", plans=plans.reset_index())
    assert "| 2.00x | 2.00x | +0.0 % | 65.00 | -5.00 | prune_r70 (1.20x) - prune_r30 (2.40x) | -7.00 |" in text


def test_the_score_before_batchnorm_reestimation_is_blank_unless_taken(results):
    summary = results / "peta" / "alm" / "prune_r50" / "finetune.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "val_before": None}))
    table, _ = collect(declared(results))
    pruned = compression(declared(results)).set_index("variant").loc["prune_r50"]
    assert np.isnan(pruned.val_mA_before_ft) and pruned.val_mA_after_bn_recalibration == 0.52
    text = markdown(table, "stamp", None, compression(declared(results)))
    assert "| peta | alm | prune_r50 | prune-structured | 0.490 | 0.375 |  | 52.00 | 63.00 |" in text


def test_a_latency_budget_pruning_sets_its_timed_speedup_against_the_profile(results):
    from lwpar.report.plans import latency_plans, pruning_plans

    summary = results / "peta" / "alm" / "prune_r50" / "prune.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "plan_target": "local_cpu", "plan_batch": 1,
                                   "plan_threads": 1, "plan_model_ms": 4.0, "plan_predicted_ms": 2.0}))
    table, _ = collect(declared(results))
    params = {"variants": {"prune_r50": {"prune": {"kind": "structured", "budget": "latency", "speedup": 1.8}}}}
    plans = latency_plans(table, decomposition_layers(declared(results)), params, pruned=pruning_plans(declared(results)))
    assert list(plans.variant) == ["prune_r50"]  # the decompositions here were planned by MACs
    plan = plans.iloc[0]
    measured = table[(table.variant == "prune_r50") & (table.batch == 1) & (table.threads == 1)].speedup.iloc[0]
    assert (plan.speedup_requested, plan.speedup_planned, plan.speedup_measured) == (1.8, 2.0, measured)
    assert np.isnan(plan.speedup_uncalibrated) and plan.plan_error == pytest.approx(measured / 2.0 - 1)
    assert f"| peta | alm | prune_r50 | local_cpu | 1 | 1 | 1.80x |  | 2.00x | {measured:.2f}x |" in \
        markdown(table, "stamp", plans=plans)


def test_files_an_earlier_configuration_left_never_reach_a_table(results, tmp_path_factory):
    """The report reads the files it is given, not what is on disk: a variant's folder and a target's
    profile left by an earlier configuration stay out of every table."""
    from lwpar.report.build import write_report

    run = results / "peta" / "alm"
    old = json.loads((run / "profile-local_cpu.json").read_text())
    old["variants"]["old_variant"] = old["variants"]["cp_r50"]
    _write(run / "profile-old_target.json", {**old, "target": "old_target"})
    _write(run / "old_variant" / "eval/metrics.json", {"mA": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5})
    _write(run / "old_variant" / "finetune.json", json.loads((run / "cp_r50/finetune.json").read_text()))
    (run / "old_variant" / "layers.csv").write_text((run / "cp_r50/layers.csv").read_text())
    _write(run / "old_variant" / "prune.json", {"kind": "structured", "plan_predicted_ms": 1.0})
    out = tmp_path_factory.mktemp("report")
    params = {"experiment": {"variants": ["cp_r50", "prune_r50"]}, "variants": {
        "cp_r50": {"base": None, "finetune": {}, "decompose": {"kinds": ["kxk", "pointwise"], "methods": {
            "kxk": "cp", "pointwise": "svd"}, "rank": {"policy": "budget", "macs_fraction": 0.5}}},
        "prune_r50": {"base": None, "finetune": {}, "prune": {"kind": "structured", "importance": "l2"}}}}
    assert write_report(declared(results), params, out, "stamp") == 3
    tables = {name: pd.read_csv(out / name) for name in ("comparison.csv", "compression.csv", "decomposition_layers.csv")}
    assert set(tables["comparison.csv"].variant) == set(ARTIFACTS) and set(tables["comparison.csv"].target) == {"local_cpu"}
    assert set(tables["compression.csv"].variant) == {"cp_r50", "prune_r50"}
    assert set(tables["decomposition_layers.csv"].variant) == {"cp_r50"}
    assert "old_" not in (out / "comparison.md").read_text()


def test_the_int8_error_summary_names_where_each_int8_model_departs_from_its_fp32_source(results):
    run = results / "peta" / "alm"
    _write(run / "cp_r50+int8/eval/metrics.json", {"mA": 0.52, "accuracy": 0.4, "precision": 0.5, "recall": 0.6, "f1": 0.5})
    pd.DataFrame([  # as deploy.quant_error writes it: activations in graph order, then weights
        {"order": 0, "kind": "activation", "tensor": "images", "op": "", "own_sqnr_db": 40.0,
         "accumulated_sqnr_db": 40.0, "drop_db": np.nan},
        {"order": 1, "kind": "activation", "tensor": "/main_branch/layer1/layer1.0/conv2/conv2.2/Conv_output_0",
         "op": "Conv", "own_sqnr_db": 30.0, "accumulated_sqnr_db": 3.0, "drop_db": 25.0},
        {"order": 2, "kind": "activation", "tensor": "/main_branch/layer1/layer1.0/relu/Relu_output_0", "op": "Relu",
         "own_sqnr_db": 35.0, "accumulated_sqnr_db": 2.5, "drop_db": 0.5},
        {"order": 3, "kind": "activation", "tensor": "/latlayer_3b/latlayer_3b.1/Conv_output_0", "op": "Conv",
         "own_sqnr_db": 33.0, "accumulated_sqnr_db": -4.0, "drop_db": 6.5},
        {"order": 4, "kind": "weight", "tensor": "w1", "op": "", "own_sqnr_db": 31.0, "accumulated_sqnr_db": np.nan,
         "drop_db": np.nan},
        {"order": 5, "kind": "weight", "tensor": "w2", "op": "", "own_sqnr_db": 45.0, "accumulated_sqnr_db": np.nan,
         "drop_db": np.nan},
    ]).to_csv(run / "cp_r50+int8/node_error.csv", index=False)
    inputs = declared(results)
    inputs.metrics[("peta", "alm", "cp_r50+int8")] = run / "cp_r50+int8/eval/metrics.json"
    inputs.int8_errors = {("peta", "alm", "cp_r50+int8"): run / "cp_r50+int8/node_error.csv"}
    table = int8_errors(inputs)
    row = table.iloc[0]
    assert (row.variant, row.output_sqnr_db, row.tensors_dropping, row.tensors, row.min_weight_sqnr_db) == \
        ("cp_r50+int8", -4.0, 2, 4, 31.0)
    assert row.largest_drops == ("main_branch.layer1.0.conv2.2 (Conv) 25.0 dB; latlayer_3b.1 (Conv) 6.5 dB; "
                                 "main_branch.layer1.0.relu (Relu) 0.5 dB")
    assert row.delta_fp32_mA == pytest.approx(0.52 - 0.66)
    table_, _ = collect(inputs)
    text = markdown(table_, "stamp", int8=table)
    assert "## INT8 error" in text and "| -14.00 | -4.0 | 2 of 4 | 31.0 | main_branch.layer1.0.conv2.2 (Conv)" in text
    # a form whose tensors were not measured (NNCF's): its header alone, a row of blanks
    pd.DataFrame(columns=["order", "kind", "tensor", "op", "own_sqnr_db", "accumulated_sqnr_db", "drop_db"]).to_csv(
        run / "cp_r50+int8/node_error.csv", index=False)
    row = int8_errors(inputs).iloc[0]
    assert np.isnan(row.output_sqnr_db) and row.largest_drops == "" and row.tensors == 0


def test_a_second_runtime_gets_its_own_scores_speed_ups_and_a_verdict_per_method(results, tmp_path):
    """A target on another runtime: its rows carry the scores that runtime gave (not ONNX Runtime's),
    and each method's speed-up there is read against the first target's."""
    from lwpar.report.plots import plots
    from lwpar.report.tables import across_targets, runtime_verdicts

    run = results / "peta" / "alm"
    latency = lambda ms, speedup: [{"batch": 1, "threads": 1, "median_ms": ms, "p90_ms": ms,  # noqa: E731
                                    "speedup": speedup}]
    _write(run / "profile-local_openvino.json", {"target": "local_openvino", "target_config": {"runtime": "openvino"},
                                                 "variants": {
        "baseline": {"latency": latency(3.0, 1.0), "size_mb": 30.0, "params": 8e6, "macs": 100e6},
        "cp_r50": {"latency": latency(2.0, 1.5), "size_mb": 15.0, "params": 4e6, "macs": 50e6},
        "prune_r50": {"latency": latency(1.8, 1.65), "size_mb": 14.0, "params": 3e6, "macs": 49e6}}})
    inputs = declared(results)
    inputs.profiles[("peta", "alm", "local_openvino")] = run / "profile-local_openvino.json"
    for name, mA in (("baseline", 0.7001), ("cp_r50", 0.6598)):  # prune_r50 was not scored there
        _write(run / name / "eval-local_openvino/metrics.json", {"mA": mA, "accuracy": 0.5, "precision": 0.6,
                                                                 "recall": 0.7, "f1": 0.65,
                                                                 "runtime": {"name": "openvino"}})
        inputs.target_metrics[("peta", "alm", f"{name}@local_openvino")] = run / name / "eval-local_openvino/metrics.json"
    table, _ = collect(inputs)
    ov = table[table.target == "local_openvino"].set_index("variant")
    assert ov.loc["cp_r50", "mA"] == pytest.approx(0.6598) and ov.loc["cp_r50", "scored_on"] == "openvino"
    assert ov.loc["prune_r50", "scored_on"] == "onnxruntime"  # no score of its own there: said so
    across = across_targets(table).set_index("variant")
    assert across.loc["cp_r50", "speedup_ratio"] == pytest.approx(0.75)
    assert across.loc["cp_r50", "delta_mA"] == pytest.approx(0.6598 - 0.66)
    verdicts = runtime_verdicts(across.reset_index().assign(method=["none", "cp", "prune"]))
    assert any(v.startswith("peta / alm, cp: ") and "does not hold for 1 of 1" in v for v in verdicts)
    assert any(v.startswith("peta / alm, prune: ") and "holds (within 10%)" in v for v in verdicts)
    assert "## Across runtimes" in markdown(table, "stamp", across=across_targets(table), verdicts=verdicts)
    written = plots(table.assign(method=table.variant), tmp_path / "plots")
    assert (tmp_path / "plots" / "mA_vs_latency.png").stat().st_size > 0 and len(written) == 6
