"""Scoring: one evaluator for a PyTorch model and for an ONNX Runtime session."""

from __future__ import annotations

import numpy as np
import torch

from lwpar.data.loader import make_loader


@torch.no_grad()
def predict_torch(model: torch.nn.Module, paths, transform, batch_size: int, workers: int,
                  device: torch.device, precision: torch.dtype = torch.float32) -> np.ndarray:
    """Probabilities of `model` on `paths`; `precision` other than float32 autocasts (validation during
    training runs in the training precision: it only selects epochs, the reported test scores come from
    the float32 ONNX export)."""
    model.eval()
    loader = make_loader(paths, np.zeros((len(paths), 1), np.float32), transform, batch_size, workers)
    probs = []
    with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
        for images, _ in loader:
            # channels_last, as in training: 1.5-1.7x faster on CPU than NCHW input (ALM-Lite0, batch 64)
            logits = model(images.to(device, memory_format=torch.channels_last))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)


def predict_onnx(session, paths, transform, batch_size: int, workers: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    loader = make_loader(paths, np.zeros((len(paths), 1), np.float32), transform, batch_size, workers)
    logits = [session.run(None, {name: images.numpy()})[0] for images, _ in loader]
    return 1 / (1 + np.exp(-np.concatenate(logits)))
