"""The metric a layer is fitted in: the second moment S = E[x x^T] of its unfolded input x (a k x k
convolution's input patch, channel-major: index c * kh * kw + i * kw + j), so that a factorization
minimizes the error of the layer's output, E||(W - W') x||^2 = ||(W - W') S^(1/2)||_F^2, instead of
the error of its weights (S = I).

SVD takes S whole (closed form: the truncated SVD of W S^(1/2), mapped back by S^(-1/2), as SVD-LLM
whitens). Spatial SVD, Tucker-2 and CP factor one input mode each, so they take S as a Kronecker
product of per-mode statistics, S ~ S_channels (x) S_rows (x) S_columns (each the partial trace of S
over the other modes): the kernel is transformed mode by mode by S_mode^(1/2), decomposed, and each
input-mode factor mapped back by S_mode^(-1/2); the output mode is not touched. The structure of each
factorization survives both transforms, so the result is a factorization of the same shape.

Statistics of real activations are ill-conditioned (ReLU outputs, dead channels): every S is
regularised as S + ridge * mean(eigenvalues) * I before its roots are taken, which bounds how much a
direction with almost no variance can be amplified on the way back (1 / sqrt(ridge)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

RIDGE = 1e-2  # default regulariser, relative to the mean eigenvalue


def _roots(matrix: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """S^(1/2) and S^(-1/2) of a symmetric positive semi-definite matrix, regularised."""
    matrix = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(matrix)
    values = np.maximum(values, 0.0) + ridge * max(float(np.mean(np.maximum(values, 0.0))), 1e-30)
    root = np.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


@dataclass
class InputMetric:
    """The regularised second moment of one layer's unfolded input, for a kernel of `shape`
    {"in", "kh", "kw", ...}; its roots, whole and per input mode, computed on first use."""

    second_moment: np.ndarray        # (in * kh * kw) square
    shape: dict
    ridge: float = RIDGE

    def __post_init__(self):
        size = self.shape["in"] * self.shape["kh"] * self.shape["kw"]
        if self.second_moment.shape != (size, size):
            raise ValueError(f"second moment of shape {self.second_moment.shape} for a kernel of {size} inputs")
        self.second_moment = np.asarray(self.second_moment, dtype=np.float64)

    @cached_property
    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        """(S^(1/2), S^(-1/2)) of the whole unfolded input."""
        return _roots(self.second_moment, self.ridge)

    def _modes(self) -> np.ndarray:
        c, h, w = self.shape["in"], self.shape["kh"], self.shape["kw"]
        return self.second_moment.reshape(c, h, w, c, h, w)

    @cached_property
    def channels(self) -> tuple[np.ndarray, np.ndarray]:
        """Roots of the input channels' statistics (the partial trace over the kernel positions)."""
        return _roots(np.einsum("chwdhw->cd", self._modes()), self.ridge)

    @cached_property
    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Roots of the kernel positions' statistics (kh * kw square, row-major)."""
        k = self.shape["kh"] * self.shape["kw"]
        return _roots(np.einsum("chwcij->hwij", self._modes()).reshape(k, k), self.ridge)

    @cached_property
    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        return _roots(np.einsum("chwcjw->hj", self._modes()), self.ridge)

    @cached_property
    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        return _roots(np.einsum("chwchj->wj", self._modes()), self.ridge)


def output_error(weight: np.ndarray, approx: np.ndarray, second_moment: np.ndarray) -> float:
    """Relative error of the layer's output over inputs of second moment S:
    sqrt(tr(dW S dW^T) / tr(W S W^T)), with W unfolded as C_out x (C_in kh kw)."""
    w = weight.reshape(weight.shape[0], -1)
    d = w - approx.reshape(approx.shape[0], -1)
    return float(np.sqrt(max(np.einsum("oi,ij,oj->", d, second_moment, d), 0.0)
                         / max(np.einsum("oi,ij,oj->", w, second_moment, w), 1e-300)))


def along(tensor: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """`tensor` with `matrix` (symmetric) applied along one axis: sum_i tensor[..i..] matrix[i, j]."""
    return np.moveaxis(np.tensordot(tensor, matrix, axes=([axis], [0])), -1, axis)
