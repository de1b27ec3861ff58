"""The training loop shared by `train` and `finetune`: weighted BCE over deep-supervision outputs,
Adam, step or plateau schedule with warm-up, model selection on validation, and a checkpoint every
epoch from which a killed run resumes to bit-identical weights.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from lwpar import LwparError
from lwpar.data.loader import Prepared, build_transform, make_loader
from lwpar.evaluation import predict_torch
from lwpar.io import write_csv
from lwpar.losses import WeightedBCE
from lwpar.metrics import pedestrian_metrics, summary
from lwpar.models.backbones import folded_frozen_batchnorm, freeze_stages
from lwpar.runtime import load_torch, rng_state, save_torch, seed_everything, set_rng_state

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    best_epoch: int
    best_metric: float
    history: list[dict] = field(default_factory=list)
    state_dict: dict | None = None


def _param_groups(model: torch.nn.Module, lr: float, backbone_mult: float, weight_decay: float):
    backbone = [p for n, p in model.named_parameters() if n.startswith("main_branch.") and p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith("main_branch.") and p.requires_grad]
    return [{"params": backbone, "lr": lr * backbone_mult, "weight_decay": weight_decay},
            {"params": head, "lr": lr, "weight_decay": weight_decay}]


# Schedules stepped after every update past the warm-up; the others once per epoch past it.
PER_UPDATE_SCHEDULES = ("cosine_steps",)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int, warmup_steps: int):
    """The rate schedule `cfg["schedule"]` names, stepped as `PER_UPDATE_SCHEDULES` says (`plateau` with
    the validation score)."""
    if cfg["schedule"] == "cosine_steps":
        # the last update runs at almost 0, which a per-epoch cosine only reaches after many epochs
        # (2 epochs: the second at half the rate)
        annealed = max(cfg["epochs"] * steps_per_epoch - warmup_steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, annealed) / annealed)))
    if cfg["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg["step_size"], cfg["gamma"])
    if cfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(cfg["epochs"] - cfg["warmup_epochs"], 1))
    if cfg["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", factor=cfg["gamma"],
                                                          patience=cfg["patience"])
    raise LwparError(f"train.schedule: unknown schedule {cfg['schedule']!r}")


def fit(model: torch.nn.Module, data: Prepared, input_size, cfg: dict, out_dir: Path, device: torch.device,
        seed: int, workers: int, precision: torch.dtype = torch.float32, eval_batch: int = 128, threshold: float = 0.5,
        teacher: torch.nn.Module | None = None, distill: dict | None = None, fingerprint: str = "",
        frozen_stages: int = 0) -> TrainResult:
    """Train `model` in place on `data`; checkpoints go to `out_dir/checkpoint.pt`. The backbone's first
    `frozen_stages` stages are not trained (see `freeze_stages`). With `cfg["ema_decay"]` the weights'
    moving average is what validation scores and what the result keeps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    frozen = freeze_stages(model.main_branch, frozen_stages)
    model.to(device, memory_format=torch.channels_last)  # about 20 % faster convolutions on CPU and GPU
    ema = _moving_average(model, cfg["ema_decay"])
    scored = model if ema is None else ema.module
    criterion = WeightedBCE(data.positive_rates(), cfg["loss_weighting"]).to(device)
    optimizer = torch.optim.Adam(_param_groups(model, cfg["lr"], cfg["backbone_lr_mult"], cfg["weight_decay"]))
    train_paths, train_labels = data.split("train")
    val_paths, val_labels = data.split("val")
    if not train_paths or not val_paths:
        raise LwparError(f"{data.folder}: the train and val splits must both be non-empty")
    steps_per_epoch = len(train_paths) // cfg["batch_size"] or 1
    if cfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, cfg["max_steps_per_epoch"])
    warmup_steps = cfg["warmup_epochs"] * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, warmup_steps)
    per_step = cfg["schedule"] in PER_UPDATE_SCHEDULES
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    # a loss scale only for float16, whose exponent range underflows small gradients
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16 and device.type == "cuda")

    augment = build_transform(input_size, True, **cfg["augment"])
    plain = build_transform(input_size, False)

    start_epoch, history, best = 0, [], {"epoch": -1, "metric": -math.inf, "state": None}
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_torch(checkpoint_path, "training checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        print(f"resuming from {checkpoint_path} after epoch {state['epoch'] + 1}")

    with ExitStack() as folded:
        # the frozen stages' convolutions and BatchNorms run as one (same function, half the time on CPU)
        folded.enter_context(folded_frozen_batchnorm(model.main_branch, frozen))
        if ema is not None:
            folded.enter_context(folded_frozen_batchnorm(scored.main_branch, _counterparts(model, scored, frozen)))
        for epoch in range(start_epoch, cfg["epochs"]):
            model.train()
            for module in frozen:  # their BatchNorms keep the pretrained statistics
                module.eval()
            loader = make_loader(train_paths, train_labels, augment, cfg["batch_size"], workers, shuffle=True,
                                 seed=seed * 1000 + epoch, drop_last=len(train_paths) >= cfg["batch_size"])
            started, seen, total_loss = time.time(), 0, 0.0
            last_lr = optimizer.param_groups[-1]["lr"]
            bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False,
                       disable=None)
            for step, (images, targets) in enumerate(bar):
                if step >= steps_per_epoch:
                    break
                global_step = epoch * steps_per_epoch + step
                if global_step < warmup_steps:
                    for group, base in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = base * (global_step + 1) / warmup_steps
                images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
                    outputs = model(images)
                    loss = criterion(outputs, targets)
                    if teacher is not None and distill:
                        loss = _distilled(loss, outputs, teacher, images, distill)
                if not torch.isfinite(loss):
                    raise LwparError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: training diverged")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                last_lr = optimizer.param_groups[-1]["lr"]     # the rate this update ran at (heads' group)
                if per_step and global_step >= warmup_steps:
                    scheduler.step()
                seen += len(images)
                total_loss += loss.item() * len(images)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.time() - started):.0f}")
            train_seconds = time.time() - started
            probs = predict_torch(scored, val_paths, plain, eval_batch, workers, device, precision)
            metrics = summary(pedestrian_metrics(val_labels, probs, threshold))
            score = metrics[cfg["select_metric"]]
            if cfg["schedule"] == "plateau":
                scheduler.step(score)
            elif not per_step and epoch + 1 > cfg["warmup_epochs"]:
                scheduler.step()
            record = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "train_seconds": round(train_seconds, 1),
                      "images_per_second": round(seen / train_seconds, 1),
                      "lr": last_lr, **{f"val_{k}": v for k, v in metrics.items()}}
            history.append(record)
            if score > best["metric"]:
                best = {"epoch": epoch + 1, "metric": score,
                        "state": {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}}
            print(f"epoch {epoch + 1}: loss {record['loss']:.4f}, val mA {metrics['mA']:.4f}, "
                  f"{record['images_per_second']} img/s")
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                        "epoch": epoch, "history": history, "best": best, "fingerprint": fingerprint,
                        **({"ema": ema.state_dict()} if ema is not None else {})}, checkpoint_path)
    return TrainResult(best["epoch"], best["metric"], history, best["state"])


def _moving_average(model: torch.nn.Module, decay: float):
    """An exponential moving average of the weights and BatchNorm statistics, updated after every step
    (Polyak averaging, as timm's ModelEmaV2), or None for `decay` 0. Averaging the last few hundred
    updates smooths the noise of a short schedule."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _counterparts(model: torch.nn.Module, copy: torch.nn.Module, modules: list[torch.nn.Module]):
    """The modules of `copy` (a deep copy of `model`) that stand where `modules` stand in `model`."""
    names = {id(m): name for name, m in model.named_modules()}
    return [copy.get_submodule(names[id(m)]) for m in modules]


def _distilled(loss, outputs, teacher, images, distill):
    """Knowledge distillation on the max-voted logits: temperature-scaled sigmoid cross-entropy."""
    import torch.nn.functional as F

    with torch.no_grad():
        teacher.eval()
        soft = torch.sigmoid(teacher(images) / distill["temperature"])
    student = torch.stack(outputs).amax(0) if isinstance(outputs, tuple) else outputs
    kd = F.binary_cross_entropy_with_logits(student / distill["temperature"], soft) * distill["temperature"] ** 2
    return (1 - distill["weight"]) * loss + distill["weight"] * kd * soft.shape[1]


def write_history(history: list[dict], path: Path) -> None:
    write_csv(path, pd.DataFrame(history))


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader, device: torch.device, max_batches: int = 50,
                          precision: torch.dtype = torch.float32) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on training batches: the
    layers after a factorized or pruned one see different statistics than they were trained on.
    Forward passes only, in `precision` (training's): no autograd graph is kept."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
        for step, (images, _) in enumerate(loader):
            if step >= max_batches:
                break
            model(images.to(device, memory_format=torch.channels_last))
    model.eval()
    for m, (momentum, _) in zip(norms, saved):
        m.momentum = momentum
