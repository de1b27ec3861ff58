"""Model surgery: pick the layers, measure their shapes and sizes, factorize each layer, and rebuild a
saved decomposed architecture without decomposing again. Ranks are chosen by `compress.ranks`."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from lwpar.compress.decompose import layers as L
from lwpar.compress.decompose import methods as M
from lwpar.compress.decompose.metric import output_error


def _kernel_shape(layer: nn.Module) -> dict:
    if isinstance(layer, nn.Linear):
        return {"in": layer.in_features, "out": layer.out_features, "kh": 1, "kw": 1}
    kh, kw = layer.kernel_size
    return {"in": layer.in_channels, "out": layer.out_channels, "kh": kh, "kw": kw}


HEAD_PARTS = (".att_list.", ".stn_list.", ".fc_list.")


def select_layers(model: nn.Module, kinds: list[str], include_first: bool = False,
                  include_heads: bool | str = False, min_channels: int = 8, factorized: tuple[str, ...] = ()) -> list[str]:
    """Names of the layers to factorize: of the given kinds ('kxk', 'pointwise', 'linear'); the ALM
    attribute heads' layers with include_heads true, only them with 'only', none with false; never
    the first conv unless asked (a 3-channel input leaves CP and Tucker-2 nothing to cut on the input
    side; SVD of its C_out x (3 k k) unfolding can), and never a piece of a layer that an earlier step
    factorized (`factorized`: those layers' names). Layers narrower than `min_channels` on either side
    of that unfolding are left alone."""
    names, first_seen = [], False
    for name, module in model.named_modules():
        kind = L.eligible(module)
        if kind is None:
            continue
        is_first = isinstance(module, nn.Conv2d) and not first_seen
        first_seen = first_seen or isinstance(module, nn.Conv2d)
        if is_first and not include_first:
            continue
        head = in_head(name)
        if (head and include_heads is False) or (not head and include_heads == "only"):
            continue
        if any(name.startswith(f"{done}.") for done in factorized):
            continue
        shape = _kernel_shape(module)
        if kind in kinds and min(shape["in"] * shape["kh"] * shape["kw"], shape["out"]) >= min_channels:
            names.append(name)
    return names


def factorized_layers(structure: list[dict]) -> tuple[str, ...]:
    """Names of the layers that earlier decomposition steps of a model file replaced."""
    return tuple(entry["layer"] for step in structure if step["op"] == "decompose" for entry in step["plan"])


def method_for(kind: str, methods: dict) -> str:
    return methods["kxk"] if kind == "kxk" else methods["pointwise"]


@contextmanager
def published_heads(model: nn.Module):
    """The ALM's attribute heads computed as published while the block runs: the fused head reads its
    attention weights without calling the modules, so forward hooks on them would never fire."""
    levels = [m for m in model.modules() if getattr(m, "head", None) == "fused"]
    for level in levels:
        level.head = "reference"
    try:
        yield
    finally:
        for level in levels:
            level.head = "fused"


def in_head(name: str) -> bool:
    return any(part in name for part in HEAD_PARTS)


def layer_io_sizes(model: nn.Module, names: list[str], input_size) -> dict[str, tuple]:
    """(input HxW, output HxW) of each named layer at `input_size`, from one forward pass."""
    sizes, hooks = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(module, inputs, output, name=name):
            if output.dim() == 4:
                sizes[name] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))
            else:
                sizes[name] = ((1, 1), (1, 1))
        hooks.append(modules[name].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size))
            if set(names) - set(sizes):  # heads' layers: through the published (slow) computation
                with published_heads(model):
                    model(torch.zeros(1, 3, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def factorized_macs(method: str, shape: dict, rank: int, io: tuple) -> int:
    """MACs of the factorized layer, by the method's formula."""
    return M.method(method).macs(shape, rank, io)


def original_macs(shape: dict, io: tuple) -> int:
    (_, _), (ho, wo) = io
    return ho * wo * shape["in"] * shape["out"] * shape["kh"] * shape["kw"]


def layer_info(model: nn.Module, names: list[str], methods: dict, input_size, io: dict | None = None) -> list[dict]:
    """Per selected layer: name, kind, method, kernel shape and I/O sizes (what every rank policy needs;
    `io`: the sizes from `layer_io_sizes`, if already measured)."""
    modules = dict(model.named_modules())
    io = io or layer_io_sizes(model, names, input_size)
    info = []
    for name in names:
        kind = L.eligible(modules[name])
        info.append({"layer": name, "kind": kind, "method": method_for(kind, methods),
                     "shape": _kernel_shape(modules[name]), "io": io[name]})
    return info


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def factorize_layer(layer: nn.Module, method: str, rank: int, seed: int = 0, epc: dict | None = None,
                    metric=None, heldout: np.ndarray | None = None, target: np.ndarray | None = None) -> tuple[nn.Module, dict]:
    """Factorize one layer (fitting its output in `metric`, an `InputMetric`, if given; fitting `target`
    instead of its weight, the sequential fit's corrected weight, if given); returns the replacement
    and figures for the layer table: the weights' relative error and, with `heldout` (a second moment
    of held-out inputs), the output's, both against the layer's own weight."""
    weight = layer.weight.detach().double().cpu().numpy()
    started = time.time()
    new, approx, stats = M.method(method).factorize(layer, weight if target is None else target, rank, seed, epc,
                                                    metric)
    stats["relative_error"] = float(np.linalg.norm(weight - approx) / np.linalg.norm(weight))
    if heldout is not None:
        stats["output_error"] = output_error(weight, approx, heldout)
    if metric is not None:
        stats.update(fit="covariance" if target is None else "sequential", ridge=metric.ridge)
    stats["seconds"] = round(time.time() - started, 3)
    return new.to(layer.weight.dtype), stats


def empty_factorized(layer: nn.Module, method: str, rank: int) -> nn.Module:
    """The replacement's structure with zero weights (to load a saved decomposed model into)."""
    return M.method(method).empty(layer, _kernel_shape(layer), rank)


def apply_plan(model: nn.Module, plan: list[dict], decompose: bool = True, seed: int = 0, epc: dict | None = None,
               progress=None, statistics=None, sequential=None) -> list[dict]:
    """Replace each planned layer; with decompose=False only the structure (for loading). With
    `statistics` (`compress.calibration.Statistics`), each layer is fitted to its output on the
    calibration inputs, and its output error on the held-out ones is recorded; with `sequential` too
    (`compress.sequential.SequentialFit`), the layers are fitted in execution order, each from the
    inputs the layers before it now give it."""
    if sequential is not None:
        order = sequential.order([entry["layer"] for entry in plan])
        plan = sorted(plan, key=lambda entry: order.index(entry["layer"]))
    rows = []
    for entry in plan:
        layer = model.get_submodule(entry["layer"])
        if decompose:
            fitting = {} if statistics is None else {
                "metric": statistics.metric(entry["layer"], _kernel_shape(layer), entry["rank"]),
                "heldout": statistics.heldout(entry["layer"])}
            if sequential is not None:
                started = time.time()
                fitting["metric"], fitting["target"] = sequential.fitting(model, entry["layer"], _kernel_shape(layer),
                                                                          entry["rank"])
                capture_seconds = round(time.time() - started, 3)
            new, stats = factorize_layer(layer, entry["method"], entry["rank"], seed, epc, **fitting)
            if sequential is not None:
                stats["capture_seconds"] = capture_seconds
        else:
            new, stats = empty_factorized(layer, entry["method"], entry["rank"]), {}
        rows.append({**entry, **stats, "params_before": L.layer_params(layer), "params_after": L.layer_params(new)})
        _replace(model, entry["layer"], new.to(layer.weight.device))
        if progress:
            progress(entry, stats)
    return rows
