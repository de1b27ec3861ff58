"""What an experiment asks for: its variants by compression step, the measurements their rank
policies need (sensitivity caches, latency tables) and the artifacts it scores and profiles."""

from __future__ import annotations

from lwpar.compress.recipes import RANK_POLICIES, is_calibrated, is_measured
from lwpar.core.names import QUANTIZED_FORMS
from lwpar.pipeline.layout import REFERENCE


def variants_of(params: dict, kind: str) -> list[str]:
    """The experiment's variants whose recipe has the step `kind` (decompose, prune; finetune: all)."""
    return [v for v in params["experiment"]["variants"] if kind in params["variants"][v]]


def sensitivity_source(params: dict, variant: str) -> str | None:
    """The variant whose sensitivity cache a measured rank policy plans from (itself unless it names
    another in `rank.search.sensitivity_from`); None for formula policies."""
    recipe = params["variants"][variant]
    if not is_measured(recipe):
        return None
    return recipe["decompose"]["rank"]["search"]["sensitivity_from"] or variant


def measured_variants(params: dict) -> list[str]:
    """Variants whose sensitivity is measured: the sources of every decomposition variant in the experiment."""
    sources = {sensitivity_source(params, v) for v in variants_of(params, "decompose")}
    return sorted(s for s in sources if s)


def latency_tables(params: dict) -> list[tuple[str, str]]:
    """(variant, target) of every latency table the experiment needs: per latency-policy variant, its
    sensitivity source (whose candidate ranks are timed) and its target; variants sharing both share one."""
    pairs = set()
    for variant in variants_of(params, "decompose"):
        rank = params["variants"][variant]["decompose"]["rank"]
        if RANK_POLICIES[rank["policy"]].timed:
            pairs.add((sensitivity_source(params, variant), rank["target"]))
    return sorted(pairs)


def calibrated_variants(params: dict) -> dict[str, list[str]]:
    """The variants that read calibration statistics (fitting outputs, refitting after pruning), by the
    model they start from (`baseline`, or the base variant whose fine-tuned model they compress): one
    calibrate job each."""
    starts: dict[str, list[str]] = {}
    for variant in params["experiment"]["variants"]:
        if is_calibrated(params["variants"][variant]):
            starts.setdefault(params["variants"][variant]["base"] or "baseline", []).append(variant)
    return dict(sorted(starts.items()))


def variant_pattern(params: dict, kind: str) -> str:
    """A wildcard constraint matching exactly the variants a stage runs for (never matching when there
    are none): `sensitivity`, `latency`, `calibrate` (the start models), or a compression step
    (`decompose`, `prune`, `finetune`)."""
    if kind == "calibrate":
        names = list(calibrated_variants(params))
    elif kind == "sensitivity":
        names = measured_variants(params)
    elif kind == "latency":
        names = sorted({v for v, _ in latency_tables(params)})
    else:
        names = variants_of(params, kind)
    return "|".join(names) if names else "(?!)"


def quantized_jobs(params: dict) -> list[tuple[str, str]]:
    """(FP32 name, form) of every quantized artifact of a model: `experiment.int8`, then `experiment.mixed`."""
    return [(name, form) for form in QUANTIZED_FORMS for name in params["experiment"][form]]


def artifact_names(params: dict) -> list[str]:
    """Every scored artifact of a model: baseline, variants, and their quantized forms."""
    return ["baseline", *params["experiment"]["variants"], *(f"{n}+{form}" for n, form in quantized_jobs(params))]


def scoring_targets(params: dict) -> list[str]:
    """The experiment's targets whose runtime scores every artifact too: each local one that runs
    another runtime than ONNX Runtime (whose scores every artifact has), so that each figure of such a
    target is its runtime's own. A remote target's runtime is not here to score with."""
    targets = params["profile"]["targets"]
    return [t for t in params["experiment"]["targets"]
            if targets[t]["runtime"] != "onnxruntime" and not targets[t]["command_prefix"]]


def profiled_names(params: dict, model: str) -> list[str]:
    """Every profiled artifact: the scored ones, and for ALM the baseline through the published head."""
    names = artifact_names(params)
    if params["models"][model]["arch"] == "alm":
        names.insert(1, REFERENCE)
    return names
