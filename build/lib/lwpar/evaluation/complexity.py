"""Parameters and MACs, counted by torch.utils.flop_counter (MACs = FLOPs / 2)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, input_size, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image, in eval mode."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(batch, 3, *input_size, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() // 2 // batch
