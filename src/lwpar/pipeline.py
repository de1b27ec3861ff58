"""The pipeline, defined once: stage templates and the job grid from params.

Each stage is one entry of `stages()`: its outputs, inputs, params keys, command-line arguments and
how it runs (threads, memory, time, GPU). The Snakefile makes one rule per entry
(workflow/rules/stages.smk), `lwpar dvc` writes dvc.yaml from the same entries, one DVC stage per
Snakemake job, and `lwpar slurm-profile` the SLURM profile's per-rule settings. Neither engine owns a
command line: both call the `lwpar` CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from lwpar.config import MEASURED_POLICIES

PACKAGE = "src/lwpar"
# Modules every stage runs (config, CLI, IO); a change to them reruns everything.
COMMON_MODULES = ["__init__.py", "cli.py", "config.py", "io.py", "schemas/params.schema.yaml"]


@dataclass
class Stage:
    name: str
    wildcards: tuple[str, ...]
    outputs: dict[str, str]                                  # key -> path pattern
    inputs: Callable[[dict, dict], dict[str, str]]           # (params, wildcards) -> key -> path
    param_keys: Callable[[dict, dict], list[str]]            # dotted keys of params.yaml the job reads
    args: Callable[[dict, dict, dict], list[str]]            # (inputs, outputs, wildcards) -> CLI args
    modules: list[str]                                       # package files the stage runs
    directories: tuple[str, ...] = ()                        # output keys that are folders
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    local: bool = False                                      # runs on the submitting host, not a cluster node
    cached: bool = True                                      # False: outputs are committed to git, not DVC's cache
    # How Snakemake runs it (the rule, and the SLURM profile's per-rule settings):
    doc: str = ""                                            # one line, the rule's description
    threads: int | str = "heavy"                             # "heavy": every core Snakemake has (one such job
    #                                                          at a time, no oversubscription); "all": the same,
    #                                                          also under a cluster profile; or a number
    cluster_threads: int | None = None                       # threads and CPUs of its SLURM job
    mem_mb: int = 4000                                       # per attempt: a retried job asks for more
    runtime_min: int = 60                                    # per attempt
    gpu: bool = False                                        # asks a cluster for one GPU
    constraints: Callable[[dict], dict[str, str]] = field(default=lambda p: {})  # wildcard patterns (params ->)
    report_category: str | None = None                       # outputs shown in `snakemake --report`

    def format(self, pattern: str, wildcards: dict) -> str:
        return pattern.format(**wildcards)

    def log_pattern(self, folder: str = "logs") -> str:
        return "/".join([folder, self.name, *(f"{{{w}}}" for w in self.wildcards)]) + ".log" if self.wildcards \
            else f"{folder}/{self.name}.log"

    def job_outputs(self, wildcards: dict) -> dict[str, str]:
        return {k: self.format(v, wildcards) for k, v in self.outputs.items()}

    def job_name(self, wildcards: dict) -> str:
        return "-".join([self.name, *(wildcards[w] for w in self.wildcards)]).replace("+", "_")

    def module_files(self) -> list[str]:
        return [f"{PACKAGE}/{m}" for m in [*COMMON_MODULES, *self.modules]]

    def command(self, params_file: str, params: dict, wildcards: dict) -> str:
        inputs = self.inputs(params, wildcards)
        outputs = self.job_outputs(wildcards)
        return " ".join(["lwpar", self.name, "--params", params_file, *self.args(inputs, outputs, wildcards)])


def _prepared(params: dict, dataset: str) -> str:
    """What stages that read a dataset depend on: the prepared folder's manifest, not the folder
    (DVC would hash the folder's every image once per dependent stage on each `dvc status`)."""
    return f"{params['paths']['data']}/prepared/{dataset}.manifest.json"


def _run(params: dict, w: dict, name: str) -> str:
    return f"{params['paths']['results']}/{w['dataset']}/{w['model']}/{name}"


REFERENCE = "baseline_reference"  # the baseline's weights run through the published ALM head


def package_imports(module: str, root: Path = Path(__file__).parent) -> list[str]:
    """The package files `module` runs: itself and every lwpar module it imports, directly or through
    others, at module level or inside functions (read from the source, not imported). A job depends
    on exactly these, so a code change reruns the jobs whose stage can execute it, and no others."""
    import ast

    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or not (root / name).is_file():
            return
        seen.add(name)
        for node in ast.walk(ast.parse((root / name).read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lwpar":
                base = node.module.split(".")[1:]
                targets = ["/".join(base), *("/".join([*base, alias.name]) for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = ["/".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "lwpar"]
            for target in filter(None, targets):
                for candidate in (f"{target}.py", f"{target}/__init__.py"):
                    visit(candidate)
        if "/" in name:  # a submodule's package runs first
            visit(f"{name.rsplit('/', 1)[0]}/__init__.py")

    visit(module)
    return sorted(seen - set(COMMON_MODULES))


def start_model(params: dict, w: dict) -> str:
    """The model a variant compresses: the trained baseline, or with `base` another variant's
    fine-tuned model (multi-stage schedules: compress, fine-tune, compress further, fine-tune)."""
    base = params["variants"][w["variant"]]["base"]
    return f"{_run(params, w, base or 'baseline')}/model.pt"


def _finetune_start(params: dict, w: dict) -> str:
    """What fine-tuning starts from: the compressed model, or for a control recipe (no compression
    step) its start model itself. Snakemake also asks for names that are no variant (the rule's output
    pattern matches baseline/model.pt): they get a compressed.pt that no rule makes, so the candidate
    job is dropped, as for any other rule whose inputs cannot be made."""
    recipe = params["variants"].get(w["variant"])
    if recipe is None or "decompose" in recipe or "prune" in recipe:
        return f"{_run(params, w, w['variant'])}/compressed.pt"
    return start_model(params, w)


def _decompose_inputs(params: dict, w: dict) -> dict[str, str]:
    inputs = {"model": start_model(params, w)}
    source = sensitivity_source(params, w["variant"])
    if source:
        inputs["sensitivity"] = f"{_run(params, w, source)}/sensitivity.json"
    rank = params["variants"][w["variant"]]["decompose"]["rank"]
    if rank["policy"] == "latency":  # timed with the sensitivity source's candidate ranks
        inputs["latency_table"] = f"{_run(params, w, source)}/latency-{rank['target']}.json"
    return inputs


def _timing_keys(params: dict, step: dict) -> list[str]:
    """The params a measurement on `step["target"]` depends on (a latency table, a latency-budget pruning)."""
    if "target" not in step:
        return []
    return [*(f"profile.{k}" for k in ("batch_sizes", "threads", "warmup", "rounds", "iters_per_round")),
            f"profile.targets.{step['target']}"]


def _source_model(params: dict, w: dict) -> str:
    """The PyTorch model an ONNX artifact is exported from."""
    name = w["name"]
    if name in ("baseline", REFERENCE):
        return f"{_run(params, w, 'baseline')}/model.pt"
    return f"{_run(params, w, name)}/model.pt"


def artifact_names(params: dict, model: str) -> list[str]:
    """Every scored artifact of a model: baseline, variants, and their INT8 forms."""
    experiment = params["experiment"]
    names = ["baseline", *experiment["variants"]]
    return names + [f"{n}+int8" for n in experiment["int8"]]


def profiled_names(params: dict, model: str) -> list[str]:
    names = artifact_names(params, model)
    if params["models"][model]["arch"] == "alm":
        names.insert(1, REFERENCE)
    return names


def stages(params: dict) -> dict[str, Stage]:
    data_dir = params["paths"]["data"]
    results = params["paths"]["results"]
    run = f"{results}/{{dataset}}/{{model}}"
    return {s.name: s for s in [
        Stage(
            name="data", wildcards=("dataset",),
            outputs={"prepared": f"{data_dir}/prepared/{{dataset}}",
                     "manifest": f"{data_dir}/prepared/{{dataset}}.manifest.json"},
            directories=("prepared",),
            inputs=lambda p, w: {},
            param_keys=lambda p, w: ["seed", f"datasets.{w['dataset']}"],
            args=lambda i, o, w: ["--dataset", w["dataset"], "--out", o["prepared"], "--manifest", o["manifest"],
                                  "--download-dir", f"{data_dir}/downloads"],
            modules=package_imports("stages/data.py"),
            local=True,
            doc="Download (or take from the mirror), extract, parse, check and split one dataset.",
            threads=2, mem_mb=4000, runtime_min=30,
        ),
        Stage(
            name="train", wildcards=("dataset", "model"),
            outputs={"model": f"{run}/baseline/model.pt", "history": f"{run}/baseline/history.csv",
                     "summary": f"{run}/baseline/train.json"},
            inputs=lambda p, w: {"data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "runtime.amp", "train", "evaluate", f"models.{w['model']}"],
            args=lambda i, o, w: ["--dataset-dir", i["data"], "--model", w["model"],
                                  "--out", str(Path(o["model"]).parent)],
            modules=package_imports("stages/train.py"),
            metrics=("summary",), plots=("history",),
            doc="Train the baseline model on the prepared dataset (resumes from its checkpoint).",
            cluster_threads=8, mem_mb=8000, runtime_min=120, gpu=True,
        ),
        Stage(
            name="sensitivity", wildcards=("dataset", "model", "variant"),
            outputs={"cache": f"{run}/{{variant}}/sensitivity.json"},
            inputs=lambda p, w: {"model": start_model(p, w), "data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "runtime.amp", "evaluate", "train.batch_size",
                                     f"variants.{w['variant']}.base", f"variants.{w['variant']}.decompose"],
            args=lambda i, o, w: ["--model", i["model"], "--dataset-dir", i["data"], "--variant", w["variant"],
                                  "--out", o["cache"]],
            modules=package_imports("stages/sensitivity.py"),
            doc="Score the baseline with one layer at a time factorized (measured rank policies).",
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
                                     *_timing_keys(p, {"target": w["target"]})],
            args=lambda i, o, w: ["--model", i["model"], "--variant", w["variant"], "--target", w["target"],
                                  "--out", o["table"]],
            modules=sorted({*package_imports("stages/latency.py"), *package_imports("bench_worker.py")}),
            doc="Time every factorizable layer and its replacements at candidate ranks on a target (latency policy).",
            threads="all", cluster_threads=8, mem_mb=8000, runtime_min=60,  # timing: alone on the machine
            constraints=lambda p: {"variant": variant_pattern(p, "latency")},
        ),
        Stage(
            name="decompose", wildcards=("dataset", "model", "variant"),
            outputs={"model": f"{run}/{{variant}}/compressed.pt", "table": f"{run}/{{variant}}/layers.csv"},
            inputs=lambda p, w: _decompose_inputs(p, w),
            param_keys=lambda p, w: ["seed", f"variants.{w['variant']}.base", f"variants.{w['variant']}.decompose"],
            args=lambda i, o, w: ["--model", i["model"], "--variant", w["variant"], "--out", o["model"],
                                  "--table", o["table"], *(["--sensitivity", i["sensitivity"]] if "sensitivity" in i else []),
                                  *(["--latency-table", i["latency_table"]] if "latency_table" in i else [])],
            modules=package_imports("stages/decompose.py"),
            doc="Factorize the baseline's layers as the variant's recipe says.",
            cluster_threads=4, mem_mb=8000, runtime_min=60,
            constraints=lambda p: {"variant": variant_pattern(p, "decompose")},
        ),
        Stage(
            name="prune", wildcards=("dataset", "model", "variant"),
            outputs={"model": f"{run}/{{variant}}/compressed.pt", "summary": f"{run}/{{variant}}/prune.json"},
            inputs=lambda p, w: {"model": start_model(p, w), "data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", f"variants.{w['variant']}.base", f"variants.{w['variant']}.prune",
                                     *_timing_keys(p, p["variants"][w["variant"]]["prune"])],
            args=lambda i, o, w: ["--model", i["model"], "--dataset-dir", i["data"], "--variant", w["variant"],
                                  "--out", o["model"], "--summary", o["summary"]],
            modules=sorted({*package_imports("stages/prune.py"), *package_imports("bench_worker.py")}),
            metrics=("summary",),
            doc="Prune the baseline's channels (torch-pruning) to the variant's MAC or measured latency budget, or zero weights.",
            threads="all", cluster_threads=4, mem_mb=8000, runtime_min=60,  # a latency budget times: alone
            constraints=lambda p: {"variant": variant_pattern(p, "prune")},
        ),
        Stage(
            name="finetune", wildcards=("dataset", "model", "variant"),
            outputs={"model": f"{run}/{{variant}}/model.pt", "history": f"{run}/{{variant}}/history.csv",
                     "summary": f"{run}/{{variant}}/finetune.json"},
            inputs=lambda p, w: {"model": _finetune_start(p, w),
                                 "teacher": f"{_run(p, w, 'baseline')}/model.pt",
                                 "data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "runtime.amp", "train", "evaluate", f"variants.{w['variant']}.finetune"],
            args=lambda i, o, w: ["--model", i["model"], "--teacher", i["teacher"], "--dataset-dir", i["data"],
                                  "--variant", w["variant"], "--out", str(Path(o["model"]).parent)],
            modules=package_imports("stages/finetune.py"),
            metrics=("summary",),
            doc="Fine-tune a compressed variant, or a control's start model (BN recalibration, optional distillation).",
            cluster_threads=8, mem_mb=8000, runtime_min=120, gpu=True,
            # the experiment's variants only: its output pattern would also match baseline/model.pt
            constraints=lambda p: {"variant": variant_pattern(p, "finetune")},
        ),
        Stage(
            name="export", wildcards=("dataset", "model", "name"),
            outputs={"onnx": f"{run}/{{name}}/model.onnx", "parity": f"{run}/{{name}}/parity.json",
                     "backbone": f"{run}/{{name}}/backbone.onnx"},
            inputs=lambda p, w: {"model": _source_model(p, w), "data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: [],
            args=lambda i, o, w: ["--model", i["model"], "--dataset-dir", i["data"], "--out", o["onnx"],
                                  "--parity-out", o["parity"], "--backbone-out", o["backbone"],
                                  *(["--alm-head", "reference"] if w["name"] == REFERENCE else [])],
            modules=package_imports("stages/export.py"),
            metrics=("parity",),
            doc="Export to ONNX and check parity with PyTorch on real test images.",
            threads=1, cluster_threads=1, mem_mb=4000, runtime_min=20,
            constraints=lambda p: {"name": "[A-Za-z0-9_]+"},
        ),
        Stage(
            name="quantize", wildcards=("dataset", "model", "name"),
            outputs={"onnx": f"{run}/{{name}}+int8/model.onnx"},
            inputs=lambda p, w: {"onnx": f"{_run(p, w, w['name'])}/model.onnx", "data": _prepared(p, w["dataset"])},
            param_keys=lambda p, w: ["seed", "quantize"],
            args=lambda i, o, w: ["--model", i["onnx"], "--dataset-dir", i["data"], "--out", o["onnx"]],
            modules=package_imports("stages/quantize.py"),
            doc="INT8 quantization of an exported model with ONNX Runtime.",
            cluster_threads=2, mem_mb=4000, runtime_min=30,
            constraints=lambda p: {"name": "[A-Za-z0-9_]+"},
        ),
        Stage(
            name="evaluate", wildcards=("dataset", "model", "name"),
            outputs={"metrics": f"{run}/{{name}}/eval/metrics.json",
                     "per_attribute": f"{run}/{{name}}/eval/per_attribute.csv",
                     "thresholds": f"{run}/{{name}}/thresholds.json"},
            inputs=lambda p, w: {"data": _prepared(p, w["dataset"]), "onnx": f"{_run(p, w, w['name'])}/model.onnx"},
            param_keys=lambda p, w: ["evaluate"],
            args=lambda i, o, w: ["--dataset-dir", i["data"], "--model", i["onnx"], "--split", "test",
                                  "--out-dir", str(Path(o["metrics"]).parent), "--thresholds-out", o["thresholds"]],
            modules=package_imports("stages/evaluate.py"),
            metrics=("metrics",),
            doc="Score the deployed ONNX artifact on the test split; choose thresholds on val.",
            cluster_threads=4, mem_mb=4000, runtime_min=30,
            constraints=lambda p: {"name": "[A-Za-z0-9_+]+"},
        ),
        Stage(
            name="profile", wildcards=("dataset", "model", "target"),
            outputs={"profile": f"{run}/profile-{{target}}.json"},
            inputs=lambda p, w: {
                **{f"onnx_{n}": f"{_run(p, w, n)}/model.onnx" for n in profiled_names(p, w["model"])},
                **{f"backbone_{n}": f"{_run(p, w, n)}/backbone.onnx" for n in profiled_names(p, w["model"])
                   if not n.endswith("+int8") and n != REFERENCE},
                **{f"torch_{n}": _source_model(p, {**w, "name": n}) for n in profiled_names(p, w["model"])
                   if not n.endswith("+int8") and n != REFERENCE}},
            param_keys=lambda p, w: [f"profile.{k}" for k in ("batch_sizes", "threads", "warmup", "rounds",
                                                              "iters_per_round")] + [f"profile.targets.{w['target']}"],
            args=lambda i, o, w: ["--target", w["target"], "--out", o["profile"], "--onnx",
                                  *(f"{k[5:]}={v}" for k, v in i.items() if k.startswith("onnx_")), "--backbone",
                                  *(f"{k[9:]}={v}" for k, v in i.items() if k.startswith("backbone_")), "--torch",
                                  *(f"{k[6:]}={v}" for k, v in i.items() if k.startswith("torch_"))],
            # the benchmark worker runs as a script in its own process (on the target), not imported
            modules=sorted({*package_imports("stages/profile.py"), *package_imports("bench_worker.py")}),
            metrics=("profile",),
            doc="Latency, memory, size and MACs of every artifact of a model on a target, interleaved.",
            threads="all", cluster_threads=8, mem_mb=8000, runtime_min=60,  # 1 thread and all of the job's cores
        ),
        Stage(
            name="card", wildcards=("dataset", "model", "name"),
            outputs={"json": f"{run}/{{name}}/card.json", "markdown": f"{run}/{{name}}/card.md"},
            inputs=lambda p, w: {
                "onnx": f"{_run(p, w, w['name'])}/model.onnx", "metrics": f"{_run(p, w, w['name'])}/eval/metrics.json",
                "thresholds": f"{_run(p, w, w['name'])}/thresholds.json",
                "parity": f"{_run(p, w, w['name'].removesuffix('+int8'))}/parity.json",
                "training": f"{_run(p, w, 'baseline')}/train.json", "data": _prepared(p, w["dataset"]),
                **{f"profile_{t}": f"{p['paths']['results']}/{w['dataset']}/{w['model']}/profile-{t}.json"
                   for t in p["experiment"]["targets"]}},
            param_keys=lambda p, w: [],
            args=lambda i, o, w: ["--name", w["name"], "--model", i["onnx"], "--metrics", i["metrics"],
                                  "--thresholds", i["thresholds"], "--parity", i["parity"], "--training", i["training"],
                                  "--dataset-dir", i["data"], "--out", o["json"], "--profiles",
                                  *(v for k, v in i.items() if k.startswith("profile_"))],
            modules=package_imports("stages/card.py"),
            local=True,
            doc="An artifact's model card from its metadata, evaluation, profiles and the baseline's records.",
            threads=1, constraints=lambda p: {"name": "[A-Za-z0-9_+]+"},
        ),
        Stage(
            name="report", wildcards=(),
            outputs={"csv": f"{results}/comparison.csv", "markdown": f"{results}/comparison.md",
                     "attributes": f"{results}/per_attribute_delta.csv", "compression": f"{results}/compression.csv",
                     "layers": f"{results}/decomposition_layers.csv",
                     "latency_png": f"{results}/plots/mA_vs_latency.png",
                     "latency_svg": f"{results}/plots/mA_vs_latency.svg",
                     "macs_png": f"{results}/plots/mA_vs_macs.png", "macs_svg": f"{results}/plots/mA_vs_macs.svg",
                     "reliability_png": f"{results}/plots/reliability.png",
                     "reliability_svg": f"{results}/plots/reliability.svg"},
            inputs=lambda p, w: _report_inputs(p),
            # the variants' schedules pick each one's matched control
            param_keys=lambda p, w: ["experiment", *(f"variants.{v}.{k}" for v in p["experiment"]["variants"]
                                                     for k in ("base", "finetune"))],
            args=lambda i, o, w: ["--results", results, "--out-dir", results],
            modules=package_imports("stages/report.py"),
            plots=("csv", "latency_png", "macs_png"), local=True, cached=False,
            doc="Comparison tables and plots from every evaluation and profile.",
            threads=1, report_category="comparison",
        ),
    ]}


def _report_inputs(params: dict) -> dict[str, str]:
    inputs = {}
    for stage, w in grid(params, upto="profile"):
        if stage.name in ("evaluate", "profile"):
            for key, path in stage.job_outputs(w).items():
                inputs[f"{stage.job_name(w)}:{key}"] = path
        elif stage.name in ("decompose", "finetune"):  # the per-layer tables; fine-tuning's before/after figures
            key = "table" if stage.name == "decompose" else "summary"
            inputs[f"{stage.job_name(w)}:{key}"] = stage.job_outputs(w)[key]
    return inputs


def grid(params: dict, upto: str | None = None) -> list[tuple[Stage, dict]]:
    """Every job of the experiment, in dependency order."""
    experiment = params["experiment"]
    all_stages = stages(params)
    pairs = [{"dataset": d, "model": m} for d in experiment["datasets"] for m in experiment["models"]]
    jobs = [(all_stages["data"], {"dataset": d}) for d in experiment["datasets"]]
    jobs += [(all_stages["train"], w) for w in pairs]
    jobs += [(all_stages["sensitivity"], {**w, "variant": v}) for w in pairs for v in measured_variants(params)]
    jobs += [(all_stages["latency"], {**w, "variant": v, "target": t}) for w in pairs for v, t in latency_tables(params)]
    for kind in ("decompose", "prune"):
        jobs += [(all_stages[kind], {**w, "variant": v}) for w in pairs for v in variants_of(params, kind)]
    jobs += [(all_stages["finetune"], {**w, "variant": v}) for w in pairs for v in experiment["variants"]]
    jobs += [(all_stages["export"], {**w, "name": n}) for w in pairs for n in profiled_names(params, w["model"])
             if not n.endswith("+int8")]
    jobs += [(all_stages["quantize"], {**w, "name": n}) for w in pairs for n in experiment["int8"]]
    jobs += [(all_stages["evaluate"], {**w, "name": n}) for w in pairs for n in artifact_names(params, w["model"])]
    jobs += [(all_stages["profile"], {**w, "target": t}) for w in pairs for t in experiment["targets"]]
    if upto == "profile":
        return jobs
    jobs += [(all_stages["card"], {**w, "name": n}) for w in pairs for n in artifact_names(params, w["model"])]
    return jobs + [(all_stages["report"], {})]


def check_plannable(params: dict) -> None:
    """What planning can know from the networks' shapes alone (no weights, no data): every decomposition
    variant that starts from the baseline finds layers to factorize, and its MAC budget is within reach
    of the smallest ranks its policy may choose. Raises LwparError naming the variant and the reason."""
    from lwpar import LwparError
    from lwpar.complexity import count_macs
    from lwpar.decompose.factorize import layer_io_sizes, macs_at_fraction, select_layers
    from lwpar.models import build_model

    variants = [v for v in variants_of(params, "decompose") if params["variants"][v]["base"] is None]
    if not variants:
        return
    for name in params["experiment"]["models"]:
        cfg = params["models"][name]
        # the attribute count only sizes the classifiers, which no budget check depends on much
        model = build_model(cfg["arch"], cfg["backbone"], num_attributes=35, pretrained=False,
                            alm_head=cfg["alm_head"], align_corners=cfg["align_corners"], logit_bn=cfg["logit_bn"]).eval()
        total = count_macs(model, cfg["input_size"])
        selected = {v: select_layers(model, params["variants"][v]["decompose"]["kinds"],
                                     params["variants"][v]["decompose"]["include_first"],
                                     params["variants"][v]["decompose"]["include_heads"]) for v in variants}
        # one forward pass measures every selected layer's input and output sizes, for all variants
        io = layer_io_sizes(model, sorted({n for names in selected.values() for n in names}), cfg["input_size"])
        for variant in variants:
            recipe = params["variants"][variant]["decompose"]
            names = selected[variant]
            if not names:
                raise LwparError(f"variant {variant}: nothing to factorize in {name} ({cfg['backbone']} has no layer of "
                                 f"kinds {recipe['kinds']} that the recipe selects)")
            rank = recipe["rank"]
            if rank["policy"] not in ("budget", "greedy"):
                continue
            # budget: any fraction down to rank `multiple`; greedy: the smallest fraction it measures
            smallest = 1e-4 if rank["policy"] == "budget" else min(rank["search"]["fractions"])
            reachable = macs_at_fraction(model, names, recipe["methods"], cfg["input_size"], smallest,
                                         rank["multiple"], total, io) / total
            if reachable > rank["macs_fraction"]:
                raise LwparError(f"variant {variant}: MAC budget {rank['macs_fraction']:g} is out of reach on {name}: "
                                 f"the smallest ranks its {rank['policy']} policy can choose leave {reachable:.3f} "
                                 f"of the MACs")


def variants_of(params: dict, kind: str) -> list[str]:
    """The experiment's variants whose recipe has the step `kind` (decompose, prune; finetune: all)."""
    return [v for v in params["experiment"]["variants"] if kind in params["variants"][v]]


def sensitivity_source(params: dict, variant: str) -> str | None:
    """The variant whose sensitivity cache a measured rank policy plans from (itself unless it names
    another in `rank.search.sensitivity_from`); None for formula policies."""
    rank = params["variants"][variant].get("decompose", {}).get("rank", {})
    if rank.get("policy") not in MEASURED_POLICIES:
        return None
    return rank["search"]["sensitivity_from"] or variant


def measured_variants(params: dict) -> list[str]:
    """Variants whose sensitivity is measured: the sources of every decomposition variant in the experiment."""
    sources = {sensitivity_source(params, v) for v in variants_of(params, "decompose")}
    return sorted(s for s in sources if s)


def latency_tables(params: dict) -> list[tuple[str, str]]:
    """(variant, target) of every latency table the experiment needs: per latency-policy variant, its
    sensitivity source (whose candidate ranks are timed) and its target; variants sharing both share one."""
    pairs = {(sensitivity_source(params, v), params["variants"][v]["decompose"]["rank"]["target"])
             for v in variants_of(params, "decompose") if params["variants"][v]["decompose"]["rank"]["policy"] == "latency"}
    return sorted(pairs)


def variant_pattern(params: dict, kind: str) -> str:
    """A wildcard constraint matching exactly those variants (never matching when there are none)."""
    names = {"sensitivity": measured_variants, "latency": lambda p: sorted({v for v, _ in latency_tables(p)})}.get(
        kind, lambda p: variants_of(p, kind))(params)
    return "|".join(names) if names else "(?!)"


def final_targets(params: dict) -> list[str]:
    """The report and every artifact's model card (nothing else depends on the cards)."""
    return [path for stage, w in grid(params) if stage.name in ("card", "report") for path in stage.job_outputs(w).values()]


def _tracked_params(keys: list[str], sources: list[tuple[str, dict]]) -> list[dict]:
    """DVC's params entries for a job: each key under every file of the `extends` chain that sets
    it (DVC reads values from files, not from the merged configuration); a key no file sets takes
    the schema's default, tracked through the schema file (a module input of every job)."""
    from lwpar.config import _MISSING, _value_at

    entries = []
    for path, given in sources:
        present = [key for key in keys if _value_at(given, key, missing=_MISSING) is not _MISSING]
        if present:
            entries.append({path: present})
    return entries


def dvc_yaml(params: dict, params_file: str, sources: list[tuple[str, dict]] | None = None) -> dict:
    """dvc.yaml: one stage per job, with the same command, deps, params and outs as the Snakemake job.
    `sources`: the files of the params file's `extends` chain as (path, keys it sets), base first."""
    sources = sources if sources is not None else [(params_file, params)]
    result = {}
    for stage, wildcards in grid(params):
        inputs = stage.inputs(params, wildcards)
        outputs = stage.job_outputs(wildcards)
        metric_keys = set(stage.metrics) | set(stage.plots)
        keys = stage.param_keys(params, wildcards)
        entry = {"cmd": stage.command(params_file, params, wildcards),
                 "deps": sorted({*inputs.values(), *stage.module_files()})}
        tracked = _tracked_params(keys, sources)
        if tracked:  # an empty list would make DVC depend on every key of the file
            entry["params"] = tracked
        entry["outs"] = [outputs[k] if stage.cached else {outputs[k]: {"cache": False}}
                         for k in outputs if k not in metric_keys]
        if stage.metrics:
            entry["metrics"] = [{outputs[k]: {"cache": False}} for k in stage.metrics]
        if stage.plots:
            entry["plots"] = [{outputs[k]: {"cache": False}} for k in stage.plots]
        result[stage.job_name(wildcards)] = entry
    return {"stages": result}


def render_dvc_yaml(params: dict, params_file: str) -> str:
    from lwpar.config import layers

    sources = [(os.path.normpath(path), given) for path, given in layers(params_file)]
    header = ("# Generated by `lwpar dvc` from src/lwpar/pipeline.py, the definition the Snakefile uses\n"
              "# too. Do not edit: change the pipeline or the params files and regenerate.\n")
    return header + yaml.safe_dump(dvc_yaml(params, params_file, sources), sort_keys=False, width=120)


SLURM_PROFILE_HEADER = """\
# Generated by `lwpar slurm-profile` from src/lwpar/pipeline.py (each stage's threads, memory, time,
# GPU). Do not edit the per-rule settings here: change the stage and regenerate.
# SLURM cluster: `snakemake --profile profiles/slurm --default-resources slurm_partition=NAME`.
# Needs `pip install -e '.[slurm]'` (snakemake-executor-plugin-slurm). Data preparation, the model
# cards and the report run on the submitting host (localrules); every other job is a SLURM job.
# Stages that ask for a GPU get `gpu=1` in their rules (the plugin turns it into --gpus=1). Each
# rule's mem_mb and runtime grow with `attempt`, so a retried job asks for more. Tested on a
# one-node cluster by tests/test_slurm.py.
"""
SLURM_PROFILE_BASE = {
    "executor": "slurm", "jobs": 50, "printshellcmds": True, "keep-going": True, "rerun-incomplete": True,
    "show-failed-logs": True, "retries": 1, "latency-wait": 30,
    # your partition: here, or --default-resources slurm_partition=NAME
    "default-resources": {"slurm_partition": "", "mem_mb": 4000, "runtime": 60},
}


def slurm_profile(params: dict) -> str:
    """The SLURM profile: fixed settings, and each cluster stage's threads and CPUs from its entry."""
    cluster = [s for s in stages(params).values() if not s.local and s.cluster_threads]
    profile = {**SLURM_PROFILE_BASE,
               "set-threads": {s.name: s.cluster_threads for s in cluster},
               "set-resources": {s.name: {"cpus_per_task": s.cluster_threads} for s in cluster}}
    return SLURM_PROFILE_HEADER + yaml.safe_dump(profile, sort_keys=False)


def add_arguments(parser) -> None:
    """`lwpar dvc`: write (or check) dvc.yaml from the pipeline definition."""
    parser.add_argument("--out", type=Path, default=Path("dvc.yaml"), help="file to write")
    parser.add_argument("--check", action="store_true", help="fail if the file differs from what it would be")


def run(args, params) -> None:
    from lwpar import LwparError
    from lwpar.io import write_text

    text = render_dvc_yaml(params, args.params)
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            raise LwparError(f"{args.out} is stale: run `lwpar dvc --params {args.params} --out {args.out}`")
        return
    write_text(args.out, text)
