"""Fine-tuning a compressed model, or a control's uncompressed start model: an optional reconstruction
step, then BatchNorm statistics re-estimated, then the training loop of `fit` (same resume and
determinism guarantees) for the recipe's schedule, optionally distilled from the uncompressed
baseline; the epoch is selected on validation, and the start model is kept if no epoch beats it. With
quantization-aware fine-tuning (`qat`), the model trains and is scored on its INT8 grids from BatchNorm
re-estimation on, and leaves with its weights on them."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lwpar.data.loader import Prepared, build_transform, make_loader
from lwpar.training.batchnorm import recalibrate_batchnorm
from lwpar.training import qat as simulation
from lwpar.training.loop import Run, fit, validate

RECALIBRATION_BATCHES = 50


def schedule(train: dict, recipe: dict) -> dict:
    """The `train` block as the fine-tuning recipe changes it."""
    return {**train, "epochs": recipe["epochs"], "lr": recipe["lr"], "warmup_epochs": 0,
            "max_steps_per_epoch": recipe["max_steps_per_epoch"] or train["max_steps_per_epoch"]}


def finetune(model: torch.nn.Module, data: Prepared, input_size, recipe: dict, train: dict, out: Path, run: Run,
             teacher: torch.nn.Module | None = None, stamp: str = "", reconstruct=None,
             qat: dict | None = None) -> tuple[list[dict], dict]:
    """Fine-tune `model` in place; returns the history and the summary's scores (finetune.json).
    `reconstruct`: a step run on the model first (block-wise reconstruction), returning its record.
    `qat`: the INT8 grids to train on (`per_channel`, `seven_bit`, `activations`) and the image
    batches that calibrate the activation ranges (`batches`)."""
    cfg = schedule(train, recipe)
    val_paths, val_labels = data.split("val")
    model.to(run.device)
    reconstructed = reconstruct(model) if reconstruct else None

    def score(m, when):
        return validate(m, val_paths, val_labels, input_size, run, progress=f"scoring val {when}")

    before = (score(model, "before fine-tuning") if recipe["score_before_recalibration"] or not recipe["recalibrate_bn"]
              else None)
    if recipe["recalibrate_bn"]:
        train_paths, train_labels = data.split("train")
        loader = make_loader(train_paths, train_labels, build_transform(input_size, False), cfg["batch_size"],
                             run.workers, shuffle=True, seed=run.seed)
        recalibrate_batchnorm(model, loader, run.device, max_batches=RECALIBRATION_BATCHES, precision=run.precision,
                              progress="BatchNorm re-estimation")
    simulated = None
    if qat:
        layers = simulation.prepare(model, qat["per_channel"], qat["seven_bit"], qat["activations"])
        images = simulation.calibrate(model, qat["batches"], run.device)
        simulated = {"layers": layers, "calibration_images": images,
                     **{k: qat[k] for k in ("per_channel", "seven_bit", "activations")}}
        print(f"quantization-aware: {layers} convolutions on INT8 grids, input ranges from {images} images", flush=True)
    recalibrated = (score(model, "after BatchNorm re-estimation" + (" on the INT8 grids" if qat else ""))
                    if recipe["recalibrate_bn"] or qat else None)
    started = time.time()
    history, best_epoch = [], 0
    if recipe["epochs"] > 0:
        start_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        distill = {"weight": recipe["distill_weight"], "temperature": recipe["distill_temperature"]}
        result = fit(model, data, input_size, cfg, out, run, teacher=teacher, distill=distill, fingerprint=stamp)
        history, best_epoch = result.history, result.best_epoch
        if result.best_metric >= (recalibrated or before)[cfg["select_metric"]]:
            model.load_state_dict(result.state_dict)
        else:  # fine-tuning never beat the starting point on validation: keep the starting point
            model.load_state_dict(start_state)
            best_epoch = 0
    if qat:  # the weights stay where the simulation put them: on their grids
        simulation.strip(model)
    # the kept weights were scored on validation already, in the same precision: no further pass
    after = ({k.removeprefix("val_"): v for k, v in history[best_epoch - 1].items() if k.startswith("val_")}
             if best_epoch else recalibrated or before)
    return history, {"val_before": before, "val_after_bn_recalibration": recalibrated, "val_after": after,
                     "best_epoch": best_epoch, "epochs": recipe["epochs"], "seconds": round(time.time() - started, 1),
                     "device": str(run.device), "precision": str(run.precision).removeprefix("torch."),
                     **({"blockwise": reconstructed} if reconstructed is not None else {}),
                     **({"qat": simulated} if simulated is not None else {})}
