"""The runtimes an exported ONNX artifact runs on: ONNX Runtime (CPU provider by default) and OpenVINO
(its CPU plugin reads the ONNX file directly). Both are opened through `open_session`, which gives
an OpenVINO model the few methods of an ONNX Runtime session the scorer, the predictor and the export
check call (`get_inputs`, `run`, `get_modelmeta`), so every caller runs either unchanged.

OpenVINO's CPU plugin runs an FP32 model in bfloat16 by default on CPUs with AMX or AVX512-BF16;
`precision` (a profile target's `inference_precision`) says what it runs in, f32 by default, so
that both runtimes score the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lwpar.core.errors import LwparError
from lwpar.core.machine import INFERENCE_PRECISIONS as PRECISIONS, RUNTIMES, not_installed



def require(runtime: str) -> None:
    """A one-line LwparError when `runtime` is unknown or not installed (naming the pip command)."""
    if runtime not in RUNTIMES:
        raise LwparError(f"runtime {runtime!r}: unknown (known: {', '.join(RUNTIMES)})")
    if not_installed(runtime):
        raise LwparError(f"runtime {runtime}: {not_installed(runtime)}")


def openvino_config(threads: int, precision: str = "f32") -> dict:
    """OpenVINO CPU plugin settings: latency hint (one stream), `threads` (0: the plugin's choice, all
    cores) and the inference precision."""
    if precision not in PRECISIONS:
        raise LwparError(f"inference precision {precision!r}: unknown (known: {', '.join(PRECISIONS)})")
    from lwpar.deploy import bench_worker  # the worker is standalone on targets: its settings are the one copy

    return bench_worker.openvino_config(threads, precision)


@dataclass
class _Input:
    name: str
    shape: list


@dataclass
class _Meta:
    custom_metadata_map: dict


class OpenVINOSession:
    """An ONNX file compiled by OpenVINO for its CPU plugin, called like an ONNX Runtime session. The
    batch axis stays dynamic: one compiled model serves every batch size."""

    def __init__(self, path: Path, threads: int = 0, precision: str = "f32"):
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises a RuntimeError naming the unsupported op or the parse error
            raise LwparError(f"{path}: OpenVINO cannot read this model ({openvino_reason(exc)})") from None
        try:
            self.compiled = core.compile_model(model, "CPU", openvino_config(threads, precision))
        except Exception as exc:
            raise LwparError(f"{path}: OpenVINO cannot compile this model for CPU ({openvino_reason(exc)})") from None
        self.path = path
        self._inputs = [_Input(port.get_any_name(), [d.get_length() if d.is_static else None
                                                       for d in port.get_partial_shape()]) for port in model.inputs]
        self._outputs = list(self.compiled.outputs)
        self._request = self.compiled.create_infer_request()

    def get_inputs(self) -> list[_Input]:
        return self._inputs

    def run(self, output_names, feed: dict) -> list:
        results = self._request.infer(feed)
        return [results[port].copy() for port in self._outputs]

    def get_modelmeta(self) -> _Meta:
        from lwpar.deploy.artifact import KEY, _metadata_text

        text = _metadata_text(self.path)
        return _Meta({KEY: text} if text is not None else {})


def open_session(path: str | Path, threads: int = 0, runtime: str = "onnxruntime", precision: str = "f32",
                 providers=None):
    """An inference session for the ONNX file at `path` on `runtime`; a missing, damaged or uncompilable
    file, or a runtime that is not installed, is a one-line LwparError."""
    from lwpar.deploy.artifact import onnx_session

    require(runtime)
    if runtime == "onnxruntime":
        return onnx_session(path, threads, providers)
    path = Path(path)
    if not path.is_file():
        raise LwparError(f"{path}: ONNX model not found")
    return OpenVINOSession(path, threads, precision)


def openvino_reason(exc: Exception) -> str:
    """OpenVINO's message without the source-file lines it opens with."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.strip().startswith(("Exception from", "Check '"))]
    return (lines[0] if lines else type(exc).__name__)[:200]
