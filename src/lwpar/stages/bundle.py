"""Copy one artifact with its thresholds and model card to a folder for a device.

The folder holds model.onnx (with its metadata: attributes, preprocessing), thresholds.json and the
model card; `lwpar predict --model <folder>` and `lwpar.Predictor(<folder>)` accept it. The folder
appears complete or not at all. Needs no params file.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag

NEEDS_PARAMS = False
FLAGS = [
    flag("--model", "artifact folder (holding model.onnx)", type=Path, required=True),
    flag("--out", "folder to create", type=Path, required=True),
    flag("--require-card", "refuse an artifact without thresholds and model card (as the pipeline makes them)",
         action="store_true"),
]


def run(args, params) -> None:
    from lwpar.deploy.bundle import bundle

    copied, absent = bundle(args.model, args.out, args.require_card)
    print(f"{args.out}: {', '.join(copied)}" + (f" (absent: {', '.join(absent)})" if absent else ""))
