"""Model files with their compression: rebuilding a saved model, whose `structure` records the
decompositions and prunings that made it, and checking a variant's start model against its `base`.
Kept apart from `runtime` so that training, which only writes plain model files, does not depend
on the compression code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lwpar.core.errors import LwparError
from lwpar.core.modelfile import MODEL_FORMAT, load_torch


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved model (no pretrained download: the weights are in the file)."""
    from lwpar.models import model_from_params

    blob = load_torch(path, "model file")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise LwparError(f"{path}: not an lwpar model file")
    model = model_from_params(blob["model_cfg"], len(blob["attributes"]), pretrained=False)
    apply_structure(model, blob.get("structure", []))
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise LwparError(f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
    return model, blob


def check_start_model(path: str | Path, blob: dict, variant: str, base: str | None) -> list[dict]:
    """The compression steps already in a variant's start model, refused when they contradict its
    `base`: a variant with no base compresses the trained baseline, one with a base compresses
    further what its base variant made (a wrong --model must not pass unnoticed)."""
    structure = list(blob.get("structure") or [])
    if base is None and structure:
        raise LwparError(f"{path}: already compressed, but variant {variant} starts from the trained baseline (base: null)")
    if base is not None and not structure:
        raise LwparError(f"{path}: not compressed, but variant {variant} starts from variant {base}'s model (base: {base})")
    return structure


def apply_structure(model: torch.nn.Module, structure: list[dict]) -> None:
    """Re-create the compressed architecture recorded in a model file (no decomposition is run)."""
    from lwpar.compress.decompose.factorize import apply_plan

    for step in structure:
        if step["op"] == "decompose":
            apply_plan(model, step["plan"], decompose=False)
        elif step["op"] == "prune":
            import torch_pruning as tp

            tp.load_state_dict(model, state_dict=step["tp_state"])
        else:
            raise LwparError(f"unknown structural step {step['op']!r} in model file")
