"""Walking a compressed model beside its uncompressed teacher, one layer or block at a time: the tensor
entering or leaving one module, with nothing after it computed; the modules' order of execution;
which modules compression changed and the block each belongs to. The sequential fit
(`compress.sequential`) and block-wise reconstruction (`compress.blockwise`) both need, at every
step, the inputs that the steps before it produce."""

from __future__ import annotations

import torch
from torch import nn

from lwpar.compress.decompose.factorize import published_heads
from lwpar.core.errors import LwparError


class _Reached(Exception):
    """Raised by a hook to stop the forward pass once the tensor it waits for exists."""


@torch.no_grad()
def run_to(model: nn.Module, name: str, images: torch.Tensor, where: str = "input") -> torch.Tensor:
    """The first positional input (`where="input"`) or the output of module `name` when `model` runs on
    `images`; the rest of the forward pass is not computed. ALM heads run as published so that their
    modules are called."""
    module = model.get_submodule(name)
    found = {}

    def stop(value):
        if not isinstance(value, torch.Tensor):
            raise LwparError(f"module {name}: its {where} is a {type(value).__name__}, not a tensor")
        found["value"] = value.detach()
        raise _Reached

    handle = (module.register_forward_pre_hook(lambda m, args: stop(args[0])) if where == "input" else
              module.register_forward_hook(lambda m, args, output: stop(output)))
    try:
        with published_heads(model):
            model(images)
    except _Reached:
        return found["value"]
    finally:
        handle.remove()
    raise LwparError(f"module {name} never ran in the model's forward pass")


@torch.no_grad()
def execution_order(model: nn.Module, names: list[str], images: torch.Tensor) -> list[str]:
    """`names` in the order their modules first run on `images` (a module that never runs is refused)."""
    modules = dict(model.named_modules())
    seen: list[str] = []
    handles = [modules[n].register_forward_pre_hook(lambda m, args, n=n: seen.append(n) if n not in seen else None)
               for n in names]
    try:
        with published_heads(model):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise LwparError(f"module {missing[0]} never ran in the model's forward pass")
    return seen


def changed_modules(teacher: nn.Module, student: nn.Module) -> list[str]:
    """The teacher's modules with a parameter that the student lacks (a factorized layer), shapes
    otherwise (a pruned one) or holds other values (a refitted one): what compression changed."""
    held = dict(student.named_parameters())
    changed = []
    for name, module in teacher.named_modules():
        for key, value in module.named_parameters(recurse=False):
            other = held.get(f"{name}.{key}" if name else key)
            if other is None or other.shape != value.shape or not torch.equal(other.detach().cpu(), value.detach().cpu()):
                changed.append(name)
                break
    return changed


def block_of(model: nn.Module, name: str) -> str:
    """The block that module `name` is reconstructed in: its outermost enclosing module that is an element
    of an nn.Sequential (a ResNet bottleneck, an inverted residual, a VGG layer), else the ALM level
    holding it (an attribute head), else the module itself (a lateral 1 x 1 convolution)."""
    from lwpar.models.alm import LocalizationLevel

    modules = dict(model.named_modules())
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for prefix in prefixes:
        if isinstance(modules[prefix.rpartition(".")[0]], nn.Sequential):
            return prefix
    return next((p for p in prefixes if isinstance(modules[p], LocalizationLevel)), name)
