"""The compression steps as the stages run them: a variant's start model loaded and checked against its
`base`, its layers selected (`start`, shared by the sensitivity, latency, decompose and prune stages),
then decomposed (`decompose`; pruning: `compress.prune.prune_step`), returning the compressed model
and its records (`Compressed`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lwpar.compress.decompose.factorize import (apply_plan, factorized_layers, factorized_macs, original_macs,
                                                select_layers)
from lwpar.compress.structure import check_start_model, load_model
from lwpar.core.errors import LwparError
from lwpar.core.progress import Progress
from lwpar.evaluation.complexity import count_macs, count_params


@dataclass
class Start:
    """A variant's start model (in eval mode), its file, the compression steps already in it, its input
    size, and (for a decomposition) the layers the recipe selects."""

    model: nn.Module
    blob: dict
    path: Path
    earlier: list[dict]
    input_size: list[int]
    names: list[str] = field(default_factory=list)


def start(path: Path, params: dict, variant: str, step: str) -> Start:
    """Load a variant's start model and check it against the variant's `base`; for a `decompose` step,
    select the layers its recipe factorizes (never a piece of one an earlier step replaced)."""
    recipe = params["variants"].get(variant, {})
    if step not in recipe:
        raise LwparError(f"--variant {variant!r}: not a {'decomposition' if step == 'decompose' else 'pruning'} "
                         f"variant in params variants")
    model, blob = load_model(path)
    earlier = check_start_model(path, blob, variant, recipe["base"])
    begun = Start(model.eval(), blob, Path(path), earlier, blob["model_cfg"]["input_size"])
    if step == "decompose":
        d = recipe["decompose"]
        begun.names = select_layers(model, d["kinds"], d["include_first"], d["include_heads"],
                                    factorized=factorized_layers(earlier))
        if not begun.names:
            raise LwparError(f"variant {variant}: no layer of kinds {d['kinds']} to factorize in this model")
    return begun


def calibrated(recipe: dict, args, params: dict):
    """The start model's calibration statistics when `recipe` (a decompose block) fits outputs, else
    None; `args.calibration` names the file, checked against `args.model`."""
    from lwpar.compress.recipes import CALIBRATED_FITS

    if recipe["fit"] not in CALIBRATED_FITS:
        return None
    from lwpar.compress.calibration import Statistics

    if args.calibration is None:
        raise LwparError(f"variant {args.variant}: fit {recipe['fit']!r} needs --calibration")
    return Statistics(args.calibration, args.model, params["calibration"]["ridge"])


def sequential(recipe: dict, args, params: dict, begun: Start):
    """For `fit: sequential`, the walk that fits each layer from the partly compressed model's inputs
    (`compress.sequential.SequentialFit`): a copy of the start model as the teacher, and the
    calibration images of the training split in `args.dataset_dir`; else None."""
    if recipe["fit"] != "sequential":
        return None
    import copy

    from lwpar.compress.calibration import fitting_images
    from lwpar.compress.sequential import SequentialFit
    from lwpar.core.runtime import configure
    from lwpar.data.loader import Prepared

    if args.dataset_dir is None:
        raise LwparError(f"variant {args.variant}: fit 'sequential' needs --dataset-dir (its calibration images)")
    device = configure(params)
    images, _ = fitting_images(Prepared(args.dataset_dir), params, begun.input_size)
    return SequentialFit(copy.deepcopy(begun.model), images, params["calibration"]["batch_size"], device,
                         params["calibration"]["ridge"])


@dataclass
class Compressed:
    model: nn.Module
    structure: list[dict]          # every compression step of the file, this one last
    macs: dict                     # {"before", "after"}
    params: dict                   # {"before", "after"}
    rows: list[dict] = field(default_factory=list)   # decomposition: one row per factorized layer
    summary: dict = field(default_factory=dict)      # pruning: the search's figures


def decompose(begun: Start, variant: str, recipe: dict, seed: int, probe=None, latency_table: dict | None = None,
              statistics=None, walk=None) -> Compressed:
    """Choose the ranks (`compress.ranks.plan`) and factorize the chosen layers (in the calibration
    `statistics`' metric, if given; layer after layer from the compressed model's own inputs with
    `walk`, a `SequentialFit`); a row per layer with its shape, rank, parameters and MACs before and
    after, errors and seconds."""
    from lwpar.compress.ranks import plan

    model, size = begun.model, begun.input_size
    torch.manual_seed(seed)
    macs_before, params_before = count_macs(model, size), count_params(model)
    chosen = plan(model, begun.names, recipe["methods"], size, recipe["rank"], macs_before, probe, latency_table)
    if not chosen:
        raise LwparError(f"variant {variant}: the rank policy leaves every layer as it is")
    with Progress(len(chosen), f"decompose {variant}", unit="layer") as progress:
        rows = apply_plan(model, chosen, seed=seed, epc=recipe.get("epc"), statistics=statistics, sequential=walk,
                          progress=lambda entry, stats: progress.update(note=entry["layer"]))
    model.cpu()
    for row in rows:
        if latency_table is not None:  # where the plan's prediction holds, for the report to check it there
            row.update(plan_target=latency_table["target"], plan_batch=latency_table["batch"],
                       plan_threads=latency_table["threads"], plan_cpu=latency_table["machine"].get("cpu_model"))
        shape = row.pop("shape")
        row["shape"] = f"{shape['out']}x{shape['in']}x{shape['kh']}x{shape['kw']}"
        row["macs_before"] = original_macs(shape, row["io"])
        row["macs_after"] = factorized_macs(row["method"], shape, row["rank"], row.pop("io"))
    structure = [*begun.earlier, {"op": "decompose", "variant": variant,
                                  "plan": [{"layer": r["layer"], "method": r["method"], "rank": r["rank"]} for r in rows]}]
    return Compressed(model, structure, {"before": macs_before, "after": count_macs(model, size)},
                      {"before": params_before, "after": count_params(model)}, rows=rows)
