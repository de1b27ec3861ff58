"""The training loop shared by `train` and `finetune`, split as torchvision's reference scripts split
theirs: `train_one_epoch` (weighted BCE over the deep-supervision outputs, optional distillation,
warm-up, a progress line in the log), `validate` (the PAR metrics on the validation split) and
`fit`, which builds the optimizer and schedule, resumes from the checkpoint and selects the epoch on
validation. A checkpoint is written every epoch; a killed run resumes to bit-identical weights.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lwpar.core.errors import LwparError
from lwpar.core.progress import Progress
from lwpar.core.runtime import seed_everything
from lwpar.data.loader import Prepared, build_transform, make_loader
from lwpar.evaluation.metrics import pedestrian_metrics, summary
from lwpar.evaluation.scoring import torch_probabilities
from lwpar.models.backbones import folded_frozen_batchnorm, freeze_stages
from lwpar.training.checkpoint import Checkpoint
from lwpar.training.losses import WeightedBCE
from lwpar.training.schedules import PER_UPDATE_SCHEDULES, build_scheduler


@dataclass(frozen=True)
class Run:
    """Where and how a run executes, not what it learns: device, autocast precision, loader workers,
    seed, and how validation scores (batch size, decision threshold)."""

    device: torch.device
    precision: torch.dtype = torch.float32
    workers: int = 0
    seed: int = 0
    eval_batch: int = 128
    threshold: float = 0.5


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


@dataclass
class _Optimization:
    """What one update needs besides the model and the batch."""

    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    ema: object | None
    warmup_steps: int
    per_step: bool
    base_lrs: list[float]
    teacher: torch.nn.Module | None = None
    distill: dict | None = None


def train_one_epoch(model: torch.nn.Module, opt: _Optimization, loader, steps: int, epoch: int, epochs: int,
                    run: Run, frozen: list[torch.nn.Module]) -> dict:
    """One epoch of at most `steps` updates; returns its loss, images per second, seconds and last rate."""
    model.train()
    for module in frozen:  # their BatchNorms keep the pretrained statistics
        module.eval()
    started, seen, total_loss = time.time(), 0, 0.0
    last_lr = opt.optimizer.param_groups[-1]["lr"]
    with Progress(steps, f"epoch {epoch + 1}/{epochs}", items="images") as progress:
        for step, (images, targets) in enumerate(loader):
            if step >= steps:
                break
            global_step = epoch * steps + step
            if global_step < opt.warmup_steps:
                for group, base in zip(opt.optimizer.param_groups, opt.base_lrs):
                    group["lr"] = base * (global_step + 1) / opt.warmup_steps
            images = images.to(run.device, non_blocking=True, memory_format=torch.channels_last)
            targets = targets.to(run.device, non_blocking=True)
            with torch.autocast(run.device.type, dtype=run.precision, enabled=run.precision != torch.float32):
                outputs = model(images)
                loss = opt.criterion(outputs, targets)
                if opt.teacher is not None and opt.distill:
                    loss = _distilled(loss, outputs, opt.teacher, images, opt.distill)
            if not torch.isfinite(loss):
                raise LwparError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: training diverged")
            opt.optimizer.zero_grad(set_to_none=True)
            opt.scaler.scale(loss).backward()
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
            if opt.ema is not None:
                opt.ema.update_parameters(model)
            last_lr = opt.optimizer.param_groups[-1]["lr"]     # the rate this update ran at (heads' group)
            if opt.per_step and global_step >= opt.warmup_steps:
                opt.scheduler.step()
            seen += len(images)
            total_loss += loss.item() * len(images)
            progress.update(items=len(images), note=f"loss {loss.item():.3f}")
    seconds = time.time() - started
    return {"loss": total_loss / max(seen, 1), "train_seconds": round(seconds, 1),
            "images_per_second": round(seen / seconds, 1), "lr": last_lr}


def validate(model: torch.nn.Module, paths, labels, input_size, run: Run, progress: str | None = None) -> dict:
    """The PAR metrics of `model` on a split, in the run's precision (it only selects epochs: the
    reported test scores come from the float32 ONNX export)."""
    probs = torch_probabilities(model, paths, build_transform(input_size, False), run.eval_batch, run.workers,
                                run.device, run.precision, progress)
    return summary(pedestrian_metrics(labels, probs, run.threshold))


def fit(model: torch.nn.Module, data: Prepared, input_size, cfg: dict, out_dir: Path, run: Run,
        teacher: torch.nn.Module | None = None, distill: dict | None = None, fingerprint: str = "",
        frozen_stages: int = 0) -> TrainResult:
    """Train `model` in place on `data` for `cfg` (the params' `train` block); checkpoints go to
    `out_dir/checkpoint.pt`. The backbone's first `frozen_stages` stages are not trained (see
    `freeze_stages`). With `cfg["ema_decay"]` the weights' moving average is what validation scores
    and what the result keeps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(run.seed)
    frozen = freeze_stages(model.main_branch, frozen_stages)
    model.to(run.device, memory_format=torch.channels_last)  # about 20 % faster convolutions on CPU and GPU
    train_paths, train_labels = data.split("train")
    val_paths, val_labels = data.split("val")
    if not train_paths or not val_paths:
        raise LwparError(f"{data.folder}: the train and val splits must both be non-empty")
    steps = len(train_paths) // cfg["batch_size"] or 1
    if cfg["max_steps_per_epoch"]:
        steps = min(steps, cfg["max_steps_per_epoch"])
    opt = _optimization(model, data, cfg, steps, run, teacher, distill)
    scored = model if opt.ema is None else opt.ema.module
    augment = build_transform(input_size, True, **cfg["augment"])

    checkpoint = Checkpoint(out_dir, fingerprint)
    start_epoch, history, best = 0, [], {"epoch": -1, "metric": -math.inf, "state": None}
    state = checkpoint.restore(model, opt.optimizer, opt.scheduler, opt.scaler, opt.ema)
    if state is not None:
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        print(f"resuming from {checkpoint.path} after epoch {state['epoch'] + 1}", flush=True)

    with ExitStack() as folded:
        # the frozen stages' convolutions and BatchNorms run as one (same function, half the time on CPU)
        folded.enter_context(folded_frozen_batchnorm(model.main_branch, frozen))
        if opt.ema is not None:
            folded.enter_context(folded_frozen_batchnorm(scored.main_branch, _counterparts(model, scored, frozen)))
        for epoch in range(start_epoch, cfg["epochs"]):
            loader = make_loader(train_paths, train_labels, augment, cfg["batch_size"], run.workers, shuffle=True,
                                 seed=run.seed * 1000 + epoch, drop_last=len(train_paths) >= cfg["batch_size"])
            trained = train_one_epoch(model, opt, loader, steps, epoch, cfg["epochs"], run, frozen)
            metrics = validate(scored, val_paths, val_labels, input_size, run, f"validation after epoch {epoch + 1}")
            score = metrics[cfg["select_metric"]]
            if cfg["schedule"] == "plateau":
                opt.scheduler.step(score)
            elif not opt.per_step and epoch + 1 > cfg["warmup_epochs"]:
                opt.scheduler.step()
            record = {"epoch": epoch + 1, **trained, **{f"val_{k}": v for k, v in metrics.items()}}
            history.append(record)
            if score > best["metric"]:
                best = {"epoch": epoch + 1, "metric": score,
                        "state": {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}}
            print(f"epoch {epoch + 1}: loss {record['loss']:.4f}, val mA {metrics['mA']:.4f}, "
                  f"{record['images_per_second']} img/s", flush=True)
            checkpoint.save(epoch, model, opt.optimizer, opt.scheduler, opt.scaler, opt.ema, history, best)
    return TrainResult(best["epoch"], best["metric"], history, best["state"])


def _optimization(model, data: Prepared, cfg: dict, steps: int, run: Run, teacher, distill) -> _Optimization:
    optimizer = torch.optim.Adam(_param_groups(model, cfg["lr"], cfg["backbone_lr_mult"], cfg["weight_decay"]))
    warmup_steps = cfg["warmup_epochs"] * steps
    return _Optimization(
        criterion=WeightedBCE(data.positive_rates(), cfg["loss_weighting"]).to(run.device),
        optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, steps, warmup_steps),
        # a loss scale only for float16, whose exponent range underflows small gradients
        scaler=torch.amp.GradScaler(run.device.type, enabled=run.precision == torch.float16 and run.device.type == "cuda"),
        ema=_moving_average(model, cfg["ema_decay"]), warmup_steps=warmup_steps,
        per_step=cfg["schedule"] in PER_UPDATE_SCHEDULES, base_lrs=[g["lr"] for g in optimizer.param_groups],
        teacher=teacher, distill=distill)


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
    with torch.no_grad():
        teacher.eval()
        soft = torch.sigmoid(teacher(images) / distill["temperature"])
    student = torch.stack(outputs).amax(0) if isinstance(outputs, tuple) else outputs
    kd = F.binary_cross_entropy_with_logits(student / distill["temperature"], soft) * distill["temperature"] ** 2
    return (1 - distill["weight"]) * loss + distill["weight"] * kd * soft.shape[1]
