"""Calibration statistics: per factorizable layer, the second moment S = E[x x^T] of its unfolded input
(a k x k convolution's input patch, C_in * kh * kw wide, as F.unfold lays it out), accumulated in one
forward pass over a seeded subset of the training split (never validation or test images), and a
second one over held-out training images that scores each factorization's output error. Stored once
per start model and calibration set (`calibration.pt`), shared by every variant that fits in it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lwpar.compress.decompose.factorize import in_head, published_heads
from lwpar.compress.decompose.metric import InputMetric
from lwpar.core.errors import LwparError
from lwpar.core.io import sha256_file
from lwpar.core.modelfile import load_torch, save_torch
from lwpar.core.progress import Progress

FORMAT = "lwpar-calibration/1"


def unfolded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as the rows its kernel multiplies: (samples, C_in * kh * kw)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if type(module).__name__ == "Conv2dSame":  # timm's dynamic 'same' padding, applied as it does
        from timm.layers import pad_same

        x, padding = pad_same(x, module.kernel_size, module.stride, module.dilation), 0
    elif module.padding_mode != "zeros":
        x, padding = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), 0
    else:
        padding = module.padding
    patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


class _Accumulator:
    """X^T X and the sample count of every named layer's unfolded inputs, from forward hooks."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = dict.fromkeys(names, 0)
        modules = dict(model.named_modules())
        self.hooks = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name):
        def hook(module, inputs, output):
            rows = unfolded(module, inputs[0].detach()).double()
            gram = rows.T @ rows
            self.sums[name] = gram if name not in self.sums else self.sums[name] + gram
            self.counts[name] += rows.shape[0]
        return hook

    def moments(self) -> dict[str, torch.Tensor]:
        missing = [name for name, count in self.counts.items() if not count]
        if missing:
            raise LwparError(f"calibration: layer {missing[0]} never ran ({len(missing)} layers): not part of the forward pass")
        return {name: (total / self.counts[name]).float().cpu() for name, total in self.sums.items()}

    def close(self):
        for hook in self.hooks:
            hook.remove()


@torch.no_grad()
def second_moments(model: nn.Module, names: list[str], batches, device: torch.device, total: int | None = None,
                   what: str = "calibration") -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Per named layer, E[x x^T] of its unfolded input over `batches` of images, and the number of
    input rows it averages (images times output positions)."""
    model.eval().to(device)
    accumulator = _Accumulator(model, names)
    try:
        with ExitStack() as stack:
            if any(in_head(n) for n in names):
                stack.enter_context(published_heads(model))
            progress = stack.enter_context(Progress(total, what, unit="batch", items="images"))
            for images in batches:
                model(images.to(device))
                progress.update(items=len(images))
        return accumulator.moments(), dict(accumulator.counts)
    finally:
        accumulator.close()


def calibrate(model: nn.Module, model_file: Path, names: list[str], fit_batches, heldout_batches, device: torch.device,
              images: tuple[int, int], batch_size: int) -> dict:
    """The calibration artifact's content: per layer the second moment on the fitting images and on
    the held-out ones, their row counts, and what it was measured on and what it cost."""
    started = time.time()
    fitted, counts = second_moments(model, names, fit_batches, device, -(-images[0] // batch_size), "calibration")
    heldout, heldout_counts = second_moments(model, names, heldout_batches, device, -(-images[1] // batch_size),
                                             "held-out calibration")
    layers = {name: {"second_moment": fitted[name], "rows": counts[name], "heldout_second_moment": heldout[name],
                     "heldout_rows": heldout_counts[name]} for name in names}
    return {"format": FORMAT, "model_sha256": sha256_file(model_file), "images": images[0],
            "heldout_images": images[1], "seconds": round(time.time() - started, 1),
            "bytes": int(sum(4 * (v["second_moment"].numel() + v["heldout_second_moment"].numel())
                             for v in layers.values())), "layers": layers}


def save(path: Path, statistics: dict) -> None:
    save_torch(statistics, path)


class Statistics:
    """A calibration artifact read back, checked against the start model it must describe."""

    def __init__(self, path: Path, model_file: Path, ridge: float):
        self.path, self.ridge = Path(path), ridge
        blob = load_torch(path, "calibration statistics")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise LwparError(f"{path}: not lwpar calibration statistics ({FORMAT})")
        if blob["model_sha256"] != sha256_file(model_file):
            raise LwparError(f"{path}: measured on another model than {model_file}: run `lwpar calibrate` again")
        self.blob = blob

    def layer(self, name: str) -> dict:
        try:
            return self.blob["layers"][name]
        except KeyError:
            raise LwparError(f"{self.path}: no statistics of layer {name} (calibrated for other layers)") from None

    def metric(self, name: str, shape: dict, rank: int) -> InputMetric:
        """The layer's fitting metric; refused when fewer inputs were seen than the rank to fit."""
        entry = self.layer(name)
        if entry["rows"] < rank:
            raise LwparError(f"{self.path}: layer {name}: {entry['rows']} calibration inputs cannot fit rank {rank} "
                             f"(raise calibration.images)")
        return InputMetric(entry["second_moment"].double().numpy(), shape, self.ridge)

    def heldout(self, name: str) -> np.ndarray:
        return self.layer(name)["heldout_second_moment"].double().numpy()


def layers_to_calibrate(model: nn.Module, selections: list[str], earlier: list[dict]) -> list[str]:
    """Every layer one of the `selections` (`recipes.calibration_selection` words) may factorize or
    refit in `model`: a decomposition's kinds, first convolution and heads as the word says, and for
    `prune` every dense layer outside the attribute heads whose inputs a pruning may remove (every one
    but the first convolution)."""
    from lwpar.compress.decompose.factorize import factorized_layers, select_layers
    from lwpar.compress.recipes import parse_calibration_selection

    names = set()
    for word in selections:
        try:
            selection = parse_calibration_selection(word)
        except ValueError as error:
            raise LwparError(f"--select {error}") from None
        if selection is None:
            names.update(select_layers(model, ["kxk", "pointwise", "linear"], min_channels=1))
        else:
            names.update(select_layers(model, **selection, factorized=factorized_layers(earlier)))
    order = [name for name, _ in model.named_modules()]
    return sorted(names, key=order.index)


def calibration_images(data, images: int, heldout: int, seed: int) -> tuple[list, list]:
    """Two disjoint seeded subsets of the training split: the fitting images and the held-out ones."""
    paths, _ = data.split("train")
    if images + heldout > len(paths):
        raise LwparError(f"calibration.images + calibration.heldout_images = {images + heldout}: more than the "
                         f"{len(paths)} images of the training split")
    others = {str(p) for split in ("val", "test") for p in data.split(split)[0]}
    order = np.random.default_rng(seed).permutation(len(paths))
    chosen = [paths[i] for i in order[:images + heldout]]
    if any(str(p) in others for p in chosen):  # a prepared table listing one image in two splits
        raise LwparError(f"{data.folder}: an image of the training split is also in val or test: calibration refused")
    return chosen[:images], chosen[images:]


def image_batches(paths: list, input_size, batch_size: int, workers: int):
    """The images at `paths`, evaluation-transformed, in order, in batches of `batch_size`."""
    from lwpar.data.loader import build_transform, make_loader

    loader = make_loader(paths, np.zeros((len(paths), 1), np.float32), build_transform(input_size, False), batch_size,
                         workers)
    return (images for images, _ in loader)


def fitting_images(data, params: dict, input_size, images: int | None = None, heldout: int = 0) -> tuple:
    """The seeded training images a step fits on (`calibration.images` of them unless `images` says),
    and `heldout` others, as two tensors (N x 3 x H x W, in memory)."""
    cfg = params["calibration"]
    fit_paths, heldout_paths = calibration_images(data, cfg["images"] if images is None else images, heldout,
                                                  params["seed"])

    def load(paths):
        batches = list(image_batches(paths, input_size, cfg["batch_size"], params["runtime"]["workers"]))
        return torch.cat(batches) if batches else torch.empty(0, 3, *input_size)
    return load(fit_paths), load(heldout_paths)
