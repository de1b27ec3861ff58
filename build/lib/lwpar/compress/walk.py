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
    _run_hooked(model, images, [modules[n].register_forward_pre_hook(
        lambda m, args, n=n: seen.append(n) if n not in seen else None) for n in names])
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


@torch.no_grad()
def feeders(model: nn.Module, blocks: list[str], images: torch.Tensor) -> dict[str, str | None]:
    """For each of `blocks`, the earlier one among them whose output is its first input, unchanged
    (the same tensor holding the same values when the block starts), else None. A block with a
    feeder gets its inputs by running the feeder alone on the feeder's own inputs."""
    modules = dict(model.named_modules())
    made: dict[int, tuple[str, torch.Tensor, torch.Tensor]] = {}
    fed: dict[str, str | None] = {}

    def leaving(name, output):
        if isinstance(output, torch.Tensor) and all(entry[0] != name for entry in made.values()):
            made[id(output)] = (name, output, output.clone())

    def entering(name, args):
        if name in fed:
            return
        value = args[0] if args else None
        source = made.get(id(value)) if isinstance(value, torch.Tensor) else None
        # an operation between the blocks that changed the tensor in place breaks the chain
        fed[name] = source[0] if source and source[1] is value and torch.equal(source[2], value) else None

    handles = []
    for name in blocks:
        handles += [modules[name].register_forward_pre_hook(lambda m, args, n=name: entering(n, args)),
                    modules[name].register_forward_hook(lambda m, args, output, n=name: leaving(n, output))]
    _run_hooked(model, images, handles)
    return {name: fed.get(name) for name in blocks}


def _run_hooked(model: nn.Module, images: torch.Tensor, handles: list) -> None:
    """One forward pass of `model` (ALM heads as published, so their modules are called) with the hooks
    `handles` installed, removed afterwards whatever happens."""
    try:
        with published_heads(model):
            model(images)
    finally:
        for handle in handles:
            handle.remove()


class BlockWalk:
    """The inputs of `blocks` in a `teacher` and a `student` model on named image sets, block after
    block in execution order (`enter`, then `leave` once the student's block is final). A block fed
    directly by an earlier block (`feeders`: a ResNet stage's bottlenecks, a lateral layer reading a
    stage's last block) gets them by running that block alone on the inputs it had, kept until its
    last consumer entered; any other by one forward pass stopped at the block. So the walk costs
    about one forward pass per model, not one per block (`run_to` from the images every time)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, blocks: list[str], images: dict[str, torch.Tensor],
                 batch_size: int, device: torch.device):
        self.models = {"teacher": teacher, "student": student}
        self.images, self.batch_size, self.device = images, batch_size, device
        probe = next(iter(images.values()))[:1].to(device)
        self.order = execution_order(teacher, blocks, probe)
        self.feeds = feeders(teacher, self.order, probe)
        self.consumers = {name: sum(source == name for source in self.feeds.values()) for name in self.order}
        self.kept: dict[str, dict] = {}
        self.current: str | None = None
        self.visited: set[str] = set()
        self.inputs: dict[tuple[str, str], torch.Tensor] = {}
        self._outputs: dict[tuple[str, str], torch.Tensor] = {}

    def module(self, who: str) -> nn.Module:
        """The current block of model `who` ("teacher" or "student"), as it is now."""
        return self.models[who].get_submodule(self.current)

    def enter(self, block: str) -> dict[tuple[str, str], torch.Tensor]:
        """Start `block`: its inputs, keyed by (model, image set), on the CPU."""
        if self.current is not None or block in self.visited:
            raise LwparError(f"block walk: {block} entered " + (f"before {self.current} was left" if self.current
                                                                else "twice (its blocks run interleaved)"))
        self.visited.add(block)
        source = self.feeds[block]
        for who, model in self.models.items():
            for part, images in self.images.items():
                self.inputs[who, part] = (self.kept[source][who, part] if source else
                                          self._chunked(lambda x: run_to(model, block, x, "input"), images))
        if source:
            self.consumers[source] -= 1
            if not self.consumers[source]:
                del self.kept[source]
        self.current = block
        return self.inputs

    def output(self, who: str, part: str) -> torch.Tensor:
        """The current block's output in model `who` on image set `part` (the teacher's once, the
        student's as it is now)."""
        if who == "teacher" and (who, part) in self._outputs:
            return self._outputs[who, part]
        module = self.module(who)
        value = self._chunked(module, self.inputs[who, part])
        if who == "teacher":
            self._outputs[who, part] = value
        return value

    def leave(self) -> None:
        """End the current block: its outputs are kept (the student's as it left them) while a later
        block reads them."""
        if self.consumers[self.current]:
            self.kept[self.current] = {(who, part): self.output(who, part) for who in self.models for part in self.images}
        self.current, self.inputs, self._outputs = None, {}, {}

    @torch.no_grad()
    def _chunked(self, function, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([function(tensor[i:i + self.batch_size].to(self.device)).cpu()
                          for i in range(0, len(tensor), self.batch_size)])
