"""Device choice, training precision, seeding and thread settings shared by every stage."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from lwpar.core.errors import LwparError
from lwpar.core.machine import BF16_CPU_FLAGS, cpu_flags


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LwparError(f"runtime.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


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
