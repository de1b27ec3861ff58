"""The model's input without torch: decode, resize, scale and normalize.

One implementation for every consumer: the data loader (training augments the resized image, and
evaluation uses it as is) and `lwpar predict` / `lwpar.Predictor`, which run on ONNX Runtime alone.
An exported artifact records `describe(input_size)` in its metadata, and prediction reads it back
instead of retyping it. Resizing is PIL's bilinear filter, which widens its support when it
shrinks (antialiasing); torchvision's tensor kernel rounds differently (one level on about 1 % of
pixel values), so there is only this one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lwpar.core.errors import LwparError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT = "lwpar-preprocessing/1"


def describe(input_size) -> dict:
    """What an artifact's input expects, as stored in its metadata."""
    height, width = (int(v) for v in input_size)
    return {"format": FORMAT, "input_size": [height, width], "color": "RGB", "resize": "PIL bilinear",
            "scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "layout": "NCHW"}


def open_rgb(path: str | Path) -> Image.Image:
    """The decoded image in RGB; a missing or undecodable file is an LwparError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise LwparError(f"{path}: image not found") from None
    except Exception as exc:  # PIL raises many types for damaged files
        raise LwparError(f"{path}: cannot decode image ({type(exc).__name__})") from None


def resize(image: Image.Image, input_size) -> Image.Image:
    height, width = input_size
    return image.resize((int(width), int(height)), Image.BILINEAR)


def normalize(image: Image.Image, spec: dict | None = None) -> np.ndarray:
    """A resized RGB image as the float32 CHW array the network reads."""
    spec = spec or describe(image.size[::-1])
    array = np.asarray(image, dtype=np.float32) * np.float32(spec["scale"])
    array = (array - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def to_input(image: Image.Image, spec: dict) -> np.ndarray:
    """Any RGB image as the network's input under `spec` (resize, then normalize)."""
    if spec.get("format") != FORMAT:
        raise LwparError(f"preprocessing {spec.get('format')!r} is not {FORMAT!r} (an artifact from another lwpar?)")
    return normalize(resize(image, spec["input_size"]), spec)
