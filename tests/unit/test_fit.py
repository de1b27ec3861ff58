"""Fitting a layer's output instead of its weights (`fit: covariance`): on correlated inputs every
method's output error falls below the weights fit's; on white inputs (S = I) the fit is the weights
fit; the roots of an ill-conditioned second moment stay bounded by the regulariser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lwpar.compress.decompose.methods import METHODS
from lwpar.compress.decompose.metric import InputMetric, _roots, output_error

SHAPE = {"in": 12, "out": 16, "kh": 3, "kw": 3}


def _spd(n: int, rng, decay: float) -> np.ndarray:
    """A symmetric positive definite matrix whose eigenvalues fall geometrically (correlated inputs)."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * decay ** np.arange(n)) @ q.T


def _correlated(rng) -> np.ndarray:
    """A second moment that is a Kronecker product over channels, rows and columns, as the per-mode
    methods assume, with strongly unequal variances."""
    return np.kron(np.kron(_spd(SHAPE["in"], rng, 0.6), _spd(SHAPE["kh"], rng, 0.3)), _spd(SHAPE["kw"], rng, 0.3))


def _layer(method: str, seed: int = 0) -> tuple[nn.Module, np.ndarray]:
    torch.manual_seed(seed)
    layer = nn.Conv2d(SHAPE["in"], SHAPE["out"], 3, padding=1)
    return layer, layer.weight.detach().double().numpy()


RANKS = {"cp": 10, "cp4": 10, "tucker2": 6, "svd": 8, "spatial_svd": 8}
EPC = {"enabled": False, "als_iter": 200}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_on_correlated_inputs_the_output_fit_has_the_lower_output_error(method):
    second_moment = _correlated(np.random.default_rng(1))
    layer, weight = _layer(method)
    metric = InputMetric(second_moment, SHAPE, ridge=1e-8)
    _, by_weights, _ = METHODS[method].factorize(layer, weight, RANKS[method], 0, EPC)
    replacement, by_output, _ = METHODS[method].factorize(layer, weight, RANKS[method], 0, EPC, metric)
    weights_fit, output_fit = (output_error(weight, a, second_moment) for a in (by_weights, by_output))
    assert output_fit < 0.75 * weights_fit, (weights_fit, output_fit)
    # the replacement computes what `approx` says: its kernel applied to inputs is the fitted one
    x = torch.randn(2, SHAPE["in"], 7, 7, dtype=torch.float64)
    expected = nn.functional.conv2d(x, torch.from_numpy(by_output), padding=1) + layer.bias.detach().double()[:, None, None]
    torch.testing.assert_close(replacement.double()(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["svd", "spatial_svd", "tucker2"])
def test_on_white_inputs_the_output_fit_is_the_weights_fit(method):
    layer, weight = _layer(method)
    size = SHAPE["in"] * SHAPE["kh"] * SHAPE["kw"]
    metric = InputMetric(np.eye(size) * 3.0, SHAPE)  # S = 3 I: the same metric up to scale
    _, by_weights, _ = METHODS[method].factorize(layer, weight, RANKS[method], 0, EPC)
    _, by_output, _ = METHODS[method].factorize(layer, weight, RANKS[method], 0, EPC, metric)
    np.testing.assert_allclose(by_output, by_weights, rtol=1e-6, atol=1e-9)


def test_cp_on_white_inputs_reaches_the_weights_fits_error():
    layer, weight = _layer("cp")
    metric = InputMetric(np.eye(SHAPE["in"] * 9), SHAPE)
    _, by_weights, _ = METHODS["cp"].factorize(layer, weight, 10, 0, EPC)
    _, by_output, _ = METHODS["cp"].factorize(layer, weight, 10, 0, EPC, metric)
    errors = [np.linalg.norm(weight - a) / np.linalg.norm(weight) for a in (by_weights, by_output)]
    assert errors[1] == pytest.approx(errors[0], rel=1e-6)


def test_a_singular_second_moment_is_regularised_and_its_roots_stay_bounded():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((20, 3))
    singular = low @ low.T  # rank 3 of 20: most directions never seen
    ridge = 1e-2
    root, inverse = _roots(singular, ridge)
    np.testing.assert_allclose(root @ inverse, np.eye(20), atol=1e-8)
    mean = np.trace(singular) / 20
    assert np.linalg.norm(inverse, 2) <= 1 / np.sqrt(ridge * mean) * (1 + 1e-9)
    assert np.isfinite(root).all() and np.isfinite(inverse).all()


def test_the_output_error_is_the_relative_error_of_the_layers_outputs():
    rng = np.random.default_rng(0)
    weight, approx = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    inputs = rng.standard_normal((6, 5000))
    second_moment = inputs @ inputs.T / inputs.shape[1]
    direct = np.linalg.norm((weight - approx) @ inputs) / np.linalg.norm(weight @ inputs)
    assert output_error(weight, approx, second_moment) == pytest.approx(direct, rel=1e-9)
