"""Attribute probabilities and decisions from an exported lwpar artifact, with ONNX Runtime alone
(no torch): the preprocessing and the attribute names come from the artifact's metadata.

    from lwpar import Predictor
    predictor = Predictor("results/peta/alm_r50h/lwalm+int8")
    result = predictor.predict(["person.jpg"])
    result.probabilities[0], result.decisions[0]     # one row per image, in result.attributes order
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwpar import LwparError, preprocess
from lwpar.artifact import onnx_session, read_metadata

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Prediction:
    attributes: list[str]
    probabilities: np.ndarray   # (images, attributes), float32
    decisions: np.ndarray       # (images, attributes), bool: probability >= threshold
    thresholds: np.ndarray      # (attributes,)


def artifact_file(path: str | Path) -> Path:
    """The ONNX file of an artifact given as the file or as its folder (holding model.onnx)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise LwparError(f"{path}: no ONNX model (give a model.onnx or the artifact folder holding one)")
    return path


class Predictor:
    """Runs one artifact. `threshold`: one decision threshold for every attribute (0.5 as the PAR
    literature scores); `threads`: ONNX Runtime intra-op threads (0: all cores)."""

    def __init__(self, model: str | Path, threads: int = 0, threshold: float = 0.5, batch_size: int = 32):
        self.path = artifact_file(model)
        self.session = onnx_session(self.path, threads)
        self.metadata = read_metadata(self.path, self.session)
        self.attributes: list[str] = list(self.metadata["attributes"])
        self.spec: dict = self.metadata["preprocessing"]
        self.thresholds = np.full(len(self.attributes), threshold, dtype=np.float32)
        self.batch_size = batch_size
        self._input = self.session.get_inputs()[0].name

    def predict(self, images) -> Prediction:
        """`images`: paths or PIL images (one or a list). Unreadable files raise LwparError naming them."""
        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        arrays = [self.prepare(image) for image in images]
        return self.predict_arrays(np.stack(arrays) if arrays else np.zeros((0, 3, *self.spec["input_size"]), np.float32))

    def prepare(self, image) -> np.ndarray:
        """One image (a path or a PIL image) as the network's input."""
        image = preprocess.open_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        return preprocess.to_input(image, self.spec)

    def predict_arrays(self, batch: np.ndarray) -> Prediction:
        """Preprocessed inputs (N, 3, H, W) float32 to probabilities, batch by batch."""
        logits = [self.session.run(None, {self._input: batch[i:i + self.batch_size]})[0]
                  for i in range(0, len(batch), self.batch_size)]
        logits = np.concatenate(logits) if logits else np.zeros((0, len(self.attributes)), np.float32)
        probabilities = 1 / (1 + np.exp(-logits))  # as `lwpar evaluate` scores the same artifact
        return Prediction(self.attributes, probabilities, probabilities >= self.thresholds, self.thresholds)


def expand_inputs(inputs: list[str | Path]) -> list[tuple[Path, bool]]:
    """Image files from files and folders (recursively, sorted), each with whether it was named
    explicitly (an unreadable named file is an error; one found in a folder is skipped)."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise LwparError(f"{item}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            found += [(p, False) for p in images]
        elif item.is_file():
            found.append((item, True))
        else:
            raise LwparError(f"{item}: no such file or folder")
    return found
