"""Device choice, seeding, thread settings and model checkpoints shared by every stage."""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lwpar import LwparError
from lwpar.io import atomic_path

MODEL_FORMAT = "lwpar-model/1"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LwparError(f"runtime.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


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


def training_precision(amp, device: torch.device, flags: set[str] | None = None) -> torch.dtype:
    """The dtype that training, fine-tuning and the sensitivity probes autocast to (`runtime.amp`):
    false: float32; true: float16 on CUDA (float32 elsewhere); bf16: bfloat16 on any device; auto:
    float16 on CUDA, bfloat16 on a CPU with AMX or AVX-512 BF16, float32 on other CPUs. An explicit bf16
    on a CPU without those instructions runs, with a warning: there it is slower than float32."""
    flags = cpu_flags() if flags is None else flags
    has_bf16 = any(flag in flags for flag in BF16_CPU_FLAGS)
    if amp == "bf16":
        if device.type == "cpu" and not has_bf16:
            import warnings

            warnings.warn(f"runtime.amp: bf16 on a CPU without {' or '.join(BF16_CPU_FLAGS)}: "
                          "it runs, but slower than float32", stacklevel=2)
        return torch.bfloat16
    if amp is True or amp == "auto":
        if device.type == "cuda":
            return torch.float16
        if amp == "auto" and device.type == "cpu" and has_bf16:
            return torch.bfloat16
    return torch.float32


# Largest relative change of the logits that autocast may cause before its kernels count as faulty.
# Rounding alone moves them by 0.7-5 % (bfloat16, measured on the packaged backbones); a faulty kernel
# gives NaN or values unrelated to float32's.
AUTOCAST_TOLERANCE = 0.25


def run_precision(model: torch.nn.Module, amp, input_size, device: torch.device) -> torch.dtype:
    """The precision training, fine-tuning and the probes run `model` in: `runtime.amp` resolved for
    this device (`training_precision`), checked on the model (`checked_precision`)."""
    return checked_precision(model, training_precision(amp, device), input_size, device)


def checked_precision(model: torch.nn.Module, precision: torch.dtype, input_size, device: torch.device) -> torch.dtype:
    """`precision`, or float32 with a warning when autocasting `model` to it at `input_size` changes its
    logits beyond rounding. Some oneDNN builds compute wrong bfloat16 convolutions on AMX for a few
    shapes (stride 2 with a one-column output, seen in torch 2.14.1); training through them diverges or
    learns from garbage. One forward of two fixed random images in eval mode: no state or RNG changes."""
    if precision == torch.float32:
        return precision
    was_training = model.training
    images = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.no_grad():
            exact = model(images).float()  # in eval mode every lwpar model returns one logit tensor
            with torch.autocast(device.type, dtype=precision):
                rounded = model(images).float()
    finally:
        model.train(was_training)
    scale = exact.abs().max().clamp_min(1e-12)
    change = ((rounded - exact).abs().max() / scale).item() if torch.isfinite(rounded).all() else math.inf
    if change <= AUTOCAST_TOLERANCE:
        return precision
    import warnings

    name = str(precision).removeprefix("torch.")
    warnings.warn(f"runtime.amp: {name} autocast changes this model's logits by {change:.3g} (relative) at input "
                  f"{list(input_size)} on this {device.type} (a faulty kernel); running in float32", stacklevel=2)
    return torch.float32


def configure(params: dict) -> torch.device:
    threads = params["runtime"]["threads"]
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(params["runtime"]["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_torch(obj, path: str | Path) -> None:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as exc:
        raise LwparError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError
        reason = os.strerror(errno.ENOSPC) if _disk_full(path) else str(exc).splitlines()[0]
        raise LwparError(f"{path}: cannot write ({reason})") from None


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False


def load_torch(path: str | Path, what: str = "checkpoint") -> dict:
    path = Path(path)
    if not path.is_file():
        raise LwparError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, bad pickle, ...: torch raises many types
        raise LwparError(f"{path}: corrupt or truncated {what} ({type(exc).__name__})") from None


def lineage(blob: dict, **step) -> list[dict]:
    """The steps that made a model file, this one appended. Every job's model then differs from every
    other job's, even when their weights are equal (a fine-tuning that keeps its start model): DVC's
    cache would otherwise hardlink two jobs' outputs into one file, and touching one moves both mtimes."""
    return [*blob.get("lineage", []), step]


def save_model(path: str | Path, model: torch.nn.Module, model_cfg: dict, attributes: list[str], **extra) -> None:
    save_torch({"format": MODEL_FORMAT, "model_cfg": model_cfg, "attributes": attributes,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}, path)
