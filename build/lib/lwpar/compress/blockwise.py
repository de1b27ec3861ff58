"""Block-wise reconstruction (`variants.<v>.blockwise`), before fine-tuning: every block of the compressed
model that holds a layer compression changed (`walk.block_of`: a ResNet bottleneck, an ALM level, a
lateral convolution) is trained for a bounded number of steps to reproduce the uncompressed block's
output (feature-map MSE, relative to the output's energy), in execution order, each from the inputs
the blocks before it now give it (FSKD, CVPR 2020; BRECQ's block granularity). Each step runs one
block on cached inputs, not the whole model, and the inputs come from the block before it run alone
where it feeds this one (`walk.BlockWalk`).

Only the changed layers' parameters move (the factors of a decomposed layer, the kept channels of a
pruned one); BatchNorm runs on its stored statistics and is re-estimated afterwards by the fine-tuning
schedule as usual. A block whose held-out error rose is put back as it was; a block whose output
shape compression changed (a pruning that removed its output channels) has no target and is skipped,
with the reason in its record.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from lwpar.compress.walk import BlockWalk, block_of, changed_modules
from lwpar.core.progress import Progress


@torch.no_grad()
def _relative_error(module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                    device: torch.device) -> float:
    """||block(inputs) - targets||^2 / ||targets||^2."""
    error = energy = 0.0
    for i in range(0, len(inputs), batch_size):
        target = targets[i:i + batch_size].to(device)
        error += float((module(inputs[i:i + batch_size].to(device)) - target).double().pow(2).sum())
        energy += float(target.double().pow(2).sum())
    return error / max(energy, 1e-300)


def reconstruct_blocks(student: nn.Module, teacher: nn.Module, images: torch.Tensor, heldout: torch.Tensor,
                       cfg: dict, device: torch.device, seed: int, capture_batch: int = 16) -> dict:
    """Reconstruct `student`'s changed blocks in place towards `teacher`'s, on `images` (scored on
    `heldout`); `cfg`: the `blockwise` block (steps, batch_size, lr). Returns the record for
    finetune.json: per block its changed layers, trained parameters, relative errors before and
    after (fitting and held-out images) and seconds; and the total seconds."""
    started = time.time()
    student.eval().to(device)
    teacher.eval().to(device)
    changed = changed_modules(teacher, student)
    blocks = list(dict.fromkeys(block_of(teacher, name) for name in changed))
    if not blocks:
        return {"blocks": [], "seconds": 0.0}
    walk = BlockWalk(teacher, student, blocks, {"fit": images, "heldout": heldout}, capture_batch, device)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with Progress(len(walk.order) * cfg["steps"], "block reconstruction", unit="step", items="images") as progress:
        for block in walk.order:
            layers = [n for n in changed if n == block or n.startswith(f"{block}.")]
            started_block = time.time()
            rows.append(_reconstruct(student, walk, block, layers, cfg, device, generator, capture_batch, progress))
            walk.leave()  # the student's block output, for the blocks it feeds
            rows[-1]["seconds"] = round(time.time() - started_block, 2)
    return {"blocks": rows, "seconds": round(time.time() - started, 1)}


def _reconstruct(student, walk: BlockWalk, block, layers, cfg, device, generator, capture_batch, progress) -> dict:
    started = time.time()
    walk.enter(block)
    inputs, targets = walk.inputs["student", "fit"], walk.output("teacher", "fit")
    module = student.get_submodule(block)
    with torch.no_grad():
        shape = tuple(module(inputs[:1].to(device)).shape[1:])
    if shape != tuple(targets.shape[1:]):  # e.g. a pruning that removed the block's output channels
        return {"block": block, "layers": len(layers), "kept": False,
                "skipped": f"its output is {list(shape)}, the uncompressed block's {list(targets.shape[1:])}: "
                           f"no target to train it towards", "seconds": round(time.time() - started, 2)}
    held_inputs, held_targets = walk.inputs["student", "heldout"], walk.output("teacher", "heldout")
    captured = time.time() - started
    trained = [p for name in layers for p in student.get_submodule(name).parameters()]
    requires = {p: p.requires_grad for p in module.parameters()}
    before = {"fit": _relative_error(module, inputs, targets, capture_batch, device),
              "heldout": _relative_error(module, held_inputs, held_targets, capture_batch, device)}
    saved = [p.detach().clone() for p in trained]
    for p in module.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=cfg["lr"])
    steps = cfg["steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    try:
        for _ in range(steps):
            chosen = torch.randint(len(inputs), (min(cfg["batch_size"], len(inputs)),), generator=generator)
            target = targets[chosen].to(device)
            loss = F.mse_loss(module(inputs[chosen].to(device)), target) / target.pow(2).mean().clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(items=len(chosen), note=f"{block}: relative error {loss.item():.4f}")
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
    after = {"fit": _relative_error(module, inputs, targets, capture_batch, device),
             "heldout": _relative_error(module, held_inputs, held_targets, capture_batch, device)}
    kept = after["heldout"] <= before["heldout"]
    if not kept:  # training on too few images made the block worse on others: keep it as compression left it
        with torch.no_grad():
            for p, value in zip(trained, saved):
                p.copy_(value)
    return {"block": block, "layers": len(layers), "parameters": sum(p.numel() for p in trained), "steps": steps,
            "error_before": round(before["fit"], 6), "error_after": round(after["fit"], 6),
            "heldout_error_before": round(before["heldout"], 6), "heldout_error_after": round(after["heldout"], 6),
            "kept": kept, "capture_seconds": round(captured, 2), "seconds": round(time.time() - started, 2)}
