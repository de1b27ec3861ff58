"""Attribute probabilities and decisions from an exported lwpar artifact, with ONNX Runtime or OpenVINO
alone (no torch): the preprocessing and the attribute names come from the artifact's metadata.

    from lwpar import Predictor
    predictor = Predictor("results/peta/alm_r50h/lwalm+int8")
    result = predictor.predict(["person.jpg"])
    result.probabilities[0], result.decisions[0]     # one row per image, in result.attributes order
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwpar.core.errors import LwparError
from lwpar.data import preprocess
from lwpar.deploy.artifact import THRESHOLDS_FILE, read_metadata, read_thresholds
from lwpar.deploy.runtimes import open_session

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Prediction:
    attributes: list[str]
    probabilities: np.ndarray   # (images, attributes), float32
    decisions: np.ndarray       # (images, attributes), bool: probability > threshold, as evaluation decides
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
    literature scores); None takes the per-attribute thresholds tuned on validation from the
    artifact's thresholds.json (beside its model.onnx) when it has one, else 0.5. `threads`: the
    runtime's threads (0: all cores); `runtime`: `onnxruntime` or `openvino` (`precision`: what its CPU
    plugin runs FP32 layers in)."""

    def __init__(self, model: str | Path, threads: int = 0, threshold: float | None = None, batch_size: int = 32,
                 runtime: str = "onnxruntime", precision: str = "f32"):
        self.path = artifact_file(model)
        self.runtime = runtime
        self.session = open_session(self.path, threads, runtime, precision)
        self.metadata = read_metadata(self.path, self.session)
        self.attributes: list[str] = list(self.metadata["attributes"])
        self.spec: dict = self.metadata["preprocessing"]
        tuned = self.path.with_name(THRESHOLDS_FILE)
        if threshold is None and tuned.is_file():
            self.thresholds = np.array(read_thresholds(tuned, self.attributes), dtype=np.float64)
            self.threshold_source = str(tuned)
        else:
            self.thresholds = np.full(len(self.attributes), 0.5 if threshold is None else threshold, dtype=np.float64)
            self.threshold_source = "tuned thresholds absent: 0.5" if threshold is None else f"--threshold {threshold}"
        self.batch_size = batch_size
        self._input = self.session.get_inputs()[0].name

    def predict(self, images) -> Prediction:
        """`images`: paths or PIL images (one or a list). Unreadable files raise LwparError naming them."""
        if isinstance(images, (str, Path)) or hasattr(images, "convert"):
            images = [images]
        arrays = [self.prepare(image) for image in images]
        return self.predict_arrays(np.stack(arrays) if arrays else np.zeros((0, 3, *self.spec["input_size"]), np.float32))

    def prepare(self, image) -> np.ndarray:
        """One image (a path or a PIL image, e.g. a video frame or a person crop) as the network's input."""
        image = preprocess.open_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        return preprocess.to_input(image, self.spec)

    def predict_arrays(self, batch: np.ndarray) -> Prediction:
        """Preprocessed inputs (N, 3, H, W) float32 to probabilities, batch by batch."""
        logits = [self.session.run(None, {self._input: batch[i:i + self.batch_size]})[0]
                  for i in range(0, len(batch), self.batch_size)]
        logits = np.concatenate(logits) if logits else np.zeros((0, len(self.attributes)), np.float32)
        probabilities = 1 / (1 + np.exp(-logits))  # as `lwpar evaluate` scores the same artifact
        return Prediction(self.attributes, probabilities, probabilities > self.thresholds, self.thresholds)


def expand_inputs(inputs: list[str | Path]) -> list[tuple[Path, bool]]:
    """Image and video files from files and folders (folders: their images, recursively, sorted),
    each with whether it was named explicitly (an unreadable named file is an error; one found in a
    folder is skipped)."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise LwparError(f"{item}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; "
                                 f"name videos one by one)")
            found += [(p, False) for p in images]
        elif item.is_file():
            found.append((item, True))
        else:
            raise LwparError(f"{item}: no such file or folder")
    return found


def is_video(path: Path) -> bool:
    from lwpar.deploy.video import VIDEO_SUFFIXES

    return path.suffix.lower() in VIDEO_SUFFIXES


def read_inputs(items: list[tuple[Path, bool]], every: int = 1, boxes: Path | None = None):
    """(label, named, load) per image to score, in order: `load()` gives the RGB image or raises
    LwparError. A video gives every `every`-th frame, or with `boxes` (a CSV for the one video among
    the inputs) the person crops it lists; its frames are decoded as they are consumed."""
    from lwpar.deploy import video

    videos = [p for p, _ in items if is_video(p)]
    if boxes is not None and len(videos) != 1:
        raise LwparError(f"{boxes}: boxes apply to one video, and the inputs have {len(videos)}")
    by_frame = video.read_boxes(boxes) if boxes is not None else None
    for path, named in items:
        if is_video(path):
            for label, image in video.images(path, every, by_frame, boxes):
                yield label, True, (lambda image=image: image)
        else:
            yield str(path), named, (lambda path=path: preprocess.open_rgb(path))


def count_inputs(items: list[tuple[Path, bool]], every: int = 1, boxes: Path | None = None) -> int | None:
    """How many images `read_inputs` gives (for a progress bar): None when a video's length is unknown."""
    from lwpar.deploy import video

    total = 0
    for path, _ in items:
        if not is_video(path):
            total += 1
        elif boxes is not None:
            total += sum(len(listed) for listed in video.read_boxes(boxes).values())
        else:
            frames = video.frame_count(path)
            if not frames:
                return None
            total += -(-frames // every)
    return total


def predict_inputs(predictor: Predictor, inputs: list[str], every: int = 1, boxes: Path | None = None,
                   batch: int = 32, log=None) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    """Every image of `inputs` (files, folders, videos) scored in batches: (label, probabilities,
    decisions) per image, and the labels of unreadable images found in folders (each reported on `log`
    and skipped; an unreadable image named on the command line is an error)."""
    from lwpar.core.progress import Progress

    log = log or sys.stderr
    items = expand_inputs(inputs)
    rows, skipped, pending = [], [], []

    def flush():
        if pending:
            result = predictor.predict_arrays(np.stack([array for _, array in pending]))
            rows.extend(zip([label for label, _ in pending], result.probabilities, result.decisions))
            pending.clear()

    with Progress(count_inputs(items, every, boxes), "predict", unit="image", stream=log) as progress:
        for label, named, load in read_inputs(items, every, boxes):
            try:
                pending.append((label, predictor.prepare(load())))
            except LwparError as exc:
                if named:
                    raise
                skipped.append(label)
                print(f"lwpar predict: skipped {exc}", file=log)
            if len(pending) == batch:
                flush()
            progress.update()
        flush()
    return rows, skipped


def format_predictions(rows, attributes: list[str], fmt: str) -> str:
    """CSV (image, attribute, probability, positive: one line per image and attribute) or JSON lines
    (one object per image)."""
    import csv
    import io
    import json

    text = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["image", "attribute", "probability", "positive"])
        for path, probs, decisions in rows:
            writer.writerows([path, a, f"{p:.8g}", int(d)] for a, p, d in zip(attributes, probs, decisions))
    else:
        for path, probs, decisions in rows:
            text.write(json.dumps({"image": path, "attributes": {
                a: {"probability": float(p), "positive": bool(d)} for a, p, d in zip(attributes, probs, decisions)}})
                + "\n")
    return text.getvalue()
