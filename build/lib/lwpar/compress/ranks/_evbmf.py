"""Empirical variational Bayesian matrix factorization (EVBMF) as a rank estimate.

Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14 (2013), with the noise variance estimated by minimizing the
free energy (Nakajima et al., "Condition for perfect dimensionality recovery by variational
Bayesian PCA", JMLR 16, 2015). The global solution keeps exactly the singular components above a
threshold that depends on the noise variance only, so the rank is a count, with no tuning knob.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """Positive root of tau^2 - (x - 1 - alpha) tau + alpha = 0: a component's normalized VB estimate."""
    shifted = x - (1 + alpha)
    return 0.5 * (shifted + np.sqrt(np.maximum(shifted ** 2 - 4 * alpha, 0.0)))


def _free_energy(sigma2: float, shape: tuple[int, int], s: np.ndarray, residual: float, x_bar: float) -> float:
    """The EVB free energy (up to constants) as a function of the noise variance."""
    rows, cols = shape
    alpha = rows / cols
    x = s ** 2 / (cols * sigma2)
    kept, dropped = x[x > x_bar], x[x <= x_bar]
    tau = _tau(kept, alpha)
    energy = np.sum(dropped - np.log(dropped))
    energy += np.sum(kept - np.log(kept) - tau + np.log(tau + 1) + alpha * np.log(tau / alpha + 1))
    return float(energy + residual / (cols * sigma2) + (rows - len(s)) * np.log(sigma2))


def evbmf_rank(matrix, noise_variance: float | None = None) -> int:
    """Number of components the EVBMF solution of `matrix` keeps (0 when it is all noise)."""
    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    alpha = rows / cols
    s = np.linalg.svd(y, compute_uv=False)
    tau_bar = 2.5129 * np.sqrt(alpha)             # the threshold's tau, solved numerically in the paper
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    if noise_variance is None:
        residual = max(float(np.sum(y ** 2) - np.sum(s ** 2)), 0.0)  # zero here: all components are kept in s
        largest = min(int(np.ceil(rows / (1 + alpha))) - 1, len(s) - 1)  # most components the model allows
        lower = max(s[largest] ** 2 / (cols * x_bar), float(np.mean(s[largest:] ** 2)) / cols)
        upper = (float(np.sum(s ** 2)) + residual) / (rows * cols)
        if not upper > lower > 0:
            return int(np.count_nonzero(s > 1e-12 * max(s[0], 1e-300)))
        noise_variance = minimize_scalar(_free_energy, bounds=(lower, upper), method="bounded",
                                         args=((rows, cols), s, residual, x_bar)).x
    threshold = np.sqrt(cols * noise_variance * x_bar)
    return int(np.count_nonzero(s > threshold))
