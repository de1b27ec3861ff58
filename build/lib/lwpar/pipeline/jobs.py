"""The job grid: every job of an experiment as (stage, wildcards), in dependency order."""

from __future__ import annotations

from lwpar.core.names import quantized_form
from lwpar.pipeline.experiment import (artifact_names, calibrated_variants, latency_tables, measured_variants,
                                      profiled_names, quantized_jobs, scoring_targets, variants_of)
from lwpar.pipeline.stage import Stage
from lwpar.pipeline.table import stages


def grid(params: dict, upto: str | None = None) -> list[tuple[Stage, dict]]:
    """Every job of the experiment, in dependency order (`upto="profile"`: the jobs the report reads)."""
    experiment = params["experiment"]
    table = stages(params)
    pairs = [{"dataset": d, "model": m} for d in experiment["datasets"] for m in experiment["models"]]
    jobs = [(table["data"], {"dataset": d}) for d in experiment["datasets"]]
    jobs += [(table["train"], w) for w in pairs]
    jobs += [(table["calibrate"], {**w, "start": s}) for w in pairs for s in calibrated_variants(params)]
    jobs += [(table["sensitivity"], {**w, "variant": v}) for w in pairs for v in measured_variants(params)]
    jobs += [(table["latency"], {**w, "variant": v, "target": t}) for w in pairs for v, t in latency_tables(params)]
    for kind in ("decompose", "prune"):
        jobs += [(table[kind], {**w, "variant": v}) for w in pairs for v in variants_of(params, kind)]
    jobs += [(table["finetune"], {**w, "variant": v}) for w in pairs for v in experiment["variants"]]
    jobs += [(table["export"], {**w, "name": n}) for w in pairs for n in profiled_names(params, w["model"])
             if not quantized_form(n)]
    jobs += [(table["quantize"], {**w, "name": n, "form": form}) for w in pairs for n, form in quantized_jobs(params)]
    jobs += [(table["evaluate"], {**w, "name": n}) for w in pairs for n in artifact_names(params)]
    jobs += [(table["evaluate_on"], {**w, "name": n, "target": t}) for w in pairs for n in artifact_names(params)
             for t in scoring_targets(params)]
    jobs += [(table["profile"], {**w, "target": t}) for w in pairs for t in experiment["targets"]]
    if upto == "profile":
        return jobs
    jobs += [(table["card"], {**w, "name": n}) for w in pairs for n in artifact_names(params)]
    return jobs + [(table["report"], {})]


def final_targets(params: dict) -> list[str]:
    """The report and every artifact's model card (nothing else depends on the cards)."""
    return [path for stage, w in grid(params) if stage.name in ("card", "report") for path in stage.job_outputs(w).values()]
