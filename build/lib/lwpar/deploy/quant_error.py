"""Where an INT8 model departs from its FP32 source, tensor by tensor, with ONNX Runtime's QDQ
debugging helpers (`onnxruntime.quantization.qdq_loss_debug`): both models run on the same images,
every quantized tensor compared with the FP32 model's. In SQNR (dB, higher is closer):
- `own_sqnr_db`: the tensor against itself before its QuantizeLinear (this tensor's rounding alone);
- `accumulated_sqnr_db`: the INT8 model's tensor against the FP32 model's (everything up to here);
- `drop_db`: how much worse it is than the worst of the tensors it is computed from (walking back
  through nodes whose outputs are not saved, e.g. a Conv fused with its ReLU): where error is born;
and each weight's SQNR against its FP32 value. A factor chain whose output is much smaller than its
terms (cancelling CP terms) shows as a large drop at its last factor with clean weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

LINEAR_OPS = {"Conv", "MatMul", "Gemm"}
COLUMNS = ["order", "kind", "tensor", "op", "own_sqnr_db", "accumulated_sqnr_db", "drop_db"]


def node_errors(fp32: Path, int8: Path, batches, input_name: str) -> pd.DataFrame:
    """The table above for the QDQ model `int8` quantized from `fp32` (same tensor names), on the
    image `batches`; activations in graph order, then weights."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         compute_weight_error, create_activation_matching,
                                                         create_weight_matching,
                                                         modify_model_output_intermediate_tensors)

    feeds = [{input_name: batch} for batch in batches]
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for kind, model in (("float", fp32), ("qdq", int8)):
            augmented = str(Path(tmp) / f"{kind}.onnx")
            modify_model_output_intermediate_tensors(str(model), augmented)
            saved[kind] = collect_activations(augmented, iter(feeds))
    errors = compute_activation_error(create_activation_matching(saved["qdq"], saved["float"]))
    graph = onnx.load(str(fp32), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    order = {node.output[0]: i for i, node in enumerate(graph.node)}
    accumulated = {name: e.get("xmodel_err") for name, e in errors.items()}

    def incoming(tensor: str, seen: set) -> float:
        """The worst accumulated SQNR among the saved tensors `tensor` is computed from (inf at inputs)."""
        node = producer.get(tensor)
        if node is None or tensor in seen:
            return float("inf")
        seen.add(tensor)
        values = [accumulated[i] if accumulated.get(i) is not None else incoming(i, seen) for i in node.input if i]
        return min(values, default=float("inf"))

    rows = []
    for name, e in errors.items():
        source = incoming(name, set())
        own_acc = accumulated.get(name)
        rows.append({"order": order.get(name, -1), "kind": "activation", "tensor": name,  # -1: a graph input
                     "op": producer[name].op_type if name in producer else "",
                     "own_sqnr_db": e.get("qdq_err"), "accumulated_sqnr_db": own_acc,
                     "drop_db": source - own_acc if own_acc is not None and np.isfinite(source) else np.nan})
    weights = compute_weight_error(create_weight_matching(str(fp32), str(int8)))
    from onnx import numpy_helper

    for initializer in graph.initializer:  # an all-zero tensor (a zero bias) is exact, not 0 dB as the helper says
        if initializer.name in weights and not numpy_helper.to_array(initializer).any():
            weights[initializer.name] = float("inf")
    rows += [{"order": len(order) + i, "kind": "weight", "tensor": name, "op": "", "own_sqnr_db": value,
              "accumulated_sqnr_db": np.nan, "drop_db": np.nan} for i, (name, value) in enumerate(sorted(weights.items()))]
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("order", kind="stable")
    table["order"] = range(len(table))
    return table


def worst_tensors(table: pd.DataFrame, count: int, min_drop_db: float | None) -> list[str]:
    """The `count` activations with the largest drops (only drops of at least `min_drop_db` when given)."""
    worst = table[table["kind"] == "activation"].dropna(subset=["drop_db"]).sort_values("drop_db", ascending=False)
    if min_drop_db is not None:
        worst = worst[worst["drop_db"] >= min_drop_db]
    return list(worst["tensor"].head(count))


def nodes_behind(graph, listed: set[str], tensor: str) -> list[str]:
    """The names of the nodes where `tensor`'s error is born: its producer and, back through tensors
    the error table does not list (a Conv fused with its ReLU saves only the ReLU's output) and through
    tensors between two linear nodes (a factor chain's intermediates: rounding them is what cancelling
    terms amplify, while the chain's input error passes through its moderate product), the nodes that
    feed it."""
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []

    def collect(name: str, consumer) -> None:
        node = producer.get(name)
        if node is None or node.name in names:
            return
        inside_chain = consumer is not None and {node.op_type, consumer.op_type} <= LINEAR_OPS
        if name in listed and consumer is not None and not inside_chain:
            return
        names.append(node.name)
        for upstream in node.input:
            collect(upstream, node)

    collect(tensor, None)
    return names


def summary(table: pd.DataFrame, worst: int = 3) -> str:
    """One line: the last activation's accumulated SQNR and where the most error is born."""
    activations = table[table["kind"] == "activation"].dropna(subset=["accumulated_sqnr_db"])
    if activations.empty:
        return "no tensor error measured"
    born = activations.dropna(subset=["drop_db"]).nlargest(worst, "drop_db")
    where = ", ".join(f"{r.tensor} ({r.op}) -{r.drop_db:.1f} dB" for r in born.itertuples())
    last = activations.loc[activations["order"].idxmax()]
    return (f"last quantized tensor {last.tensor}: {last.accumulated_sqnr_db:.1f} dB SQNR against FP32; "
            f"largest drops: {where or 'none'}")
