"""What an exported ONNX artifact says about itself, in the model file's own metadata (ONNX
`metadata_props`), so that the file alone is enough to run it: the attribute names in output order
and the preprocessing (`preprocess.describe`). Written by `lwpar export`, carried over by
`lwpar quantize`, read by `lwpar predict` through ONNX Runtime. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path

from lwpar.core.errors import LwparError

KEY = "lwpar"  # one metadata entry, a JSON object
FORMAT = "lwpar-artifact/1"


def onnx_session(path: str | Path, threads: int = 0, providers=None):
    """An ONNX Runtime session; a missing or damaged file is an LwparError naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise LwparError(f"{path}: ONNX model not found")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for damaged files
        raise LwparError(f"{path}: corrupt or unreadable ONNX model ({str(exc).splitlines()[0][:160]})") from None


def write_metadata(path: Path, fields: dict, key: str = KEY) -> None:
    """Set the artifact's metadata on the ONNX file at `path` (rewritten in place: call it on a
    file that is not yet in its final place)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps({"format": FORMAT, **fields}, sort_keys=True)
    onnx.save(model, str(path))


def copy_metadata(source: Path, target: Path, **changes) -> None:
    """The source artifact's metadata onto `target` (e.g. its INT8 form), with `changes` applied."""
    write_metadata(target, {**_without_format(read_metadata(source)), **changes})


def read_metadata(path: str | Path, session=None) -> dict:
    """The metadata of an lwpar artifact; an ONNX model without it is an LwparError naming the file."""
    text = session.get_modelmeta().custom_metadata_map.get(KEY) if session is not None else _metadata_text(path)
    if text is None:
        raise LwparError(f"{path}: not an lwpar artifact (no '{KEY}' metadata: export it with `lwpar export`)")
    fields = json.loads(text)
    if fields.get("format") != FORMAT:
        raise LwparError(f"{path}: artifact metadata {fields.get('format')!r}, this lwpar reads {FORMAT!r}")
    return fields


def _metadata_text(path: str | Path) -> str | None:
    """The metadata entry read from the file alone: parsing the protobuf is much cheaper than an
    inference session, which also optimizes the graph."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise LwparError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends, for damaged files
        raise LwparError(f"{path}: corrupt or unreadable ONNX model ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
    return next((p.value for p in model.metadata_props if p.key == KEY), None)


def is_artifact(session) -> bool:
    return KEY in session.get_modelmeta().custom_metadata_map


THRESHOLDS_FORMAT = "lwpar-thresholds/1"
THRESHOLDS_FILE = "thresholds.json"  # beside the artifact's model.onnx


def thresholds_file(attributes: list[str], thresholds, images: int) -> dict:
    """The content of an artifact's tuned-thresholds file."""
    return {"format": THRESHOLDS_FORMAT, "chosen_on": "val", "images": images,
            "criterion": "each attribute's balanced accuracy (the quantity mA averages)",
            "thresholds": {a: float(t) for a, t in zip(attributes, thresholds)}}


def read_thresholds(path: Path, attributes: list[str]) -> list[float]:
    """The tuned thresholds in `attributes` order; a file for other attributes is an LwparError."""
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LwparError(f"{path}: unreadable thresholds file ({exc})") from None
    if not isinstance(fields, dict) or fields.get("format") != THRESHOLDS_FORMAT:
        raise LwparError(f"{path}: not an lwpar thresholds file ({THRESHOLDS_FORMAT})")
    chosen = fields.get("thresholds", {})
    if set(chosen) != set(attributes):
        raise LwparError(f"{path}: thresholds for other attributes than the model's")
    return [float(chosen[a]) for a in attributes]


def _without_format(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k != "format"}
