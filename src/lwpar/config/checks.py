"""The cross-key rules of a complete configuration that a JSON schema cannot say: names that must
exist, fractions that must sum to one, chains of variants, matched controls, what a latency plan
needs. Each problem is (dotted key, what is wrong)."""

from __future__ import annotations

import math

from lwpar.compress.recipes import (CURVE_POLICIES, MEASURED_POLICIES, RANK_POLICIES, is_control, matched_control,
                                   schedule, timing_step)
from lwpar.core.machine import not_installed
from lwpar.core.names import QUANTIZED_FORMS


def _schema_default(definition: str, key: str):
    """The schema's default of `key` in `$defs.<definition>` (a block: every key's default)."""
    from lwpar.config.load import fill_defaults, schema

    return fill_defaults({}, schema()["$defs"][definition]["properties"][key])


def problems(params: dict):
    """Every (dotted key, problem) of a complete, schema-valid configuration, in a fixed order."""
    for name, ds in params["datasets"].items():
        if not math.isclose(sum(ds["fractions"]), 1.0, abs_tol=1e-6):
            yield f"datasets.{name}.fractions", f"must sum to 1, got {sum(ds['fractions']):g}"
        if ds["kind"] == "pa100k" and ds["split"] != "standard":
            yield f"datasets.{name}.split", "PA-100K has no person ids: only 'standard' is possible"
        if ds["kind"] == "csv":
            if not ds["annotation"]:
                yield f"datasets.{name}.annotation", "kind 'csv' reads its labels from this CSV file: name it"
            if (ds["split"] == "standard") != bool(ds["csv"]["split_column"]):
                yield (f"datasets.{name}.split", "kind 'csv': 'standard' reads csv.split_column, so it needs one, and a "
                       "split column needs split 'standard'")
            if ds["split"] == "standard" and ds["partition"]:
                yield f"datasets.{name}.partition", "kind 'csv' has one partition, its split column: 0"
        elif ds["csv"] != _schema_default("dataset", "csv"):
            yield f"datasets.{name}.csv", f"read by kind 'csv' only, this dataset is {ds['kind']!r}"
    for name, model in params["models"].items():
        if model["backbone"] == "bn_inception" and any(v % 32 for v in model["input_size"]):
            # Its stride-2 blocks concatenate a padded conv with a ceil-mode pool: sizes agree only then.
            yield f"models.{name}.input_size", f"bn_inception needs multiples of 32, got {model['input_size']}"
    for i, name in enumerate(params["experiment"]["datasets"]):
        if name not in params["datasets"]:
            yield f"experiment.datasets[{i}]", f"unknown dataset {name!r} (defined: {', '.join(params['datasets'])})"
    for i, name in enumerate(params["experiment"]["variants"]):
        if name not in params["variants"]:
            yield f"experiment.variants[{i}]", f"unknown variant {name!r} (defined: {', '.join(params['variants']) or 'none'})"
    for form in QUANTIZED_FORMS:
        for i, name in enumerate(params["experiment"][form]):
            if name != "baseline" and name not in params["experiment"]["variants"]:
                yield f"experiment.{form}[{i}]", f"{name!r} is neither 'baseline' nor a variant of the experiment"
    for i, name in enumerate(params["experiment"]["targets"]):
        if name not in params["profile"]["targets"]:
            yield f"experiment.targets[{i}]", f"unknown target {name!r} (defined: {', '.join(params['profile']['targets'])})"
    for i, name in enumerate(params["experiment"]["models"]):
        if name not in params["models"]:
            yield f"experiment.models[{i}]", f"unknown model {name!r} (defined: {', '.join(params['models'])})"
    quantize = params["quantize"]
    if params["experiment"]["nncf"] and not_installed("nncf"):
        yield "experiment.nncf", not_installed("nncf")
    if quantize["engine"] == "nncf" and (params["experiment"]["int8"] or params["experiment"]["mixed"]):
        if not_installed("nncf"):
            yield "quantize.engine", not_installed("nncf")
        if quantize["mode"] != "static":
            yield "quantize.mode", "engine nncf quantizes statically only (set mode: static)"
        if params["experiment"]["mixed"]:
            yield "experiment.mixed", "mixed precision by measured error needs quantize.engine onnxruntime"
    for name, target in params["profile"]["targets"].items():
        if bool(target["copy_command"]) != bool(target["remote_dir"]):
            yield f"profile.targets.{name}.remote_dir", "copy_command and remote_dir go together (both set or both null)"
        # a remote target's runtime is installed there, not here
        if name in params["experiment"]["targets"] and not target["command_prefix"] and not_installed(target["runtime"]):
            yield f"profile.targets.{name}.runtime", not_installed(target["runtime"])
    for name in params["experiment"]["variants"]:
        chain, step = [name], params["variants"].get(name, {}).get("base")
        while step is not None and step not in chain:
            chain.append(step)
            step = params["variants"].get(step, {}).get("base")
        if step is not None:
            yield f"variants.{name}.base", f"variants start from each other in a circle: {' -> '.join([*chain, step])}"
        elif len(chain) > 1 and any(v not in params["experiment"]["variants"] for v in chain[1:]):
            missing = next(v for v in chain[1:] if v not in params["experiment"]["variants"])
            yield f"variants.{name}.base", f"{missing!r} must be a variant of the experiment (it is built first)"
        elif step is None and name in params["variants"] and matched_control(params, name) is None \
                and not is_control(params["variants"][name]):
            stages = len(schedule(params, name))
            yield (f"experiment.variants[{params['experiment']['variants'].index(name)}]",
                   f"{name!r} has no matched control: the experiment needs a variant without compression whose "
                   f"fine-tuning schedule is the same ({stages} stage{'s' if stages > 1 else ''}: the `finetune` keys "
                   f"of the variant and of each base)")
    yield from _qat_problems(params)
    for name in params["experiment"]["variants"]:
        variant = params["variants"].get(name, {})
        if variant.get("blockwise", {}).get("steps") and is_control(variant):
            yield (f"variants.{name}.blockwise.steps", "a control has no compressed layer to reconstruct "
                   "(block-wise reconstruction would leave it unchanged): set 0")
        block = timing_step(variant)
        if block is not None and block["target"] not in params["experiment"]["targets"]:
            key = "prune" if "budget" in block else "decompose.rank"
            yield (f"variants.{name}.{key}.target",
                   f"{block['target']!r} is not one of experiment.targets ({', '.join(params['experiment']['targets'])}): "
                   f"the profile would not measure what the plan predicts")
    for name, variant in params["variants"].items():
        rank = variant.get("decompose", {}).get("rank", {})
        source = rank.get("search", {}).get("sensitivity_from")
        if source is None:
            continue
        other = params["variants"].get(source, {}).get("decompose", {})
        if other.get("rank", {}).get("policy") not in MEASURED_POLICIES:
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} is not a decomposition variant with a measured rank policy ({', '.join(MEASURED_POLICIES)})")
        elif RANK_POLICIES[rank["policy"]].timed and (other["rank"]["policy"] not in CURVE_POLICIES
                                              or other["rank"]["search"].get("fractions") != rank["search"]["fractions"]
                                              or other["rank"]["multiple"] != rank["multiple"]):
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} does not score the ranks this latency plan times (it needs a {' or '.join(CURVE_POLICIES)} "
                   f"policy with the same search.fractions and multiple)")
        elif (any(other.get(k) != variant["decompose"].get(k)
                  for k in ("kinds", "methods", "fit", "include_first", "include_heads", "epc"))
              or params["variants"][source]["base"] != variant["base"]):
            yield (f"variants.{name}.decompose.rank.search.sensitivity_from",
                   f"{source!r} factorizes other layers or by other methods: its measurements do not apply")




def _qat_problems(params: dict):
    """Quantization-aware fine-tuning trains for the INT8 model that ONNX Runtime's static quantizer
    makes: the variant, and the control it is read against, must be quantized that way."""
    experiment, quantize = params["experiment"], params["quantize"]
    for name in experiment["variants"]:
        recipe = params["variants"].get(name, {}).get("finetune", {})
        if not recipe.get("qat"):
            continue
        key = f"variants.{name}.finetune.qat"
        if quantize["engine"] != "onnxruntime" or quantize["mode"] != "static":
            yield key, (f"trains for ONNX Runtime's static INT8 model, but quantize makes a {quantize['mode']} one "
                        f"with engine {quantize['engine']} (set quantize.engine: onnxruntime, mode: static)")
        elif not any(name in experiment[form] for form in QUANTIZED_FORMS):
            yield key, (f"trains {name!r} for INT8, but no quantized form (experiment.int8, mixed, nncf) names it "
                        f"(add {name!r} to experiment.int8)")
        elif not recipe.get("epochs"):
            yield key, "needs fine-tuning epochs (epochs: 0 trains nothing on the INT8 grids)"
        else:
            control = matched_control(params, name) if not is_control(params["variants"][name]) else None
            for form in QUANTIZED_FORMS:
                if control is not None and name in experiment[form] and control not in experiment[form]:
                    yield key, (f"{name!r}+{form} is read against its control {control!r} in that form: add "
                                f"{control!r} to experiment.{form}")
