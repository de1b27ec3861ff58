"""ONNX export with a dynamic batch axis and the max-voted logits as the one output, checked by the
ONNX checker and by parity against PyTorch on real images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lwpar.core.errors import LwparError
from lwpar.core.io import atomic_path

OPSET = 18
REFERENCE_HEAD_OPSET = 20  # AffineGrid and 4-D GridSample arrive in opset 20


def needs_opset(model: torch.nn.Module) -> int:
    from lwpar.models.alm import LocalizationLevel

    if any(isinstance(m, LocalizationLevel) and m.head == "reference" for m in model.modules()):
        return REFERENCE_HEAD_OPSET
    return OPSET
PARITY_TOLERANCE = 1e-4


class PooledBackbone(torch.nn.Module):
    """The backbone alone, its pyramid maps globally pooled (so no layer is dead code): profiling it
    next to the whole model splits latency between backbone and heads."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.body = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([level.mean((2, 3)) for level in self.body(x)], 1)


def export_onnx(model: torch.nn.Module, input_size, path: str | Path, opset: int | None = None) -> Path:
    path = Path(path)
    opset = opset or needs_opset(model)
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.randn(2, 3, *input_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
        fold_constants(tmp)
        fuse_sibling_convs(tmp)
        check_onnx(tmp)
    return path


def fold_constants(path: Path) -> None:
    """Fold what the exporter left unfolded (the heads' per-attribute weights stacked at run time)
    with ONNX Runtime's basic optimizer, which rewrites only with standard ONNX operators."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    folded = path.with_name(path.name + ".folded")
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    folded.replace(path)


def fuse_sibling_convs(path: Path) -> int:
    """Merge the convs that read the same tensor with the same geometry into one conv and a Split.

    Exact: each output channel is the same dot product as before. Factorized inception blocks have
    three such siblings per block (the first factors of the 1x1, 3x3-reduce and double-3x3-reduce
    branches), and at batch 1 ONNX Runtime's cost is per node. Measured on ALM-BN-Inception
    tucker2_r15_stem (30 convs in 10 groups): 0-10 % faster at batch 1 in three interleaved runs,
    FP32 and INT8 (in FP32, ONNX Runtime reorders blocked layouts around each Split, which eats part
    of the gain); ALM-EfficientNet-Lite0 (2 groups): unchanged. Runs after constant folding, so
    BatchNorm is already folded into the weights and biases being concatenated. Returns the number
    of convs merged.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}

    def geometry(node) -> tuple | None:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Conv" or attributes.get("group", 1) != 1 or node.input[1] not in constants
                or (len(node.input) > 2 and node.input[2] and node.input[2] not in constants)):
            return None
        kernel = tuple(constants[node.input[1]].dims[1:])
        return (node.input[0], kernel, constants[node.input[1]].data_type,
                tuple(sorted((k, str(v)) for k, v in attributes.items())))

    nodes = list(graph.node)  # one set of wrappers, so that id() below names the same node twice
    groups: dict[tuple, list] = {}
    for node in nodes:
        key = geometry(node)
        if key is not None:
            groups.setdefault(key, []).append(node)
    replaced: dict[int, list] = {}  # id of a group's first member -> its conv and Split; other members -> []
    for index, members in enumerate(g for g in groups.values() if len(g) > 1):
        weights = [numpy_helper.to_array(constants[n.input[1]]) for n in members]
        biases = [numpy_helper.to_array(constants[n.input[2]]) if len(n.input) > 2 and n.input[2]
                  else np.zeros(w.shape[0], w.dtype) for n, w in zip(members, weights)]
        prefix = f"siblings_{index}"
        graph.initializer.extend([numpy_helper.from_array(np.concatenate(weights), f"{prefix}_weight"),
                                  numpy_helper.from_array(np.concatenate(biases), f"{prefix}_bias"),
                                  numpy_helper.from_array(np.array([w.shape[0] for w in weights], np.int64),
                                                          f"{prefix}_sizes")])
        conv = helper.make_node("Conv", [members[0].input[0], f"{prefix}_weight", f"{prefix}_bias"],
                                [f"{prefix}_output"], name=f"{prefix}_conv")
        conv.attribute.extend(members[0].attribute)
        split = helper.make_node("Split", [f"{prefix}_output", f"{prefix}_sizes"], [n.output[0] for n in members],
                                 name=f"{prefix}_split", axis=1)
        replaced.update({id(n): [] for n in members[1:]})
        replaced[id(members[0])] = [conv, split]  # in the first member's place: their shared input exists there
    merged = len(replaced)
    if merged:
        nodes = [new for node in nodes for new in replaced.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        onnx.save(model, str(path))
    return merged


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # the checker raises several types
        raise LwparError(f"{path}: ONNX checker failed ({str(exc).splitlines()[0][:200]})") from None


def parity(model: torch.nn.Module, session, images: torch.Tensor, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Max absolute logit difference between PyTorch and ONNX Runtime on `images`; error above the bound.

    The bound is `tolerance`, unless float32 itself is that far from exact arithmetic on this model
    (low-rank factors and recalibrated BatchNorm amplify rounding): then it is four times PyTorch's
    own float32 error against a float64 run, measured here and reported, because ONNX Runtime's
    kernels (blocked layouts, other summation orders) round differently by a few times that. A
    broken export is off by orders of magnitude more.
    """
    import copy

    model = model.eval().to("cpu")
    with torch.no_grad():
        expected = model(images)
        exact = copy.deepcopy(model).double()(images.double())
    float32_error = float((expected.double() - exact).abs().max())
    expected = expected.numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    if got.shape != expected.shape:
        raise LwparError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    bound = max(tolerance, 4 * float32_error)
    result = {"max_abs_diff": diff, "tolerance": tolerance, "bound": bound, "torch_float32_error": float32_error,
              "images": int(images.shape[0]), "max_abs_logit": float(np.abs(expected).max())}
    if not diff <= bound:
        raise LwparError(f"ONNX parity failed: max |logit difference| {diff:.3g} > {bound:.3g} on "
                         f"{images.shape[0]} images (PyTorch float32 vs float64: {float32_error:.3g})")
    return result


def export_artifact(model: torch.nn.Module, blob: dict, images: torch.Tensor, out: Path,
                    backbone_out: Path | None = None, alm_head: str | None = None) -> dict:
    """The model file's network as an lwpar artifact at `out`: exported, its metadata written
    (attributes, preprocessing, the steps that made it), parity checked on `images` before the file
    takes its name; with `backbone_out`, the backbone alone too. Returns the parity report."""
    from lwpar.data import preprocess
    from lwpar.deploy.artifact import onnx_session, write_metadata

    if alm_head:
        if not hasattr(model, "set_head"):
            raise LwparError(f"{out}: --alm-head applies to ALM models only")
        model.set_head(alm_head)
    cfg = blob["model_cfg"]
    size = cfg["input_size"]
    unchecked = out.with_name(out.name + ".unchecked")
    export_onnx(model, size, unchecked)
    write_metadata(unchecked, {"attributes": blob["attributes"], "preprocessing": preprocess.describe(size),
                               "model": {**{k: cfg.get(k) for k in ("arch", "backbone")},
                                         "alm_head": alm_head or cfg.get("alm_head")},
                               "lineage": blob.get("lineage", []),
                               "structure": [step.get("op") for step in blob.get("structure", [])],
                               "precision": "float32"})
    try:
        report = parity(model, onnx_session(unchecked, threads=1), images)
    except BaseException:
        unchecked.unlink(missing_ok=True)
        raise
    unchecked.replace(out)
    if backbone_out:
        backbone = backbone_out.with_name(backbone_out.name + ".unlabelled")
        export_onnx(PooledBackbone(model.main_branch), size, backbone)
        # not a PAR artifact (no attributes): its own key, so `predict` refuses it
        write_metadata(backbone, {"part": "backbone", "of": str(out), "lineage": blob.get("lineage", [])},
                       key="lwpar-part")
        backbone.replace(backbone_out)
    return report
