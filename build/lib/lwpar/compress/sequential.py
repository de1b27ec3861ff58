"""The sequential fit (`decompose.fit: sequential`): layer after layer in execution order, each layer is
fitted to the output that the uncompressed model's layer gives on its own inputs, from the inputs
that the partly compressed model gives it (the "asymmetric" reconstruction of Zhang et al., TPAMI
2016), so that errors of earlier layers are corrected instead of piling up.

With X the uncompressed model's unfolded inputs and X^ the compressed model's (rows), the layer's
weights W and replacement W', minimize ||X W^T - X^ W'^T||^2 + lambda ||(W' - W) ||^2 (ridge towards
W). Its unconstrained solution is W* = W (C^T + lambda I)(S^ + lambda I)^(-1), with S^ = X^T^ X^ / n
and C = X^^T X / n, and the error splits into ||X^ (W* - W')^T||^2 plus a constant: the constrained
(low-rank) fit is the covariance fit of W* in the metric of S^. When the inputs are unchanged
(X^ = X), W* = W and this is the covariance fit.

The layers' inputs come block by block (`walk.BlockWalk`): each block's inputs once per model, then
each of its layers' inputs by running that block alone, so the walk costs a few forward passes in all
instead of one partial pass per layer and model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lwpar.compress.calibration import unfolded
from lwpar.compress.decompose.metric import InputMetric
from lwpar.compress.walk import BlockWalk, block_of, execution_order, run_to
from lwpar.core.errors import LwparError


class SequentialFit:
    """The uncompressed `teacher` and the fitting images (a tensor, run in chunks of `batch_size` on
    `device`); `fitting` gives the next layer its metric and target weight from the student as the
    layers before it left it."""

    def __init__(self, teacher: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, ridge: float):
        self.teacher = teacher.eval().to(device)
        self.images, self.batch_size, self.device, self.ridge = images, batch_size, device, ridge
        self.walk: BlockWalk | None = None
        self._blocks: list[str] = []

    def order(self, names: list[str]) -> list[str]:
        """`names` (the layers to fit) in execution order, which visits the blocks one after another."""
        order = execution_order(self.teacher, names, self.images[:1].to(self.device))
        self._blocks = list(dict.fromkeys(block_of(self.teacher, name) for name in order))
        return order

    def _walk_to(self, student: nn.Module, name: str) -> str:
        """Enter the block of layer `name` (leaving the one before it); its name relative to the block."""
        block = block_of(self.teacher, name)
        if self.walk is None or self.walk.models["student"] is not student:
            self.walk = BlockWalk(self.teacher, student.eval().to(self.device), self._blocks or [block], {"fit": self.images},
                                  self.batch_size, self.device)
        if self.walk.current != block:
            if self.walk.current is not None:
                self.walk.leave()
            self.walk.enter(block)
        return name[len(block) + 1:] if name != block else ""

    @torch.no_grad()
    def moments(self, student: nn.Module, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(S^, C, rows): the second moment of the student's unfolded inputs of layer `name` and their
        cross moment with the teacher's, over the fitting images."""
        layer = self.teacher.get_submodule(name)
        inner = self._walk_to(student, name)
        blocks = {who: self.walk.module(who) for who in ("teacher", "student")}
        own = cross = None
        rows = 0
        for start in range(0, len(self.images), self.batch_size):
            entering = {who: self.walk.inputs[who, "fit"][start:start + self.batch_size].to(self.device)
                        for who in blocks}
            theirs, ours = (unfolded(layer, run_to(blocks[who], inner, entering[who]) if inner else entering[who]).double()
                            for who in ("teacher", "student"))
            own = ours.T @ ours if own is None else own + ours.T @ ours
            cross = ours.T @ theirs if cross is None else cross + ours.T @ theirs
            rows += ours.shape[0]
        return (own / rows).cpu().numpy(), (cross / rows).cpu().numpy(), rows

    def fitting(self, student: nn.Module, name: str, shape: dict, rank: int) -> tuple[InputMetric, np.ndarray]:
        """The metric (S^) and target weight (W*, the layer's kernel shape) that layer `name` of
        `student` is fitted with."""
        own, cross, rows = self.moments(student, name)
        if rows < rank:
            raise LwparError(f"sequential fit: layer {name}: {rows} calibration inputs cannot fit rank {rank} "
                             f"(raise calibration.images)")
        weight = self.teacher.get_submodule(name).weight.detach().double().cpu().numpy()
        return InputMetric(own, shape, self.ridge), corrected_target(weight, own, cross, self.ridge)


def corrected_target(weight: np.ndarray, own: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
    """W* = W (C^T + lambda I)(S^ + lambda I)^(-1), lambda = ridge * mean eigenvalue of S^ (see above)."""
    w = weight.reshape(weight.shape[0], -1)
    lam = ridge * max(float(np.trace(own)) / own.shape[0], 1e-30)
    identity = np.eye(own.shape[0])
    # W* (S^ + lambda I) = W (C^T + lambda I): one symmetric solve
    target = np.linalg.solve(own + lam * identity, (cross + lam * identity) @ w.T).T
    return target.reshape(weight.shape)
