"""Where an INT8 model departs from its FP32 source: ONNX Runtime's QDQ debugging helpers run both on
8 seeded training images and give, per saved tensor, the SQNR (dB) of the QDQ model's tensor against
the FP32 model's (`vs float`: the error accumulated up to there) and of each quantized tensor
against itself before rounding (`qdq`), in graph order; and the weights' SQNR. Log:
../2026-12-07-int8-equalization.md.

    python node_error.py <fp32.onnx> <int8 qdq.onnx> <prepared manifest.json> <out.json>
"""

import json
import statistics
import sys
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                     compute_weight_error, create_activation_matching,
                                                     create_weight_matching,
                                                     modify_model_output_intermediate_tensors)

from lwpar.data.loader import Prepared, build_transform
from lwpar.data.loader import calibration_batches

fp32, qdq, manifest, out = sys.argv[1:5]
graph = onnx.load(fp32).graph
shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
paths, _ = Prepared(manifest).split("train")
batches = list(calibration_batches(paths, build_transform(shape[2:], False), 8, 1, batch_size=8))
with tempfile.TemporaryDirectory() as tmp:
    activations = {}
    for kind, model in (("float", fp32), ("qdq", qdq)):
        augmented = str(Path(tmp) / f"{kind}.onnx")
        modify_model_output_intermediate_tensors(model, augmented)
        activations[kind] = collect_activations(augmented, iter([{graph.input[0].name: b} for b in batches]))
errors = compute_activation_error(create_activation_matching(activations["qdq"], activations["float"]))
order = {n.output[0]: i for i, n in enumerate(graph.node)}
rows = sorted(([name, e.get("qdq_err"), e.get("xmodel_err")] for name, e in errors.items()),
              key=lambda r: order.get(r[0], len(order)))
weights = compute_weight_error(create_weight_matching(fp32, qdq))
Path(out).write_text(json.dumps({"activations": rows, "weights": weights}, indent=0))
for name, own, accumulated in rows:
    print(f"{name[:72]:72s} qdq {own:7.2f} dB  vs float {accumulated if accumulated is None else round(accumulated, 2)}")
print(f"{len(weights)} weights, median SQNR {statistics.median(weights.values()):.1f} dB")
