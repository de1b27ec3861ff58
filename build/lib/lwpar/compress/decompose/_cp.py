"""CP decompositions of 3-way tensors: CP-ALS through tensorly, and CPD-EPC.

CPD-EPC (Phan, Tichavsky, Cichocki, "Error preserving correction: a method for CP decomposition at
a target error bound", IEEE TSP 2019; used for CNNs in Phan et al., ECCV 2020): start from a CP-ALS
result with error delta, then find factors with the same error bound whose rank-1 terms have
minimal total squared norm, sum_r ||a_r||^2 ||b_r||^2 ||c_r||^2 (or, as an option, minimal
sensitivity sum_r ||a_r||^2 ||b_r||^2 + ||a_r||^2 ||c_r||^2 + ||b_r||^2 ||c_r||^2). Large,
cancelling rank-1 terms ("degeneracy") make CP layers unstable to fine-tune; EPC removes them.

Each factor update is the quadratically constrained least-squares problem
    min_A  tr(A G A^T)   s.t.  ||T_(n) - A K^T||_F^2 <= delta^2,
with G the diagonal column weights from the other factors and K their Khatri-Rao product. Its
solution is A(mu) = F (G / mu + Q)^{-1} with F = T_(n) K and Q = K^T K; with the
eigendecomposition G^{-1/2} Q G^{-1/2} = U S U^T the constraint becomes the secular equation
    sum_r c_r mu (2 + mu s_r) / (1 + mu s_r)^2 = ||T||^2 - delta^2,   c_r = ||(F G^{-1/2} U)_r||^2,
increasing in mu, solved to machine precision by safeguarded Newton steps.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import tensorly as tl
from tensorly.cp_tensor import CPTensor
from tensorly.decomposition import parafac


def _as_numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor, dtype=np.float64)


def cp_als(tensor, rank: int, seed: int = 0, init: str = "svd", n_iter_max: int = 1000, tol: float = 1e-5,
           window: int = 50, info: dict | None = None) -> CPTensor:
    """CP-ALS of a 3-way tensor through tensorly's `parafac` (SVD or seeded random init).

    ALS on nearly collinear factors crawls through "swamps": the error falls by a tiny amount per
    iteration for hundreds of iterations before it drops, so tensorly's per-iteration test (stop once
    one iteration improves by less than `tol`) stops there, at several times the attainable error.
    Here parafac extrapolates along the last update every other iteration (its `linesearch`, Bro's
    remedy for swamps), and stops only when the relative error improved by less than `tol` of itself
    over the last `window` iterations, or after `n_iter_max`. `info`, if given, receives the
    iterations run, the final relative error and whether the rule (not the cap) stopped it.
    """
    errors: list[float] = []

    def stalled(_cp, error) -> bool:
        errors.append(float(error))
        return len(errors) > window and errors[-window - 1] - errors[-1] <= tol * errors[-1]

    with tl.backend_context("numpy"), _three_way_mttkrp():
        # tensorly's own test stays on (its line search needs the error it tracks), at a tolerance
        # that only an exact fixed point meets
        cp = parafac(tl.tensor(_as_numpy(tensor)), rank, init=init, random_state=seed, n_iter_max=n_iter_max,
                     tol=1e-15, normalize_factors=False, linesearch=True, callback=stalled)
    if info is not None:
        converged = len(errors) > window and errors[-window - 1] - errors[-1] <= tol * errors[-1]
        info.update(iterations=len(errors) - 1, error=errors[-1], converged=converged or len(errors) - 1 < n_iter_max)
    return CPTensor((np.asarray(cp.weights), [np.asarray(f) for f in cp.factors]))


def mttkrp(tensor: np.ndarray, cp: CPTensor, mode: int) -> np.ndarray:
    """unfold(tensor, mode) @ khatri_rao(factors, weights, skip_matrix=mode) of a 3-way tensor, without
    forming the Khatri-Rao product: one matrix product with the largest other mode's factor, then the
    last mode elementwise. tensorly's forms it; for the spatial mode of a 256 x 256 x 9 conv kernel at
    rank 488 that is a 65,536 x 488 matrix, 219 ms per call against 6 ms here."""
    weights, factors = cp
    others = [m for m in range(3) if m != mode]
    first = max(others, key=lambda m: tensor.shape[m])
    last = next(m for m in others if m != first)
    partial = np.tensordot(tensor, factors[first], axes=(first, 0))  # (the two other modes in order, rank)
    if mode > last:
        partial = partial.transpose(1, 0, 2)
    product = np.einsum("nlr,lr->nr", partial, factors[last])
    return product if weights is None else product * weights


@contextmanager
def _three_way_mttkrp():
    """tensorly's numpy tenalg backend computes parafac's MTTKRP with `mttkrp` for 3-way tensors
    while inside (tensorly's own otherwise); its own is restored after."""
    backend = type(tl.tenalg.current_backend())
    original = backend.unfolding_dot_khatri_rao

    def dispatched(tensor, cp_tensor, mode):
        if tl.ndim(tensor) == 3:
            return mttkrp(tensor, cp_tensor, mode)
        return original(tensor, cp_tensor, mode)

    backend.register_method("unfolding_dot_khatri_rao", dispatched)
    try:
        yield
    finally:
        backend.register_method("unfolding_dot_khatri_rao", original)


def relative_error(tensor, cp: CPTensor) -> float:
    tensor = _as_numpy(tensor)
    return float(np.linalg.norm(tensor - tl.cp_to_tensor(cp)) / np.linalg.norm(tensor))


def _absorbed(cp: CPTensor) -> list[np.ndarray]:
    """Factors with the weights multiplied into the first one, spread evenly across all three."""
    weights, factors = cp
    share = np.abs(weights) ** (1 / 3)
    signs = np.sign(weights)
    return [factors[0] * share * signs, factors[1] * share, factors[2] * share]


def _normalized(factors: list[np.ndarray]) -> CPTensor:
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    weights = np.prod(norms, axis=0)
    safe = [np.where(n > 0, n, 1.0) for n in norms]
    return CPTensor((weights, [f / n for f, n in zip(factors, safe)]))


def sum_of_squared_norms(cp: CPTensor) -> float:
    """||lambda||^2: the total squared norm of the rank-1 terms."""
    return float(np.sum(np.prod([np.sum(f ** 2, 0) for f in _absorbed(cp)], axis=0)))


def sensitivity(cp: CPTensor) -> float:
    """Sensitivity of the CP model (Phan et al., ECCV 2020): sum over factor pairs of the products
    of squared column norms, i.e. how much the tensor moves when the factors are perturbed."""
    sq = [np.sum(f ** 2, 0) for f in _absorbed(cp)]
    return float(np.sum(sq[0] * sq[1] + sq[0] * sq[2] + sq[1] * sq[2]))


def _solve_secular(c: np.ndarray, s: np.ndarray, target: float) -> float:
    """Root mu >= 0 of sum_r c_r mu (2 + mu s_r) / (1 + mu s_r)^2 = target (increasing in mu)."""
    def f(mu):
        return float(np.sum(c * mu * (2 + mu * s) / (1 + mu * s) ** 2)) - target

    def df(mu):
        return float(np.sum(2 * c / (1 + mu * s) ** 3))

    lo, hi = 0.0, 1.0
    while f(hi) < 0:
        lo, hi = hi, hi * 2
        if hi > 1e300:
            return hi
    mu = hi
    for _ in range(200):
        value = f(mu)
        if abs(value) <= 1e-15 * max(target, 1e-300):
            break
        if value > 0:
            hi = mu
        else:
            lo = mu
        step = mu - value / df(mu)
        mu = step if lo < step < hi else (lo + hi) / 2
        if hi - lo <= 1e-15 * hi:
            break
    return mu


def _update_factor(rhs: np.ndarray, others: list[np.ndarray], weights: np.ndarray, delta_sq: float,
                   norm_sq: float) -> np.ndarray:
    """`rhs`: the tensor's unfolding times the Khatri-Rao product of `others` (`mttkrp`)."""
    gram = np.ones((rhs.shape[1], rhs.shape[1]))
    for f in others:
        gram *= f.T @ f
    inv_sqrt = 1.0 / np.sqrt(np.maximum(weights, 1e-300))
    s, u = np.linalg.eigh(inv_sqrt[:, None] * gram * inv_sqrt[None, :])
    s = np.maximum(s, 0.0)
    z = (rhs * inv_sqrt[None, :]) @ u
    c = np.sum(z ** 2, 0)
    mu = _solve_secular(c, s, norm_sq - delta_sq)
    d = mu / (1 + mu * s)
    return (z * d[None, :]) @ u.T * inv_sqrt[None, :]


def cpd_epc(tensor, rank: int, seed: int = 0, init: CPTensor | None = None, objective: str = "norm",
            n_iter_max: int = 100, tol: float = 1e-7, als_iter: int = 200) -> CPTensor:
    """CPD with Error Preserving Correction: the CP-ALS error bound kept, the rank-1 terms shrunk.

    `objective`: "norm" minimises sum_r ||lambda_r||^2; "sensitivity" the ECCV 2020 sensitivity.
    """
    if objective not in ("norm", "sensitivity"):
        raise ValueError(f"objective must be 'norm' or 'sensitivity', got {objective!r}")
    data = _as_numpy(tensor)
    start = init if init is not None else cp_als(data, rank, seed=seed, n_iter_max=als_iter)
    factors = _absorbed(start)
    norm_sq = float(np.sum(data ** 2))
    delta_sq = float(np.sum((data - tl.cp_to_tensor((np.ones(rank), factors))) ** 2))
    score = _objective(factors, objective)
    for _ in range(n_iter_max):
        for n in range(3):
            others = [factors[m] for m in range(3) if m != n]
            sq = [np.sum(f ** 2, 0) for f in others]
            weights = sq[0] * sq[1] if objective == "norm" else sq[0] + sq[1]
            factors[n] = _update_factor(mttkrp(data, (None, factors), n), others, weights, delta_sq, norm_sq)
        new_score = _objective(factors, objective)
        converged = abs(score - new_score) <= tol * max(score, 1e-300)
        score = new_score
        if converged:
            break
    return _normalized(factors)


def _objective(factors: list[np.ndarray], objective: str) -> float:
    sq = [np.sum(f ** 2, 0) for f in factors]
    if objective == "norm":
        return float(np.sum(sq[0] * sq[1] * sq[2]))
    return float(np.sum(sq[0] * sq[1] + sq[0] * sq[2] + sq[1] * sq[2]))
