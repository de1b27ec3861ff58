"""Weighted binary cross-entropy for imbalanced attributes, summed over deep-supervision outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attribute_weights(positive_rates, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) weights per attribute.

    rethinking: DeepMAR / Rethinking of PAR, positives exp(1 - p), negatives exp(p);
    alm_positive_only: the ALM code's variant, positives exp(1 - p), negatives 1;
    none: all 1.
    """
    p = torch.as_tensor(positive_rates, dtype=torch.float32)
    ones = torch.ones_like(p)
    if weighting == "rethinking":
        return torch.exp(1 - p), torch.exp(p)
    if weighting == "alm_positive_only":
        return torch.exp(1 - p), ones
    if weighting == "none":
        return ones, ones
    raise ValueError(f"unknown loss weighting {weighting!r}")


class WeightedBCE(torch.nn.Module):
    def __init__(self, positive_rates, weighting: str = "rethinking"):
        super().__init__()
        pos, neg = attribute_weights(positive_rates, weighting)
        self.register_buffer("pos_weight", pos)
        self.register_buffer("neg_weight", neg)

    def forward(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        weight = targets * self.pos_weight + (1 - targets) * self.neg_weight
        # Summed over attributes, averaged over the batch, as in Rethinking of PAR.
        return sum((F.binary_cross_entropy_with_logits(o.float(), targets, reduction="none") * weight).sum(1).mean()
                   for o in outputs)
