"""The decomposition methods, one class each behind one registry (as tensorly and Torch-Pruning keep
theirs): how a method factorizes a weight, the empty structure a saved model is loaded into, its
parameter count per rank and its MACs. Adding a method is one `@register`ed class.

Shapes are dicts {"in", "out", "kh", "kw"} (a linear layer is a 1 x 1 kernel); `io` is
((input height, width), (output height, width)). With a `metric` (`decompose.metric.InputMetric`), a
method fits the layer's output on the calibration inputs instead of its weights.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
from torch import nn

from lwpar.core.errors import LwparError
from lwpar.compress.decompose import _cp
from lwpar.compress.decompose import layers as L
from lwpar.compress.decompose.metric import InputMetric, along

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise LwparError(f"unknown decomposition method {name!r} (known: {', '.join(METHODS)})") from None


class Method:
    """One decomposition method. Subclasses set `name` and implement the four class methods."""

    name: str

    @classmethod
    def factorize(cls, layer: nn.Module, weight: np.ndarray, rank: int, seed: int, epc: dict | None,
                  metric: InputMetric | None = None) -> tuple[nn.Module, np.ndarray, dict]:
        """The replacement layer, the weight it approximates (for the errors) and extra figures; with
        `metric`, fitted to the layer's output on the calibration inputs."""
        raise NotImplementedError

    @classmethod
    def empty(cls, layer: nn.Module, shape: dict, rank: int) -> nn.Module:
        """The replacement's structure with zero weights (to load a saved decomposed model into)."""
        raise NotImplementedError

    @classmethod
    def params(cls, shape: dict, rank: float) -> float:
        """Weights of the factorized layer at `rank`."""
        raise NotImplementedError

    @classmethod
    def max_rank(cls, shape: dict) -> int:
        raise NotImplementedError

    @classmethod
    def macs(cls, shape: dict, rank: int, io: tuple) -> int:
        """MACs of the factorized layer (checked against torch.utils.flop_counter in tests)."""
        raise NotImplementedError

    @classmethod
    def rank_for_params(cls, shape: dict, target: float) -> float:
        """The (real) rank at which `params` is `target`; linear in the rank unless overridden."""
        return target / cls.params(shape, 1)


def rank_for_fraction(name: str, shape: dict, fraction: float, multiple: int = 8) -> int:
    """The rank whose factorized layer has `fraction` of the original's parameters (weights only),
    rounded to a multiple of `multiple` (at least `multiple`, at most the method's largest rank)."""
    cls = method(name)
    rank = cls.rank_for_params(shape, fraction * shape["in"] * shape["out"] * shape["kh"] * shape["kw"])
    rounded = max(multiple, int(round(rank / multiple)) * multiple) if multiple else max(1, int(round(rank)))
    return int(min(rounded, max(cls.max_rank(shape), 1)))


def _kxk_only(layer: nn.Module, weight: np.ndarray, name: str) -> None:
    if isinstance(layer, nn.Linear) or layer.kernel_size == (1, 1):
        raise LwparError(f"{name} needs a k x k convolution, got {type(layer).__name__} {tuple(weight.shape)}")


@register
class CP(Method):
    """Rank-R CP of the (C_in, C_out, kh kw) kernel: 1x1, then a k x k depthwise, then 1x1 (CP-ALS;
    with `epc.enabled`, CPD-EPC)."""

    name = "cp"

    @classmethod
    def factorize(cls, layer, weight, rank, seed, epc, metric=None):
        _kxk_only(layer, weight, "CP")
        cout, cin, kh, kw = weight.shape
        tensor = weight.transpose(1, 0, 2, 3).reshape(cin, cout, kh * kw)
        if metric is not None:  # CP (and EPC, its error bound now the output's) of the whitened kernel
            tensor = along(along(tensor, metric.channels[0], 0), metric.positions[0], 2)
        als = {}
        cp = _cp.cp_als(tensor, rank, seed=seed, n_iter_max=epc.get("als_iter", 1000) if epc else 1000, info=als)
        start = cp
        if epc and epc.get("enabled"):
            cp = _cp.cpd_epc(tensor, rank, seed=seed, init=cp, objective=epc.get("objective", "norm"),
                             n_iter_max=epc.get("iterations", 100))
        if metric is not None:
            start, cp = (cls._unwhitened(c, metric) for c in (start, cp))
        stats = {"lambda_sq_before": _cp.sum_of_squared_norms(start), "sensitivity_before": _cp.sensitivity(start),
                 "als_error": als["error"], "als_iterations": als["iterations"], "als_converged": als["converged"],
                 "lambda_sq_after": _cp.sum_of_squared_norms(cp), "sensitivity_after": _cp.sensitivity(cp)}
        approx = tl.cp_to_tensor(cp).reshape(cin, cout, kh, kw).transpose(1, 0, 2, 3)
        return L.cp_layer(layer, cp.weights, cp.factors), approx, stats

    @staticmethod
    def _unwhitened(cp, metric: InputMetric):
        weights, (a, b, c) = cp
        return tl.cp_tensor.CPTensor((weights, [metric.channels[1] @ a, b, metric.positions[1] @ c]))

    @classmethod
    def empty(cls, layer, shape, rank):
        z = np.zeros
        return L.cp_layer(layer, np.ones(rank), [z((shape["in"], rank)), z((shape["out"], rank)),
                                                 z((shape["kh"] * shape["kw"], rank))])

    @classmethod
    def params(cls, shape, rank):
        return rank * (shape["in"] + shape["out"] + shape["kh"] * shape["kw"])

    @classmethod
    def max_rank(cls, shape):
        return shape["in"] * shape["out"] * shape["kh"] * shape["kw"] // int(cls.params(shape, 1))

    @classmethod
    def macs(cls, shape, rank, io):
        (hi, wi), (ho, wo) = io
        return hi * wi * shape["in"] * rank + ho * wo * rank * shape["kh"] * shape["kw"] + ho * wo * rank * shape["out"]


@register
class CP4(CP):
    """Rank-R CP of the 4-way kernel (tensorly's parafac): 1x1, kx1, 1xk, 1x1."""

    name = "cp4"

    @classmethod
    def factorize(cls, layer, weight, rank, seed, epc, metric=None):
        _kxk_only(layer, weight, "CP")
        tensor = weight.transpose(1, 0, 2, 3)
        if metric is not None:
            tensor = along(along(along(tensor, metric.channels[0], 0), metric.rows[0], 2), metric.columns[0], 3)
        with tl.backend_context("numpy"):
            cp = tl.decomposition.parafac(tensor, rank, init="svd", random_state=seed, n_iter_max=100)
        factors = [np.asarray(f) for f in cp.factors]
        if metric is not None:
            factors = [metric.channels[1] @ factors[0], factors[1], metric.rows[1] @ factors[2],
                       metric.columns[1] @ factors[3]]
        weights = np.asarray(cp.weights)
        approx = tl.cp_to_tensor((weights, factors)).transpose(1, 0, 2, 3)
        return L.cp4_layer(layer, weights, factors), approx, {}

    @classmethod
    def empty(cls, layer, shape, rank):
        z = np.zeros
        return L.cp4_layer(layer, np.ones(rank), [z((shape["in"], rank)), z((shape["out"], rank)),
                                                  z((shape["kh"], rank)), z((shape["kw"], rank))])

    @classmethod
    def params(cls, shape, rank):
        return rank * (shape["in"] + shape["out"] + shape["kh"] + shape["kw"])

    @classmethod
    def macs(cls, shape, rank, io):  # the vertical pass keeps the input width until the horizontal stride
        (hi, wi), (ho, wo) = io
        return (hi * wi * shape["in"] * rank + ho * wi * rank * shape["kh"] + ho * wo * rank * shape["kw"]
                + ho * wo * rank * shape["out"])


@register
class Tucker2(Method):
    """Tucker-2 with R1 = R2 = R (tensorly's partial_tucker): 1x1 to R, k x k R -> R, 1x1 to C_out."""

    name = "tucker2"

    @classmethod
    def factorize(cls, layer, weight, rank, seed, epc, metric=None):
        if metric is not None:
            weight = cls._spatial(along(weight, metric.channels[0], 1), metric.positions[0])
        (core, (u_out, u_in)), _ = tl.decomposition.partial_tucker(weight, rank=[rank, rank], modes=[0, 1],
                                                                    random_state=seed)
        if metric is not None:  # the input factor and the core's positions mapped back
            core, u_in = cls._spatial(core, metric.positions[1]), metric.channels[1] @ u_in
        approx = tl.tenalg.multi_mode_dot(core, [u_out, u_in], modes=[0, 1])
        return L.tucker2_layer(layer, core, u_in, u_out), approx, {}

    @staticmethod
    def _spatial(tensor: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """`matrix` applied along the kernel positions (the last two axes, row-major)."""
        shape = tensor.shape
        return along(tensor.reshape(*shape[:2], -1), matrix, 2).reshape(shape)

    @classmethod
    def empty(cls, layer, shape, rank):
        z = np.zeros
        return L.tucker2_layer(layer, z((rank, rank, shape["kh"], shape["kw"])), z((shape["in"], rank)),
                               z((shape["out"], rank)))

    @classmethod
    def params(cls, shape, rank):
        return shape["in"] * rank + rank * rank * shape["kh"] * shape["kw"] + rank * shape["out"]

    @classmethod
    def rank_for_params(cls, shape, target):  # kh kw R^2 + (C_in + C_out) R = target
        a, b = shape["kh"] * shape["kw"], shape["in"] + shape["out"]
        return (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)

    @classmethod
    def max_rank(cls, shape):
        return min(shape["in"], shape["out"])

    @classmethod
    def macs(cls, shape, rank, io):
        (hi, wi), (ho, wo) = io
        return hi * wi * shape["in"] * rank + ho * wo * rank * rank * shape["kh"] * shape["kw"] + ho * wo * rank * shape["out"]


@register
class SVD(Method):
    """Truncated SVD of the C_out x (C_in kh kw) unfolding: a conv (or linear) to R, then 1x1 to C_out."""

    name = "svd"

    @classmethod
    def factorize(cls, layer, weight, rank, seed, epc, metric=None):
        unfolded = weight.reshape(weight.shape[0], -1)
        if metric is not None:  # the closed form: the truncated SVD of W S^(1/2), mapped back by S^(-1/2)
            unfolded = unfolded @ metric.whole[0]
        u, s, vt = np.linalg.svd(unfolded, full_matrices=False)
        left, right = u[:, :rank] * s[:rank], vt[:rank]
        if metric is not None:
            right = right @ metric.whole[1]
        return L.svd_layer(layer, left, right), (left @ right).reshape(weight.shape), {}

    @classmethod
    def empty(cls, layer, shape, rank):
        return L.svd_layer(layer, np.zeros((shape["out"], rank)),
                           np.zeros((rank, shape["in"] * shape["kh"] * shape["kw"])))

    @classmethod
    def params(cls, shape, rank):
        return rank * (shape["in"] * shape["kh"] * shape["kw"] + shape["out"])

    @classmethod
    def max_rank(cls, shape):
        return min(shape["in"] * shape["kh"] * shape["kw"], shape["out"])

    @classmethod
    def macs(cls, shape, rank, io):
        (_, _), (ho, wo) = io
        return ho * wo * rank * (shape["in"] * shape["kh"] * shape["kw"] + shape["out"])


@register
class SpatialSVD(Method):
    """SVD of the (C_in kh) x (C_out kw) unfolding: a kx1 conv to R, then a 1xk conv to C_out."""

    name = "spatial_svd"

    @classmethod
    def factorize(cls, layer, weight, rank, seed, epc, metric=None):
        cout, cin, kh, kw = weight.shape
        if metric is not None:
            weight = along(along(along(weight, metric.channels[0], 1), metric.rows[0], 2), metric.columns[0], 3)
        u, s, vt = np.linalg.svd(weight.transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw), full_matrices=False)
        root = np.sqrt(s[:rank])
        vertical = (u[:, :rank] * root).T.reshape(rank, cin, kh)
        horizontal = (vt[:rank].T * root).reshape(cout, kw, rank).transpose(0, 2, 1)
        approx = (u[:, :rank] * s[:rank] @ vt[:rank]).reshape(cin, kh, cout, kw).transpose(2, 0, 1, 3)
        if metric is not None:  # the vertical factor holds channels and rows, the horizontal one columns
            vertical = along(along(vertical, metric.channels[1], 1), metric.rows[1], 2)
            horizontal = along(horizontal, metric.columns[1], 2)
            approx = np.einsum("rch,orw->ochw", vertical, horizontal)
        return L.spatial_svd_layer(layer, vertical, horizontal), approx, {}

    @classmethod
    def empty(cls, layer, shape, rank):
        return L.spatial_svd_layer(layer, np.zeros((rank, shape["in"], shape["kh"])),
                                   np.zeros((shape["out"], rank, shape["kw"])))

    @classmethod
    def params(cls, shape, rank):
        return rank * (shape["in"] * shape["kh"] + shape["out"] * shape["kw"])

    @classmethod
    def max_rank(cls, shape):
        return min(shape["in"] * shape["kh"], shape["out"] * shape["kw"])

    @classmethod
    def macs(cls, shape, rank, io):
        (_, wi), (ho, wo) = io
        return ho * wi * shape["in"] * rank * shape["kh"] + ho * wo * rank * shape["out"] * shape["kw"]
