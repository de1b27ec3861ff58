"""Train a model on a prepared dataset, selecting the epoch on the validation split.

Writes <out>/model.pt (the selected weights), history.csv (one row per epoch) and train.json.
A checkpoint (<out>/checkpoint.pt) is written every epoch; the same command run again after an
interruption resumes from it. A checkpoint from different settings is ignored, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset (lwpar data): its folder or its manifest")
    parser.add_argument("--model", required=True, help="model name in params models")
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(args, params) -> None:
    import torch

    from lwpar import LwparError
    from lwpar.config import weights_dir
    from lwpar.data.loader import Prepared
    from lwpar.io import write_json
    from lwpar.models import model_from_params, weights_provenance
    from lwpar.runtime import configure, load_torch, run_precision, save_model, seed_everything
    from lwpar.train import CHECKPOINT, fit, write_history

    if args.model not in params["models"]:
        raise LwparError(f"--model {args.model!r}: not in params models ({', '.join(params['models'])})")
    model_cfg = params["models"][args.model]
    if params["train"]["frozen_stages"] and not model_cfg["pretrained"]:
        raise LwparError(f"train.frozen_stages: {params['train']['frozen_stages']} freezes randomly initialised "
                         f"layers of model {args.model!r} (pretrained: false); set it to 0")
    device = configure(params)
    data = Prepared(args.dataset_dir)
    seed_everything(params["seed"])
    model = model_from_params(model_cfg, len(data.attributes), weights_dir(params))
    model.to(device, memory_format=torch.channels_last)
    precision = run_precision(model, params["runtime"]["amp"], model_cfg["input_size"], device)
    # float32 runs keep their fingerprint from before the precision was a setting
    stamp = fingerprint(model_cfg, params["train"], params["seed"], data.meta.get("sources"),
                        data.meta["split_sizes"], *([str(precision)] if precision != torch.float32 else []))
    checkpoint = args.out / CHECKPOINT
    if checkpoint.exists() and load_torch(checkpoint, "training checkpoint").get("fingerprint", stamp) != stamp:
        checkpoint.unlink()  # written under other settings: resuming it would mix two runs
    started = time.time()
    result = fit(model, data, model_cfg["input_size"], params["train"], args.out, device, params["seed"],
                 params["runtime"]["workers"], precision, params["evaluate"]["batch_size"],
                 params["evaluate"]["threshold"], fingerprint=stamp, frozen_stages=params["train"]["frozen_stages"])
    model.load_state_dict(result.state_dict)
    save_model(args.out / "model.pt", model, model_cfg, data.attributes, trained_on=str(args.dataset_dir),
               lineage=[{"stage": "train", "model": args.model}])
    write_history(result.history, args.out / "history.csv")
    best = result.history[result.best_epoch - 1]
    write_json(args.out / "train.json", {
        "model": args.model, "best_epoch": result.best_epoch,
        "select_metric": params["train"]["select_metric"], "best_val": result.best_metric,
        "val": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
        "epochs": params["train"]["epochs"], "seconds_this_run": round(time.time() - started, 1),
        "train_seconds_total": round(sum(h["train_seconds"] for h in result.history), 1),
        "device": str(device), "precision": str(precision).removeprefix("torch."), "fingerprint": stamp,
        "pretrained_weights": weights_provenance(model_cfg["backbone"]) if model_cfg["pretrained"] else None,
    })
    print(f"{args.model}: best epoch {result.best_epoch}, val {params['train']['select_metric']} "
          f"{result.best_metric:.4f} -> {args.out / 'model.pt'}")
