"""INT8 quantization of an exported ONNX model with ONNX Runtime: static (QDQ, calibrated on a fixed,
seeded subset of the training split) or dynamic (weights only, no calibration). `op_types` limits
quantization to the listed ONNX ops (null: every op ONNX Runtime can quantize); of those, ops that
only move or combine tensors are quantized only where an INT8 tensor reaches them (`float_islands`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lwpar.core.errors import LwparError
from lwpar.core.io import atomic_path
from lwpar.core.progress import Progress
from lwpar.data.loader import CALIBRATION_BATCH

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# uint8 activations with int8 weights (U8S8) is the form ONNX Runtime's x86 kernels fuse into
# QLinearConv; with int8 activations some convs stay as DequantizeLinear + FP32 Conv at run time.
ACTIVATIONS = {"uint8": "QUInt8", "int8": "QInt8"}


class ImageCalibration:
    """onnxruntime CalibrationDataReader over preprocessed image batches, counted in the log."""

    def __init__(self, input_name: str, batches, total: int | None = None):
        self.input_name, self.batches = input_name, iter(batches)
        self.progress = Progress(total, "calibrating", unit="batch", items="images")

    def get_next(self):
        batch = next(self.batches, None)
        if batch is None:
            self.progress.close()
            return None
        self.progress.update(items=len(batch))
        return {self.input_name: batch}


KEEP_FLOAT_ROUNDS = 4  # keep_float: rounds of keeping the worst tensors' nodes, quantizing and measuring again


def pools_as_depthwise_convs(model) -> int:
    """Rewrite, in place, every AveragePool that equals a depthwise convolution (padding counted in the
    mean, no ceil_mode) as a Conv with constant 1/(kh*kw) weights; returns how many. Why: ONNX Runtime
    runs a quantized AveragePool as QLinearAveragePool, several times slower than the FP32 pool, while a
    depthwise QLinearConv is fast (measured on ALM-BN-Inception's seven 3x3 stride-1 pools)."""
    import onnx
    from onnx import helper, numpy_helper

    shapes = {v.name: v.type.tensor_type.shape for v in [*model.graph.value_info, *model.graph.input]}
    rewritten = 0
    for index, node in enumerate(list(model.graph.node)):
        if node.op_type != "AveragePool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        shape = shapes.get(node.input[0])
        channels = shape.dim[1].dim_value if shape is not None and len(shape.dim) == 4 else 0
        if (len(kernel) != 2 or not channels or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"
                or (any(pads) and not attrs.get("count_include_pad", 0))):
            continue
        weight = numpy_helper.from_array(np.full((channels, 1, *kernel), 1.0 / np.prod(kernel), np.float32),
                                         f"{node.name or node.output[0]}_depthwise_mean")
        model.graph.initializer.append(weight)
        conv = helper.make_node("Conv", [node.input[0], weight.name], list(node.output), name=f"{node.name}_as_conv",
                                group=channels, kernel_shape=kernel, pads=pads,
                                strides=list(attrs.get("strides", [1, 1])))
        model.graph.node.remove(node)
        model.graph.node.insert(index, conv)
        rewritten += 1
    if rewritten:
        onnx.checker.check_model(model)
    return rewritten


# Ops whose INT8 kernels save arithmetic: always quantized when listed. The other listed ops
# (Add, Relu, Concat, ...) only move or combine tensors and are quantized where INT8 reaches them.
COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def float_islands(model, op_types: list[str]) -> list[str]:
    """Names of listed non-compute nodes that no quantized tensor reaches: every input is float, so
    quantizing one would only add a QuantizeLinear before it and a DequantizeLinear after it, both
    run on every call, and round its result. In ALM these are the head's bias adds, `1 + sigmoid`
    and the concatenation of its logits (on ALM-BN-Inception 17 QLinearAdds and their glue). Nodes
    are visited in graph (topological) order, so a chain of such ops is excluded whole."""
    listed = set(op_types)
    quantized_tensors, excluded = set(), []
    for node in model.graph.node:
        if node.op_type not in listed:
            continue
        if node.op_type in COMPUTE_OPS or any(name in quantized_tensors for name in node.input):
            quantized_tensors.update(node.output)
        elif node.name:  # nodes_to_exclude matches by name (exported nodes all have one)
            excluded.append(node.name)
    return excluded


def quantize_model(source: Path, target: Path, cfg: dict, batches=None, errors_out: Path | None = None,
                   error_batches=(), keep_float: dict | None = None) -> str:
    """Quantize `source` to `target`; with `errors_out`, the INT8 model's tensors compared with the FP32
    model's on `error_batches` (`quant_error`; static mode only, else the table lists nothing). With
    `keep_float` (the mixed form; `cfg`'s own is not read), the nodes where that comparison finds the
    most error born stay FP32 and the model is quantized again. Returns the error summary line."""
    import onnx.defs

    unknown = [op for op in cfg["op_types"] or [] if not onnx.defs.has(op)]
    if unknown:  # ONNX Runtime would silently quantize nothing of that name
        raise LwparError(f"quantize.op_types: {', '.join(unknown)} is not an ONNX operator (e.g. Conv, MatMul, Add)")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if cfg["engine"] != "nncf":  # NNCF chooses its own weight grid
        reduced, why = weight_range(cfg["reduce_range"])
        cfg = {**cfg, "reduce_range": reduced, "weight_bits": f"{7 if reduced else 8} ({why})"}

    with tempfile.TemporaryDirectory() as tmp, atomic_path(target) as out:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if cfg["mode"] == "dynamic":
            quantize_dynamic(str(prepared), str(out), per_channel=cfg["per_channel"], weight_type=QuantType.QInt8,
                             reduce_range=cfg["reduce_range"], op_types_to_quantize=cfg["op_types"])
            _carry_metadata(source, out, cfg)
            return _write_errors(errors_out, None)
        import onnx

        from lwpar.deploy.quant_error import node_errors, nodes_behind, worst_tensors

        graph = onnx.load(str(prepared))
        if pools_as_depthwise_convs(graph):
            onnx.save(graph, str(prepared))
        input_name = graph.graph.input[0].name
        if cfg["engine"] == "nncf":
            return _quantize_nncf(source, prepared, out, cfg, batches, input_name, errors_out)
        excluded = float_islands(graph, cfg["op_types"]) if cfg["op_types"] else []
        keep = keep_float or {"worst": 0, "min_drop_db": None}
        batches = list(batches) if keep["worst"] else batches  # calibrated again for each round
        error_batches = list(error_batches)
        if keep["worst"] and not error_batches:
            raise LwparError("quantize.keep_float needs quantize.error_images >= 1: the nodes kept in FP32 are where "
                             "the measured error is worst")
        _quantize_static(prepared, out, cfg, batches, excluded, input_name)
        table = None
        if error_batches and (errors_out is not None or keep["worst"]):
            table = node_errors(prepared, out, error_batches, input_name)
        kept, chosen = [], []
        while table is not None and len(chosen) < keep["worst"]:
            # a tensor's drop is measured from already damaged inputs, so an error born downstream of a
            # worse one shows only once that one is fixed: a few rounds of keep, quantize, measure
            step = min(-(-keep["worst"] // KEEP_FLOAT_ROUNDS), keep["worst"] - len(chosen))
            picks = worst_tensors(table[~table["tensor"].isin(chosen)], step, keep["min_drop_db"])
            if not picks:
                break
            listed = set(table["tensor"])
            for tensor in picks:
                kept += [n for n in nodes_behind(graph.graph, listed, tensor) if n not in kept]
            chosen += picks
            _check_something_quantized(graph.graph, cfg["op_types"], excluded + kept)
            _quantize_static(prepared, out, cfg, batches, excluded + kept, input_name)
            table = node_errors(prepared, out, error_batches, input_name)
        if keep["worst"] and not kept:
            raise LwparError(f"{target}: quantize.keep_float kept no node in FP32 (no place of error drop >= "
                             f"{keep['min_drop_db']} dB): this mixed form would be the full INT8 model")
        _carry_metadata(source, out, cfg, kept)
        line = _write_errors(errors_out, table)
        return f"{line}; kept in FP32: {', '.join(kept)}" if kept else line


def _quantize_static(prepared: Path, out: Path, cfg: dict, batches, excluded: list[str], input_name: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = ImageCalibration(input_name, batches, -(-cfg["calibration_images"] // CALIBRATION_BATCH))
    try:
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=cfg["op_types"], nodes_to_exclude=excluded,
                        per_channel=cfg["per_channel"], reduce_range=cfg["reduce_range"], weight_type=QuantType.QInt8,
                        activation_type=getattr(QuantType, ACTIVATIONS[cfg["activations"]]),
                        calibrate_method=getattr(CalibrationMethod, METHODS[cfg["calibration"]]),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        reader.progress.close(final_line=False)


def _quantize_nncf(source: Path, prepared: Path, out: Path, cfg: dict, batches, input_name: str,
                   errors_out: Path | None) -> str:
    """NNCF's post-training quantization of the ONNX model, as NNCF users run it (its default preset:
    symmetric INT8 weights per channel and activations, its fast bias correction), calibrated on the
    same images as ONNX Runtime's and on the same compute ops; the result is a QDQ ONNX model both
    runtimes read."""
    import logging

    import onnx

    try:
        import nncf
    except ImportError:
        raise LwparError("quantize.engine nncf: NNCF is not installed (pip install nncf)") from None
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step info lines would bury the log's progress
    reader = ImageCalibration(input_name, batches, -(-cfg["calibration_images"] // CALIBRATION_BATCH))
    feeds = list(iter(reader.get_next, None))  # decoded first (counted in the log), then NNCF's passes
    # the compute ops `op_types` leaves out stay float, as with ONNX Runtime's quantizer (the fused head's
    # MatMuls: ONNX Runtime cannot run NNCF's per-channel MatMul as MatMulIntegerToFloat)
    ignored = [op for op in sorted(COMPUTE_OPS) if cfg["op_types"] and op not in cfg["op_types"]]
    quantized = nncf.quantize(onnx.load(str(prepared)), nncf.Dataset(feeds), subset_size=len(feeds),
                              ignored_scope=nncf.IgnoredScope(types=ignored, validate=False) if ignored else None)
    onnx.save(quantized, str(out))
    _carry_metadata(source, out, {"engine": "nncf", "mode": "static", "calibration": "nncf's default",
                                  "weight_bits": f"8 (nncf {nncf.__version__})"})
    # ONNX Runtime's QDQ debugging helpers pair tensors by the names its own quantizer gives them,
    # which NNCF's do not follow: the table lists nothing rather than a wrong pairing
    _write_errors(errors_out, None)
    return "no tensor error measured: engine nncf (ONNX Runtime's QDQ debugging cannot pair its tensors)"


def _check_something_quantized(graph, op_types: list[str] | None, excluded: list[str]) -> None:
    compute = [n.name for n in graph.node if n.op_type in COMPUTE_OPS and (not op_types or n.op_type in op_types)]
    if compute and not set(compute) - set(excluded):
        raise LwparError(f"quantize.keep_float would keep all {len(compute)} quantizable compute nodes in FP32: "
                         f"nothing left to quantize (lower keep_float.worst or raise keep_float.min_drop_db)")


def _write_errors(path: Path | None, table) -> str:
    """The error table (`quant_error`), or its header alone when nothing was measured."""
    import pandas as pd

    from lwpar.deploy.quant_error import COLUMNS, summary

    if path is None:
        return ""
    table = pd.DataFrame(columns=COLUMNS) if table is None else table
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return summary(table)


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def weight_range(setting, flags: set[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """`quantize.reduce_range` resolved: (7-bit weights?, why). `auto` follows this CPU: x86 kernels without
    VNNI add u8 x s8 products pairwise in int16 (vpmaddubsw), which 8-bit weights can saturate; VNNI
    accumulates in int32, and ARM's dot products too."""
    import platform

    from lwpar.core.machine import cpu_flags

    if setting != "auto":
        return bool(setting), "set in quantize.reduce_range"
    machine = (machine or platform.machine()).lower()
    if machine.startswith(("arm", "aarch64")):
        return False, f"auto: {machine} accumulates 8-bit products in int32"
    flags = cpu_flags() if flags is None else flags
    found = [f for f in VNNI_FLAGS if f in flags]
    if found:
        return False, f"auto: this CPU has {found[0]}"
    return True, "auto: this CPU has no VNNI (8-bit weights could saturate its int16 sums)"


def _carry_metadata(source: Path, target: Path, cfg: dict, kept_float: list[str] = ()) -> None:
    """An lwpar artifact's INT8 form says what it is too (ONNX Runtime's quantizer drops metadata)."""
    from lwpar.deploy.artifact import KEY, copy_metadata

    import onnx

    if any(p.key == KEY for p in onnx.load(str(source), load_external_data=False).metadata_props):
        copy_metadata(source, target, precision="int8",
                      quantization={**{k: cfg[k] for k in ("engine", "mode", "calibration", "weight_bits")},
                                    "kept_float": list(kept_float)})
