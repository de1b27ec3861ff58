"""The model-file format (`lwpar-model/1`): configuration, attribute names, weights, the compression
`structure` that rebuilds the architecture, and the `lineage` of steps that made the file; atomic
torch files (checkpoints too). Rebuilding a compressed network from a file is compression's job
(`lwpar.compress.structure.load_model`): this module only reads and writes.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch

from lwpar.core.errors import LwparError
from lwpar.core.io import atomic_path

MODEL_FORMAT = "lwpar-model/1"


def save_torch(obj, path: str | Path) -> None:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as exc:
        raise LwparError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError
        reason = os.strerror(errno.ENOSPC) if _disk_full(path) else str(exc).splitlines()[0]
        raise LwparError(f"{path}: cannot write ({reason})") from None


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False


def load_torch(path: str | Path, what: str = "checkpoint") -> dict:
    path = Path(path)
    if not path.is_file():
        raise LwparError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, bad pickle, ...: torch raises many types
        raise LwparError(f"{path}: corrupt or truncated {what} ({type(exc).__name__})") from None


def lineage(blob: dict, **step) -> list[dict]:
    """The steps that made a model file, this one appended. Every job's model then differs from every
    other job's, even when their weights are equal (a fine-tuning that keeps its start model): DVC's
    cache would otherwise hardlink two jobs' outputs into one file, and touching one moves both mtimes."""
    return [*blob.get("lineage", []), step]


def save_model(path: str | Path, model: torch.nn.Module, model_cfg: dict, attributes: list[str], **extra) -> None:
    save_torch({"format": MODEL_FORMAT, "model_cfg": model_cfg, "attributes": attributes,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}, path)
