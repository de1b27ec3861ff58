"""BatchNorm statistics re-estimated on training batches, after a layer before them changed."""

from __future__ import annotations

from itertools import islice

import torch

from lwpar.core.progress import counted


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader, device: torch.device, max_batches: int = 50,
                          precision: torch.dtype = torch.float32, progress: str | None = None) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on training batches: the
    layers after a factorized or pruned one see different statistics than they were trained on.
    Forward passes only, in `precision` (training's): no autograd graph is kept. `progress`: the
    log's name for the pass (none: silent)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
        for images, _ in counted(islice(loader, max_batches), progress, min(max_batches, len(loader))):
            model(images.to(device, memory_format=torch.channels_last))
    model.eval()
    for m, (momentum, _) in zip(norms, saved):
        m.momentum = momentum
