"""A bundle: one artifact copied with its thresholds and model card to a folder that moves to a device
as a whole (`lwpar predict --model <folder>` and `lwpar.Predictor(<folder>)` accept it). The folder
appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lwpar.core.errors import LwparError

REQUIRED = ("model.onnx",)
OPTIONAL = ("thresholds.json", "card.json", "card.md")


def bundle(model: Path, out: Path, require_card: bool = False) -> tuple[list[str], list[str]]:
    """Copies the artifact (its folder or its model.onnx) to `out`; returns the files copied and the
    optional ones it lacks (refused when `require_card`)."""
    from lwpar.deploy.artifact import read_metadata
    from lwpar.deploy.predict import artifact_file

    source = artifact_file(model).parent
    read_metadata(source / "model.onnx")  # an lwpar artifact, or a one-line error naming it
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
        if out.exists():
            out.rmdir()
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied, absent
