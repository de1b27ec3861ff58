"""Copy one artifact to a folder that moves to a device as a whole: model.onnx (with its metadata:
attributes, preprocessing), thresholds.json and the model card. `lwpar predict --model <folder>` and
`lwpar.Predictor(<folder>)` accept it. The folder appears complete or not at all. Needs no params file.
"""

from __future__ import annotations

from pathlib import Path

NEEDS_PARAMS = False
REQUIRED = ("model.onnx",)
OPTIONAL = ("thresholds.json", "card.json", "card.md")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="artifact folder (holding model.onnx)")
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--require-card", action="store_true",
                        help="refuse an artifact without thresholds and model card (as the pipeline makes them)")


def run(args, params) -> None:
    import os
    import shutil
    import tempfile

    from lwpar import LwparError
    from lwpar.artifact import read_metadata
    from lwpar.predict import artifact_file

    source = artifact_file(args.model).parent
    read_metadata(source / "model.onnx")  # an lwpar artifact, or a one-line error naming it
    absent = [name for name in OPTIONAL if not (source / name).is_file()]
    if absent and args.require_card:
        raise LwparError(f"{source}: no {', '.join(absent)} (run the pipeline's evaluate and card jobs)")
    if args.out.exists() and any(args.out.iterdir()):
        raise LwparError(f"{args.out}: exists and is not empty")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would follow the folder to the device
    try:
        copied = [name for name in (*REQUIRED, *OPTIONAL) if (source / name).is_file()]
        for name in copied:
            shutil.copy2(source / name, staging / name)
        if args.out.exists():
            args.out.rmdir()
        staging.replace(args.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"{args.out}: {', '.join(copied)}" + (f" (absent: {', '.join(absent)})" if absent else ""))
