"""Training a baseline: the model of `models.<name>` on a prepared dataset, the epoch selected on
validation, resumable from its checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lwpar.config import weights_dir
from lwpar.core.errors import LwparError
from lwpar.core.runtime import configure, run_precision, seed_everything
from lwpar.data.loader import Prepared
from lwpar.models import model_from_params, weights_provenance
from lwpar.training.checkpoint import fingerprint
from lwpar.training.loop import Run, TrainResult, fit


def train_baseline(params: dict, model_name: str, data: Prepared, out: Path) -> tuple[torch.nn.Module, TrainResult, dict]:
    """The trained model (its selected epoch's weights), the run's result and its summary (train.json)."""
    if model_name not in params["models"]:
        raise LwparError(f"--model {model_name!r}: not in params models ({', '.join(params['models'])})")
    model_cfg, cfg = params["models"][model_name], params["train"]
    if cfg["frozen_stages"] and not model_cfg["pretrained"]:
        raise LwparError(f"train.frozen_stages: {cfg['frozen_stages']} freezes randomly initialised "
                         f"layers of model {model_name!r} (pretrained: false); set it to 0")
    device = configure(params)
    seed_everything(params["seed"])
    model = model_from_params(model_cfg, len(data.attributes), weights_dir(params))
    model.to(device, memory_format=torch.channels_last)
    precision = run_precision(model, params["runtime"]["amp"], model_cfg["input_size"], device)
    # float32 runs keep their fingerprint from before the precision was a setting
    stamp = fingerprint(model_cfg, cfg, params["seed"], data.meta.get("sources"), data.meta["split_sizes"],
                        *([str(precision)] if precision != torch.float32 else []))
    run = Run(device, precision, params["runtime"]["workers"], params["seed"], params["evaluate"]["batch_size"],
              params["evaluate"]["threshold"])
    started = time.time()
    result = fit(model, data, model_cfg["input_size"], cfg, out, run, fingerprint=stamp,
                 frozen_stages=cfg["frozen_stages"])
    model.load_state_dict(result.state_dict)
    best = result.history[result.best_epoch - 1]
    summary = {
        "model": model_name, "best_epoch": result.best_epoch, "select_metric": cfg["select_metric"],
        "best_val": result.best_metric, "val": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
        "epochs": cfg["epochs"], "seconds_this_run": round(time.time() - started, 1),
        "train_seconds_total": round(sum(h["train_seconds"] for h in result.history), 1),
        "device": str(device), "precision": str(precision).removeprefix("torch."), "fingerprint": stamp,
        "pretrained_weights": weights_provenance(model_cfg["backbone"]) if model_cfg["pretrained"] else None,
    }
    return model, result, summary
