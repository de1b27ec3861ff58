import json
import sys

from lwpar import pipeline
from lwpar.config import ParamsError, load_params
from lwpar.core.errors import LwparError
from lwpar.pipeline.plannable import check_plannable

# The params file: params.yaml, or the one named by `--config params=FILE`. It is validated
# against workflow/schemas/params.schema.yaml (the package's schema) before any job is planned.
PARAMS_FILE = str(config.get("params", "params.yaml"))
try:
    P = load_params(PARAMS_FILE)
    check_plannable(P)
except LwparError as exc:
    sys.exit(f"lwpar: {PARAMS_FILE}: {exc}" if not isinstance(exc, ParamsError) else f"lwpar: {exc}")
config.clear()
config.update(P)
STAGES = pipeline.stages(P)

# Training, evaluation and compression jobs use every core of the machine (PyTorch and ONNX Runtime
# thread pools), so each claims every core granted to Snakemake: they run one at a time, and never
# oversubscribe the CPU (on 2 cores, four concurrent 2-thread jobs ran several times slower than
# the same jobs in turn). Cluster profiles set their threads per rule instead.
HEAVY_THREADS = workflow.cores
final_targets = pipeline.final_targets

wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    variant="[A-Za-z0-9_]+",
    target="[A-Za-z0-9_]+",


def _lookup(params, dotted):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def job_inputs(stage):
    return lambda wildcards: STAGES[stage].inputs(P, dict(wildcards))


def param_values(stage):
    """The params this job reads, as one string: Snakemake reruns the job when it changes."""
    def values(wildcards):
        keys = STAGES[stage].param_keys(P, dict(wildcards))
        return json.dumps({key: _lookup(P, key) for key in keys}, sort_keys=True)
    return values


def command(stage):
    return lambda wildcards: STAGES[stage].command(PARAMS_FILE, P, dict(wildcards))


def outputs(stage):
    spec = STAGES[stage]
    if spec.report_category:
        return {k: report(v, category=spec.report_category) for k, v in spec.outputs.items()}
    return {k: directory(v) if k in spec.directories else v for k, v in spec.outputs.items()}


def rule_threads(stage):
    return {"heavy": HEAVY_THREADS, "all": workflow.cores}.get(stage.threads, stage.threads)


def rule_resources(stage):
    """Memory and time per attempt (a retried job asks for more); a GPU where the stage asks for one."""
    return {"mem_mb": lambda wildcards, attempt, mb=stage.mem_mb: mb * attempt,
            "runtime": lambda wildcards, attempt, minutes=stage.runtime_min: minutes * attempt,
            **({"gpu": 1} if stage.gpu else {})}


localrules: all
