"""Person images from a video for `lwpar predict`: every n-th frame whole, or the person crops given
by a CSV of boxes. Decoded with OpenCV (`pip install opencv-python-headless`), read once from start
to end. No torch here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from lwpar.core.errors import LwparError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv"}
BOX_COLUMNS = ("frame", "x", "y", "w", "h")  # 0-based frame index; top-left corner, width, height in pixels


@dataclass(frozen=True)
class Box:
    row: int          # line of the CSV, for error messages
    frame: int
    x: int
    y: int
    w: int
    h: int
    id: str = ""      # a track or person id, if the CSV has one


def read_boxes(path: Path) -> dict[int, list[Box]]:
    """Boxes by frame from a CSV with columns frame, x, y, w, h and an optional id; any other column is
    ignored. A missing column, a non-integer value or an empty box is an LwparError naming the row."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LwparError(f"{path}: no column {', '.join(missing)} (needs {', '.join(BOX_COLUMNS)}[, id])")
            boxes: dict[int, list[Box]] = {}
            for line, record in enumerate(reader, start=2):
                try:
                    values = {c: int(float(record[c])) for c in BOX_COLUMNS}
                except (TypeError, ValueError):
                    raise LwparError(f"{path}: line {line}: {', '.join(BOX_COLUMNS)} must be numbers") from None
                box = Box(line, **values, id=str(record.get("id") or ""))
                if box.frame < 0 or box.w <= 0 or box.h <= 0:
                    raise LwparError(f"{path}: line {line}: negative frame or empty box")
                boxes.setdefault(box.frame, []).append(box)
    except OSError as exc:
        raise LwparError(f"{path}: cannot read boxes ({exc.strerror or exc})") from None
    if not boxes:
        raise LwparError(f"{path}: no boxes")
    return boxes


def _capture(path: Path):
    import os

    # OpenCV and its FFmpeg print their own diagnostics for a damaged file; the error below names it
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    try:
        import cv2
    except ImportError:
        raise LwparError(f"{path}: video input needs OpenCV (pip install opencv-python-headless)") from None
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)  # not the image-sequence reader
    if not capture.isOpened():
        raise LwparError(f"{path}: cannot open video")
    return capture


def frame_count(path: Path) -> int:
    """The frame count the container declares (for a progress bar; may be approximate)."""
    capture = _capture(path)
    import cv2

    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def images(path: Path, every: int = 1, boxes: dict[int, list[Box]] | None = None,
           boxes_file: Path | None = None) -> Iterator[tuple[str, Image.Image]]:
    """(label, RGB image) for every `every`-th frame, or for each box of `boxes` (then `every` is not
    used). A box outside its frame, or on a frame the video does not have, is an LwparError."""
    capture = _capture(path)
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if boxes is None:
                if index % every == 0:
                    yield f"{path}#frame={index}", Image.fromarray(frame[:, :, ::-1].copy())
            elif index in boxes:
                height, width = frame.shape[:2]
                image = Image.fromarray(frame[:, :, ::-1].copy())
                for box in boxes[index]:
                    if box.x < 0 or box.y < 0 or box.x + box.w > width or box.y + box.h > height:
                        raise LwparError(f"{boxes_file}: line {box.row}: box x={box.x} y={box.y} w={box.w} "
                                         f"h={box.h} outside frame {index} ({width} x {height})")
                    label = f"{path}#frame={index}&box={box.x},{box.y},{box.w},{box.h}" + (f"&id={box.id}" if box.id else "")
                    yield label, image.crop((box.x, box.y, box.x + box.w, box.y + box.h))
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise LwparError(f"{path}: no frame could be decoded")
    beyond = sorted(f for f in (boxes or {}) if f >= index)
    if beyond:
        raise LwparError(f"{boxes_file}: line {boxes[beyond[0]][0].row}: frame {beyond[0]}, but the video has {index} frames")
