"""The stage table: one entry per stage, in pipeline order. The Snakefile makes one rule per entry
(workflow/rules/stages.smk), `lwpar dvc` one DVC stage per job of the grid (`jobs.grid`), and
`lwpar slurm-profile` the SLURM profile's per-rule settings. An entry holds what only the pipeline
knows (output patterns, inputs, params keys, resources); the subcommand holds its flags and
description (`lwpar.stages`)."""

from __future__ import annotations

from lwpar.compress.recipes import (QAT_KEYS, calibration_selection, is_calibrated, reconstructs_blocks, runs_images,
                                    timing_step)
from lwpar.core.names import QUANTIZED_FORMS, form_keys, fp32_name, quantized_form
from lwpar.pipeline.experiment import calibrated_variants, profiled_names, sensitivity_source, variant_pattern
from lwpar.pipeline.layout import (REFERENCE, finetune_start, prepared, profile_file, run_folder, source_model,
                                   start_model)
from lwpar.pipeline.stage import Stage

BENCH_WORKER = "deploy/bench_worker.py"  # runs as a script in its own process (on the target), not imported
TIMING_KEYS = ("batch_sizes", "threads", "warmup", "rounds", "iters_per_round")


def timing_keys(target: str | None) -> list[str]:
    """The params a measurement on `target` depends on (the profile, a latency table, a latency-budget pruning)."""
    return [*(f"profile.{k}" for k in TIMING_KEYS), f"profile.targets.{target}"] if target else []


def _decompose_inputs(params: dict, w: dict) -> dict[str, str]:
    inputs = {"model": start_model(params, w)}
    source = sensitivity_source(params, w["variant"])
    if source:
        inputs["sensitivity"] = f"{run_folder(params, w, source)}/sensitivity.json"
    timed = timing_step(params["variants"][w["variant"]])
    if timed is not None:  # timed with the sensitivity source's candidate ranks
        inputs["latency_table"] = f"{run_folder(params, w, source)}/latency-{timed['target']}.json"
    if runs_images(params["variants"][w["variant"]]):  # the calibration images
        inputs["data"] = prepared(params, w["dataset"])
    return {**inputs, **_calibration_input(params, w)}


def _calibration_input(params: dict, w: dict) -> dict[str, str]:
    """The start model's calibration statistics, for a variant that fits its layers' outputs."""
    recipe = params["variants"][w["variant"]]
    if not is_calibrated(recipe):
        return {}
    return {"calibration": f"{run_folder(params, w, recipe['base'] or 'baseline')}/calibration.pt"}


def _calibration_selections(params: dict, w: dict) -> list[str]:
    """The distinct layer selections of the variants starting from this model: what their statistics
    measure (words of `recipes.calibration_selection`)."""
    return sorted({calibration_selection(params["variants"][v]) for v in calibrated_variants(params).get(w["start"], [])})


def _profile_inputs(params: dict, w: dict) -> dict[str, str]:
    names = profiled_names(params, w["model"])
    fp32 = [n for n in names if not quantized_form(n) and n != REFERENCE]
    return {**{f"onnx:{n}": f"{run_folder(params, w, n)}/model.onnx" for n in names},
            **{f"backbone:{n}": f"{run_folder(params, w, n)}/backbone.onnx" for n in fp32},
            **{f"torch:{n}": source_model(params, {**w, "name": n}) for n in fp32}}


def _card_inputs(params: dict, w: dict) -> dict[str, str]:
    folder = run_folder(params, w, w["name"])
    return {"onnx": f"{folder}/model.onnx", "metrics": f"{folder}/eval/metrics.json",
            "thresholds": f"{folder}/thresholds.json",
            "parity": f"{run_folder(params, w, fp32_name(w['name']))}/parity.json",
            "training": f"{run_folder(params, w, 'baseline')}/train.json", "data": prepared(params, w["dataset"]),
            **{f"profiles:{t}": profile_file(params, w, t) for t in params["experiment"]["targets"]}}


def stages(params: dict) -> dict[str, Stage]:
    data_dir = params["paths"]["data"]
    results = params["paths"]["results"]
    run = f"{results}/{{dataset}}/{{model}}"
    name_pattern = {"name": "[A-Za-z0-9_]+"}
    return {s.name: s for s in [
        Stage(
            name="data", wildcards=("dataset",),
            outputs={"prepared": f"{data_dir}/prepared/{{dataset}}",
                     "manifest": f"{data_dir}/prepared/{{dataset}}.manifest.json"},
            directories=("prepared",),
            inputs=lambda p, w: {},
            param_keys=lambda p, w: ["seed", f"datasets.{w['dataset']}"],
            options=lambda p, w: {"download_dir": f"{data_dir}/downloads"},
            local=True, threads=2, mem_mb=4000, runtime_min=30,
        ),
        Stage(
            name="train", wildcards=("dataset", "model"),
            outputs={"model": f"{run}/baseline/model.pt", "history": f"{run}/baseline/history.csv",
                     "summary": f"{run}/baseline/train.json"},
            inputs=lambda p, w: {"data": prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "runtime.amp", "train", "evaluate", f"models.{w['model']}"],
            metrics=("summary",), plots=("history",),
            cluster_threads=8, mem_mb=8000, runtime_min=120, gpu=True,
        ),
        Stage(
            name="calibrate", wildcards=("dataset", "model", "start"),
            outputs={"statistics": f"{run}/{{start}}/calibration.pt"},
            inputs=lambda p, w: {"model": f"{run_folder(p, w, w['start'])}/model.pt", "data": prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "calibration.images", "calibration.heldout_images",
                                     "calibration.batch_size"],
            options=lambda p, w: {"select": _calibration_selections(p, w)},
            cluster_threads=4, mem_mb=8000, runtime_min=60,
            constraints=lambda p: {"start": variant_pattern(p, "calibrate")},
        ),
        Stage(
            name="sensitivity", wildcards=("dataset", "model", "variant"),
            outputs={"cache": f"{run}/{{variant}}/sensitivity.json"},
            inputs=lambda p, w: {"model": start_model(p, w), "data": prepared(p, w["dataset"]),
                                 **_calibration_input(p, w)},
            param_keys=lambda p, w: ["seed", "runtime.amp", "evaluate", "train.batch_size",
                                     f"variants.{w['variant']}.base", f"variants.{w['variant']}.decompose",
                                     *(["calibration.ridge"] if is_calibrated(p["variants"][w["variant"]]) else [])],
            cluster_threads=8, mem_mb=8000, runtime_min=240, gpu=True,  # hundreds of validation passes
            constraints=lambda p: {"variant": variant_pattern(p, "sensitivity")},
        ),
        Stage(
            name="latency", wildcards=("dataset", "model", "variant", "target"),
            outputs={"table": f"{run}/{{variant}}/latency-{{target}}.json"},
            inputs=lambda p, w: {"model": start_model(p, w)},
            param_keys=lambda p, w: ["seed", f"variants.{w['variant']}.base",
                                     *(f"variants.{w['variant']}.decompose.{k}" for k in
                                       ("kinds", "methods", "include_first", "include_heads", "rank.multiple",
                                        "rank.search.fractions")),
                                     *timing_keys(w["target"])],
            scripts=(BENCH_WORKER,),
            threads="all", cluster_threads=8, mem_mb=8000, runtime_min=60,  # timing: alone on the machine
            constraints=lambda p: {"variant": variant_pattern(p, "latency")},
        ),
        Stage(
            name="decompose", wildcards=("dataset", "model", "variant"),
            outputs={"model": f"{run}/{{variant}}/compressed.pt", "table": f"{run}/{{variant}}/layers.csv"},
            inputs=_decompose_inputs,
            param_keys=lambda p, w: ["seed", f"variants.{w['variant']}.base", f"variants.{w['variant']}.decompose",
                                     *(["calibration.ridge"] if is_calibrated(p["variants"][w["variant"]]) else []),
                                     *(["calibration.images", "calibration.batch_size"] if
                                       runs_images(p["variants"][w["variant"]]) else [])],
            cluster_threads=4, mem_mb=8000, runtime_min=60,
            constraints=lambda p: {"variant": variant_pattern(p, "decompose")},
        ),
        Stage(
            name="prune", wildcards=("dataset", "model", "variant"),
            outputs={"model": f"{run}/{{variant}}/compressed.pt", "summary": f"{run}/{{variant}}/prune.json"},
            inputs=lambda p, w: {"model": start_model(p, w), "data": prepared(p, w["dataset"]), **_calibration_input(p, w)},
            param_keys=lambda p, w: ["seed", f"variants.{w['variant']}.base", f"variants.{w['variant']}.prune",
                                     *timing_keys((timing_step(p["variants"][w["variant"]]) or {}).get("target")),
                                     *(["calibration.ridge"] if is_calibrated(p["variants"][w["variant"]]) else [])],
            scripts=(BENCH_WORKER,),
            metrics=("summary",),
            threads="all", cluster_threads=4, mem_mb=8000, runtime_min=60,  # a latency budget times: alone
            constraints=lambda p: {"variant": variant_pattern(p, "prune")},
        ),
        Stage(
            name="finetune", wildcards=("dataset", "model", "variant"),
            outputs={"model": f"{run}/{{variant}}/model.pt", "history": f"{run}/{{variant}}/history.csv",
                     "summary": f"{run}/{{variant}}/finetune.json"},
            inputs=lambda p, w: {"model": finetune_start(p, w), "teacher": f"{run_folder(p, w, 'baseline')}/model.pt",
                                 "data": prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "runtime.amp", "train", "evaluate", f"variants.{w['variant']}.finetune",
                                     # whether it is on, or the whole block when it is
                                     *([f"variants.{w['variant']}.blockwise", "calibration.batch_size"]
                                       if reconstructs_blocks(p["variants"][w["variant"]])
                                       else [f"variants.{w['variant']}.blockwise.steps"]),
                                     # quantization-aware fine-tuning trains on quantize's grids
                                     *([f"quantize.{k}" for k in QAT_KEYS] if p["variants"][w["variant"]]["finetune"]["qat"]
                                       else [])],
            metrics=("summary",),
            cluster_threads=8, mem_mb=8000, runtime_min=120, gpu=True,
            # the experiment's variants only: its output pattern would also match baseline/model.pt
            constraints=lambda p: {"variant": variant_pattern(p, "finetune")},
        ),
        Stage(
            name="export", wildcards=("dataset", "model", "name"),
            outputs={"onnx": f"{run}/{{name}}/model.onnx", "parity": f"{run}/{{name}}/parity.json",
                     "backbone": f"{run}/{{name}}/backbone.onnx"},
            inputs=lambda p, w: {"model": source_model(p, w), "data": prepared(p, w["dataset"])},
            param_keys=lambda p, w: [],
            options=lambda p, w: {"alm_head": "reference" if w["name"] == REFERENCE else None},
            metrics=("parity",),
            threads=1, cluster_threads=1, mem_mb=4000, runtime_min=20,
            constraints=lambda p: name_pattern,
        ),
        Stage(
            name="quantize", wildcards=("dataset", "model", "name", "form"),
            outputs={"onnx": f"{run}/{{name}}+{{form}}/model.onnx", "errors": f"{run}/{{name}}+{{form}}/node_error.csv"},
            inputs=lambda p, w: {"onnx": f"{run_folder(p, w, w['name'])}/model.onnx", "data": prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", *(f"quantize.{k}" for k in form_keys(w["form"], p["quantize"]))],
            cluster_threads=2, mem_mb=4000, runtime_min=30,
            constraints=lambda p: {**name_pattern, "form": "|".join(QUANTIZED_FORMS)},
        ),
        Stage(
            name="evaluate", wildcards=("dataset", "model", "name"),
            outputs={"metrics": f"{run}/{{name}}/eval/metrics.json",
                     "per_attribute": f"{run}/{{name}}/eval/per_attribute.csv",
                     "thresholds": f"{run}/{{name}}/thresholds.json"},
            inputs=lambda p, w: {"data": prepared(p, w["dataset"]), "onnx": f"{run_folder(p, w, w['name'])}/model.onnx"},
            param_keys=lambda p, w: ["evaluate"],
            options=lambda p, w: {"split": "test"},
            metrics=("metrics",),
            cluster_threads=4, mem_mb=4000, runtime_min=30,
            constraints=lambda p: {"name": "[A-Za-z0-9_+]+"},
        ),
        Stage(  # the same artifacts scored by another runtime, as a target runs them
            name="evaluate_on", subcommand="evaluate", wildcards=("dataset", "model", "name", "target"),
            outputs={"metrics": f"{run}/{{name}}/eval-{{target}}/metrics.json",
                     "per_attribute": f"{run}/{{name}}/eval-{{target}}/per_attribute.csv",
                     "thresholds": f"{run}/{{name}}/eval-{{target}}/thresholds.json"},
            inputs=lambda p, w: {"data": prepared(p, w["dataset"]), "onnx": f"{run_folder(p, w, w['name'])}/model.onnx"},
            param_keys=lambda p, w: ["evaluate", *(f"profile.targets.{w['target']}.{k}"
                                                   for k in ("runtime", "inference_precision"))],
            options=lambda p, w: {"split": "test", "runtime": p["profile"]["targets"][w["target"]]["runtime"],
                                  "inference_precision": p["profile"]["targets"][w["target"]]["inference_precision"]},
            metrics=("metrics",),
            cluster_threads=4, mem_mb=4000, runtime_min=30,
            constraints=lambda p: {"name": "[A-Za-z0-9_+]+", "target": "[A-Za-z0-9_]+"},
        ),
        Stage(
            name="profile", wildcards=("dataset", "model", "target"),
            outputs={"profile": f"{run}/profile-{{target}}.json"},
            inputs=_profile_inputs,
            param_keys=lambda p, w: timing_keys(w["target"]),
            scripts=(BENCH_WORKER,),
            metrics=("profile",),
            threads="all", cluster_threads=8, mem_mb=8000, runtime_min=60,  # 1 thread and all of the job's cores
        ),
        Stage(
            name="card", wildcards=("dataset", "model", "name"),
            outputs={"json": f"{run}/{{name}}/card.json", "markdown": f"{run}/{{name}}/card.md"},
            inputs=_card_inputs,
            param_keys=lambda p, w: [],
            local=True, threads=1, constraints=lambda p: {"name": "[A-Za-z0-9_+]+"},
        ),
        Stage(
            name="report", wildcards=(),
            outputs={"csv": f"{results}/comparison.csv", "markdown": f"{results}/comparison.md",
                     "attributes": f"{results}/per_attribute_delta.csv", "compression": f"{results}/compression.csv",
                     "layers": f"{results}/decomposition_layers.csv", "int8_errors": f"{results}/int8_error.csv",
                     "across_runtimes": f"{results}/across_runtimes.csv",
                     "latency_png": f"{results}/plots/mA_vs_latency.png",
                     "latency_svg": f"{results}/plots/mA_vs_latency.svg",
                     "macs_png": f"{results}/plots/mA_vs_macs.png", "macs_svg": f"{results}/plots/mA_vs_macs.svg",
                     "reliability_png": f"{results}/plots/reliability.png",
                     "reliability_svg": f"{results}/plots/reliability.svg"},
            inputs=lambda p, w: _report_inputs(p),
            # the variants' recipes label them and pick each one's matched control
            param_keys=lambda p, w: ["experiment", *(f"variants.{v}" for v in p["experiment"]["variants"])],
            plots=("csv", "latency_png", "macs_png"), local=True, cached=False,
            threads=1, report_category="comparison",
        ),
    ]}


def _report_inputs(params: dict) -> dict[str, str]:
    """The files the report reads, each named `<kind>:<dataset>/<model>/<artifact, variant or target>`."""
    from lwpar.pipeline.jobs import grid

    reads = {"evaluate": ("metrics", "per_attribute"), "evaluate_on": ("metrics",), "profile": ("profile",),
             "decompose": ("table",), "prune": ("summary",), "finetune": ("summary",), "quantize": ("errors",)}
    kinds = {("evaluate", "metrics"): "metrics", ("evaluate", "per_attribute"): "per_attribute",
             ("evaluate_on", "metrics"): "target_metrics",
             ("profile", "profile"): "profiles", ("decompose", "table"): "layers", ("prune", "summary"): "prune",
             ("finetune", "summary"): "finetune", ("quantize", "errors"): "int8_errors"}
    inputs = {}
    for stage, w in grid(params, upto="profile"):
        for key in reads.get(stage.name, ()):
            last = (f"{w['name']}+{w['form']}" if stage.name == "quantize" else f"{w['name']}@{w['target']}"
                    if stage.name == "evaluate_on" else w.get("name")) or w.get("variant") or w.get("target")
            inputs[f"{kinds[stage.name, key]}:{w['dataset']}/{w['model']}/{last}"] = stage.job_outputs(w)[key]
    return inputs
