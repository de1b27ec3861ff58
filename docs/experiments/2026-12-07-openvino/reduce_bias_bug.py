"""OpenVINO's CPU plugin (2026.4.1) computes ReduceSum directly followed by a bias Add wrongly for
batches above 1; a Reshape or Flatten between them gives the right answer. This is the pattern ALM's
fused head exported as before commit 197ccca: (B, M, C) -> ReduceSum(-1) -> + bias (M).

    python reduce_bias_bug.py     # prints the largest error of each form at batch 8 and at batch 1
"""

import numpy as np
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

ATTRIBUTES, CHANNELS = 5, 64
rng = np.random.default_rng(0)
bias = rng.standard_normal(ATTRIBUTES).astype(np.float32)
axes = helper.make_tensor("axes", TensorProto.INT64, [1], [-1])
shape = numpy_helper.from_array(np.array([-1, ATTRIBUTES], np.int64), "shape")


def error(nodes, initializers, batch: int) -> float:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", ATTRIBUTES, CHANNELS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(bias, "bias"), *initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ov.Core().compile_model(ov.Core().read_model(model.SerializeToString(), b""), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(1).standard_normal((batch, ATTRIBUTES, CHANNELS)).astype(np.float32)
    out = compiled(x)[compiled.outputs[0]].reshape(batch, ATTRIBUTES)
    return float(np.abs(out - (x.sum(-1) + bias)).max())


FORMS = {
    "ReduceSum -> Add": ([helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
                          helper.make_node("Add", ["s", "bias"], ["y"])], [axes]),
    "ReduceSum(keepdims) -> Flatten -> Add": ([helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
                                               helper.make_node("Flatten", ["s"], ["f"], axis=1),
                                               helper.make_node("Add", ["f", "bias"], ["y"])], [axes]),
    "ReduceSum(keepdims) -> Reshape -> Add": ([helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
                                               helper.make_node("Reshape", ["s", "shape"], ["f"]),
                                               helper.make_node("Add", ["f", "bias"], ["y"])], [axes, shape]),
}
print("openvino", ov.get_version())
for name, (nodes, initializers) in FORMS.items():
    print(f"{name:40s} batch 8: {error(nodes, initializers, 8):.2e}   batch 1: {error(nodes, initializers, 1):.2e}")
