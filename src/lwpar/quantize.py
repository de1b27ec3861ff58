"""INT8 quantization of an exported ONNX model with ONNX Runtime: static (QDQ, calibrated on a fixed,
seeded subset of the training split) or dynamic (weights only, no calibration)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lwpar.io import atomic_path

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# uint8 activations with int8 weights (U8S8) is the form ONNX Runtime's x86 kernels fuse into
# QLinearConv; with int8 activations some convs stay as DequantizeLinear + FP32 Conv at run time.
ACTIVATIONS = {"uint8": "QUInt8", "int8": "QInt8"}


class ImageCalibration:
    """onnxruntime CalibrationDataReader over preprocessed image batches."""

    def __init__(self, input_name: str, batches):
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def calibration_batches(paths, transform, count: int, seed: int, batch_size: int = 16):
    order = np.random.default_rng(seed).permutation(len(paths))[:count]
    from lwpar.data.loader import ImageTable

    table = ImageTable([paths[i] for i in sorted(order)], np.zeros((len(order), 1), np.float32), transform)
    for start in range(0, len(table), batch_size):
        yield np.stack([table[i][0].numpy() for i in range(start, min(start + batch_size, len(table)))])


def quantize_model(source: Path, target: Path, cfg: dict, batches=None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, atomic_path(target) as out:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if cfg["mode"] == "dynamic":
            quantize_dynamic(str(prepared), str(out), per_channel=cfg["per_channel"], weight_type=QuantType.QInt8)
            return
        import onnx

        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        quantize_static(str(prepared), str(out), ImageCalibration(input_name, batches), quant_format=QuantFormat.QDQ,
                        per_channel=cfg["per_channel"], weight_type=QuantType.QInt8,
                        activation_type=getattr(QuantType, ACTIVATIONS[cfg["activations"]]),
                        calibrate_method=getattr(CalibrationMethod, METHODS[cfg["calibration"]]),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
