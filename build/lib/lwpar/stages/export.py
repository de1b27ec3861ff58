"""Export to ONNX and check parity with PyTorch on real test images.

Opset 18, a dynamic batch axis, the max-voted logits as the one output, constant folding, the ONNX
checker; the artifact's metadata says its attributes, preprocessing and how it was made. Writes the
.onnx file and a parity JSON; a parity failure fails the stage with the figure.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir

FLAGS = [
    flag("--model", "model.pt to export", "input:model", type=Path, required=True),
    dataset_dir("parity images"),
    flag("--out", "ONNX file to write", "output:onnx", type=Path, required=True),
    flag("--parity-out", "parity report (JSON)", "output:parity", type=Path, required=True),
    flag("--backbone-out", "also export the backbone alone (pooled maps), for the backbone/head latency split",
         "output:backbone", type=Path),
    flag("--parity-images", "test images used for the parity check", type=int, default=16),
    flag("--alm-head", "export an ALM with this head computation instead of the saved one", "option",
         choices=["fused", "reference"]),
]


def run(args, params) -> None:
    import torch

    from lwpar.compress.structure import load_model
    from lwpar.core.io import write_json
    from lwpar.data.loader import ImageTable, Prepared, build_transform
    from lwpar.deploy.export import export_artifact

    model, blob = load_model(args.model)
    paths, labels = Prepared(args.dataset_dir).split("test", limit=args.parity_images)
    table = ImageTable(paths, labels, build_transform(blob["model_cfg"]["input_size"], False))
    images = torch.stack([table[i][0] for i in range(len(table))])
    report = export_artifact(model, blob, images, args.out, args.backbone_out, args.alm_head)
    write_json(args.parity_out, {"model": str(args.model), "onnx": str(args.out), **report})
    print(f"{args.out}: parity max |diff| {report['max_abs_diff']:.2e} on {report['images']} test images")
