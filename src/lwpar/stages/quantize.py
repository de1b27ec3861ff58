"""INT8 quantization of an exported model with ONNX Runtime.

Static mode: QDQ format, calibration (minmax, entropy or percentile) on a fixed, seeded subset of
the training split, average pools that equal a depthwise conv rewritten as one first (ONNX Runtime's
QLinearAveragePool is slow), only the ops in `quantize.op_types`, then every quantized tensor compared
with the FP32 model's on `quantize.error_images` other training images (node_error.csv); dynamic
mode: weights only. Form `mixed` leaves the places of worst measured error in FP32 (`quantize.keep_float`);
form `nncf` quantizes with NNCF whatever `quantize.engine` says.
Accuracy is measured afterwards by `evaluate` on the INT8 model in ONNX Runtime, never assumed.
"""

from __future__ import annotations

from pathlib import Path

from lwpar.stages import flag, dataset_dir

FLAGS = [
    flag("--model", "FP32 ONNX model", "input:onnx", type=Path, required=True),
    dataset_dir("calibration images"),
    flag("--out", "INT8 ONNX model to write", "output:onnx", type=Path, required=True),
    flag("--errors-out", "per-tensor error against the FP32 model (node_error.csv)", "output:errors", type=Path,
         required=True),
    flag("--form", "int8: every quantizable node, by quantize.engine; mixed: the places of worst error left FP32 "
         "(quantize.keep_float); nncf: NNCF's post-training INT8", "wildcard:form", default="int8",
         choices=["int8", "mixed", "nncf"]),
]


def run(args, params) -> None:
    from lwpar.config import schema
    from lwpar.core.names import form_keys
    from lwpar.data.loader import Prepared, build_transform, calibration_batches
    from lwpar.deploy.artifact import onnx_session
    from lwpar.deploy.quantize import quantize_model, weight_range

    # only the keys this form reads (core.names.form_keys), which are the keys its job declares
    cfg = {key: params["quantize"][key] for key in form_keys(args.form, schema()["properties"]["quantize"]["properties"])}
    if args.form == "nncf":  # NNCF's defaults: static, its own weight grid (calibration images and ops shared)
        cfg.update(engine="nncf", mode="static")
    size = onnx_session(args.model).get_inputs()[0].shape[2:]
    paths, _ = Prepared(args.dataset_dir).split("train")
    transform = build_transform(size, False)
    errors = quantize_model(args.model, args.out, cfg,
                            calibration_batches(paths, transform, cfg["calibration_images"], params["seed"]),
                            args.errors_out,
                            calibration_batches(paths, transform, cfg.get("error_images", 0), params["seed"] + 1),
                            keep_float=cfg["keep_float"] if args.form == "mixed" else None)
    ops = ', '.join(cfg['op_types']) if cfg['op_types'] else 'all'
    reduced, why = weight_range(cfg["reduce_range"]) if cfg["engine"] != "nncf" else (False, "")
    how = (f"NNCF's defaults, calibrated on {cfg['calibration_images']} training images, ops {ops}"
           if cfg["engine"] == "nncf" else
           f"{cfg['mode']}, {cfg['calibration']} calibration on {cfg['calibration_images']} training images, "
           f"per-channel {cfg['per_channel']}, {'7' if reduced else '8'}-bit weights ({why}), "
           f"{cfg['activations']} activations, ops {ops}")
    print(f"{args.out}: INT8 ({how}), {args.out.stat().st_size / 1e6:.2f} MB from {args.model.stat().st_size / 1e6:.2f} MB")
    print(f"{args.errors_out}: {errors}")
