"""Learning-rate schedules by name (`train.schedule`), and which are stepped per update."""

from __future__ import annotations

import math

import torch

from lwpar.core.errors import LwparError


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
