"""Copy one artifact with its thresholds and model card to a folder for a device.

The folder holds model.onnx (with its metadata: attributes, preprocessing), thresholds.json and the
model card; `lwpar predict --model <folder>` and `lwpar.Predictor(<folder>)` accept it. With
--openvino-ir, also openvino/model.xml and model.bin: the model in OpenVINO's own format, weights
in their precision. The folder appears complete or not at all. Needs no params file.
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
    flag("--openvino-ir", "also write the model as OpenVINO IR (openvino/model.xml, .bin; needs openvino)",
         action="store_true"),
]


def run(args, params) -> None:
    from lwpar.deploy.bundle import bundle

    copied, absent = bundle(args.model, args.out, args.require_card, args.openvino_ir)
    print(f"{args.out}: {', '.join(copied)}" + (f" (absent: {', '.join(absent)})" if absent else ""))
