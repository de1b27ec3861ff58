"""INT8 post-training quantization of an exported ONNX model with ONNX Runtime.

Static mode: QDQ format, calibration (minmax, entropy or percentile) on a fixed, seeded subset of
the training split, average pools that equal a depthwise conv rewritten as one first (ONNX Runtime's
QLinearAveragePool is slow), only the ops in `quantize.op_types`; dynamic mode: weights only.
Accuracy is measured afterwards by `evaluate` on the INT8 model in ONNX Runtime, never assumed.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="FP32 ONNX model")
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="prepared dataset (calibration images): its folder or its manifest")
    parser.add_argument("--out", required=True, type=Path, help="INT8 ONNX model to write")


def run(args, params) -> None:
    from lwpar.data.loader import Prepared, build_transform
    from lwpar.artifact import onnx_session
    from lwpar.quantize import calibration_batches, quantize_model

    cfg = params["quantize"]
    session = onnx_session(args.model)
    size = session.get_inputs()[0].shape[2:]
    paths, _ = Prepared(args.dataset_dir).split("train")
    batches = calibration_batches(paths, build_transform(size, False), cfg["calibration_images"], params["seed"])
    quantize_model(args.model, args.out, cfg, batches)
    print(f"{args.out}: INT8 ({cfg['mode']}, {cfg['calibration']} calibration on {cfg['calibration_images']} "
          f"training images, per-channel {cfg['per_channel']}, {'7' if cfg['reduce_range'] else '8'}-bit weights, "
          f"{cfg['activations']} activations, "
          f"ops {', '.join(cfg['op_types']) if cfg['op_types'] else 'all'}), "
          f"{args.out.stat().st_size / 1e6:.2f} MB "
          f"from {args.model.stat().st_size / 1e6:.2f} MB")
