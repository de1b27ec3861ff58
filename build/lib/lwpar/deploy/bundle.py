"""A bundle: one artifact copied with its thresholds and model card to a folder that moves to a device
as a whole (`lwpar predict --model <folder>` and `lwpar.Predictor(<folder>)` accept it), optionally with
the model converted to OpenVINO's IR (openvino/model.xml and .bin, weights kept in their precision) for
devices that run OpenVINO without its ONNX reader. The folder appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lwpar.core.errors import LwparError

REQUIRED = ("model.onnx",)
OPTIONAL = ("thresholds.json", "card.json", "card.md")


OPENVINO_IR = "openvino/model.xml"


def bundle(model: Path, out: Path, require_card: bool = False, openvino_ir: bool = False) -> tuple[list[str], list[str]]:
    """Copies the artifact (its folder or its model.onnx) to `out`, with `openvino_ir` its OpenVINO IR
    too; returns the files written and the optional ones it lacks (refused when `require_card`)."""
    from lwpar.deploy.artifact import read_metadata
    from lwpar.deploy.predict import artifact_file

    source = artifact_file(model).parent
    metadata = read_metadata(source / "model.onnx")  # an lwpar artifact, or a one-line error naming it
    if openvino_ir:
        from lwpar.deploy.runtimes import require

        require("openvino")
    absent = [name for name in OPTIONAL if not (source / name).is_file()]
    if absent and require_card:
        raise LwparError(f"{source}: no {', '.join(absent)} (run the pipeline's evaluate and card jobs)")
    if out.exists() and any(out.iterdir()):
        raise LwparError(f"{out}: exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would follow the folder to the device
    try:
        copied = [name for name in (*REQUIRED, *OPTIONAL) if (source / name).is_file()]
        for name in copied:
            shutil.copy2(source / name, staging / name)
        if openvino_ir:
            _write_ir(source / "model.onnx", staging / OPENVINO_IR, metadata)
            copied += [OPENVINO_IR, OPENVINO_IR.replace(".xml", ".bin")]
        if out.exists():
            out.rmdir()
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied, absent


def _write_ir(onnx_file: Path, xml: Path, metadata: dict) -> None:
    """The ONNX model as OpenVINO IR, its lwpar metadata in the IR's runtime info (`lwpar`)."""
    import json

    import openvino as ov

    from lwpar.deploy.runtimes import openvino_reason

    try:
        model = ov.convert_model(str(onnx_file))
    except Exception as exc:
        raise LwparError(f"{onnx_file}: OpenVINO cannot convert this model ({openvino_reason(exc)})") from None
    model.set_rt_info(json.dumps(metadata, sort_keys=True), ["lwpar"])
    xml.parent.mkdir()
    ov.save_model(model, str(xml), compress_to_fp16=False)  # its default would halve FP32 weights
