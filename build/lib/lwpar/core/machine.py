"""What machine a measurement ran on: the CPU's model and feature flags (as Linux reports them) and
the versions of the libraries that run the models. Every latency figure carries it."""

from __future__ import annotations

import os
import platform


# CPU instructions that run bfloat16 matrix products at speed (Intel AMX, AVX-512 BF16 on Intel and AMD)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    except OSError:
        return None


# Inference runtimes an artifact runs on, and the precisions OpenVINO's CPU plugin can run FP32 layers in
RUNTIMES = ("onnxruntime", "openvino")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")


def not_installed(package: str) -> str | None:
    """The one-line reason a package is missing ("<package> is not installed (pip install <package>)"),
    or None when it can be imported: what planning and the stages say alike."""
    import importlib.util

    return None if importlib.util.find_spec(package) else f"{package} is not installed (pip install {package})"


def runtime_version(runtime: str) -> str | None:
    """The installed version of an inference runtime (`onnxruntime`, `openvino`), None when it is absent."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(runtime) is None:
        return None
    if runtime == "openvino":
        import openvino

        return openvino.get_version().split("-")[0]
    return importlib.import_module(runtime).__version__


def machine_info() -> dict:
    """The machine, its CPU (model, instruction sets that decide kernel speed) and library versions."""
    info = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    flags = cpu_flags()
    if flags:
        info.update(cpu_model=cpu_model(), avx2="avx2" in flags, avx512f="avx512f" in flags,
                    avx512_vnni="avx512_vnni" in flags, avx_vnni="avx_vnni" in flags, amx="amx_tile" in flags)
    import numpy as np
    import onnxruntime
    import torch

    info["versions"] = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "numpy": np.__version__}
    if runtime_version("openvino"):
        info["versions"]["openvino"] = runtime_version("openvino")
    return info


