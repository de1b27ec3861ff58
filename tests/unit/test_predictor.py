"""`lwpar.Predictor` in process: the artifact's own metadata, the same probabilities as `lwpar
evaluate`'s ONNX path, and INT8 artifacts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from lwpar import Predictor
from lwpar.data.loader import build_transform
from lwpar.deploy.artifact import onnx_session, read_metadata
from lwpar.evaluation.scoring import onnx_probabilities

from synthetic import ATTRIBUTES, SIZE, images as _images


@pytest.mark.timeout(120)
def test_predictor_matches_the_evaluate_onnx_path(artifact):
    folder, images = artifact
    paths = _images(images)
    expected = onnx_probabilities(onnx_session(folder / "model.onnx"), paths, build_transform(SIZE, False), 2, 0)
    result = Predictor(folder).predict(paths)
    assert result.attributes == ATTRIBUTES and result.probabilities.shape == (5, len(ATTRIBUTES))
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-6)
    assert (result.decisions == (expected > 0.5)).all()
    one = Predictor(folder / "model.onnx", threshold=0.9).predict(Image.open(paths[0]))
    np.testing.assert_allclose(one.probabilities[0], expected[0], rtol=0, atol=1e-6)
    assert (one.decisions[0] == (expected[0] > 0.9)).all()


@pytest.mark.timeout(180)
def test_int8_artifact_keeps_the_metadata_and_predicts(artifact, tmp_path):
    from lwpar.config import load_params
    from lwpar.deploy.quantize import quantize_model

    folder, images = artifact
    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "mode": "static"}
    batches = [np.random.default_rng(i).standard_normal((4, 3, *SIZE)).astype(np.float32) for i in range(2)]
    quantize_model(folder / "model.onnx", tmp_path / "model.onnx", cfg, iter(batches))
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["attributes"] == ATTRIBUTES and meta["precision"] == "int8"
    fp32 = Predictor(folder).predict(_images(images)).probabilities
    int8 = Predictor(tmp_path).predict(_images(images)).probabilities
    assert np.abs(int8 - fp32).max() < 0.1  # quantized, yet the same model
