"""Export a model file to ONNX (opset 18, dynamic batch axis, max-voted logits as the single output,
constant folding), run the ONNX checker, and check parity with PyTorch on real test images.

Writes the .onnx file and a parity JSON; a parity failure fails the stage with the figure.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model.pt to export")
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset (parity images): its folder or its manifest")
    parser.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--parity-out", required=True, type=Path, help="parity report (JSON)")
    parser.add_argument("--backbone-out", type=Path, default=None,
                        help="also export the backbone alone (pooled maps), for the backbone/head latency split")
    parser.add_argument("--parity-images", type=int, default=16, help="test images used for the parity check")
    parser.add_argument("--alm-head", choices=["fused", "reference"], default=None,
                        help="export an ALM with this head computation instead of the saved one")


def run(args, params) -> None:
    import torch

    from lwpar import preprocess
    from lwpar.artifact import write_metadata
    from lwpar.data.loader import ImageTable, Prepared, build_transform
    from lwpar.artifact import onnx_session
    from lwpar.export import PooledBackbone, export_onnx, parity
    from lwpar.io import write_json
    from lwpar.structure import load_model

    model, blob = load_model(args.model)
    if args.alm_head:
        from lwpar import LwparError

        if not hasattr(model, "set_head"):
            raise LwparError(f"{args.model}: --alm-head applies to ALM models only")
        model.set_head(args.alm_head)
    size = blob["model_cfg"]["input_size"]
    data = Prepared(args.dataset_dir)
    paths, labels = data.split("test", limit=args.parity_images)
    table = ImageTable(paths, labels, build_transform(size, False))
    images = torch.stack([table[i][0] for i in range(len(table))])
    tmp = args.out.with_name(args.out.name + ".unchecked")
    export_onnx(model, size, tmp)
    cfg = blob["model_cfg"]
    write_metadata(tmp, {"attributes": blob["attributes"], "preprocessing": preprocess.describe(size),
                         "model": {**{k: cfg.get(k) for k in ("arch", "backbone")},
                                   "alm_head": args.alm_head or cfg.get("alm_head")},
                         "lineage": blob.get("lineage", []),
                         "structure": [step.get("op") for step in blob.get("structure", [])], "precision": "float32"})
    try:
        report = parity(model, onnx_session(tmp, threads=1), images)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(args.out)
    if args.backbone_out:
        backbone = args.backbone_out.with_name(args.backbone_out.name + ".unlabelled")
        export_onnx(PooledBackbone(model.main_branch), size, backbone)
        # not a PAR artifact (no attributes): its own key, so `predict` refuses it
        write_metadata(backbone, {"part": "backbone", "of": str(args.out), "lineage": blob.get("lineage", [])}, key="lwpar-part")
        backbone.replace(args.backbone_out)
    write_json(args.parity_out, {"model": str(args.model), "onnx": str(args.out), **report})
    print(f"{args.out}: parity max |diff| {report['max_abs_diff']:.2e} on {report['images']} test images")
