"""`lwpar predict`, `lwpar.Predictor` and `lwpar bundle` on the smoke run's artifacts: the same
probabilities and decisions as `lwpar evaluate`."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest

from conftest import BIN
from lwpar import Predictor
from lwpar.data.loader import build_transform
from lwpar.deploy.artifact import onnx_session, read_metadata
from lwpar.evaluation.scoring import onnx_probabilities


@pytest.mark.timeout(3000)
def test_predict_on_the_smoke_runs_artifacts_matches_evaluate(smoke_run, tmp_path):
    import shutil

    from lwpar.data.loader import Prepared

    work, params = smoke_run
    run = work / params["paths"]["results"] / "peta" / "alm_effl0"
    data = Prepared(work / params["paths"]["data"] / "prepared" / "peta.manifest.json")
    paths, _ = data.split("test", limit=12)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, path in enumerate(paths):
        shutil.copy(path, folder / f"{i:02d}{path.suffix.lower()}")
    (folder / "zz_broken.jpg").write_bytes(b"not an image")
    copies = sorted(p for p in folder.iterdir() if p.name != "zz_broken.jpg")
    for name in ("baseline", "lwalm+int8"):
        artifact = run / name
        size = read_metadata(artifact / "model.onnx")["preprocessing"]["input_size"]
        expected = onnx_probabilities(onnx_session(artifact / "model.onnx"), paths, build_transform(size, False), 4, 0)
        api = Predictor(artifact).predict(copies)
        assert api.attributes == data.attributes
        # `lwpar evaluate` chose the thresholds on validation, beside the artifact; predict decides with them
        tuned = json.loads((artifact / "thresholds.json").read_text())["thresholds"]
        np.testing.assert_array_equal(api.thresholds, [tuned[a] for a in data.attributes])
        assert (api.decisions == (api.probabilities > api.thresholds)).all()
        np.testing.assert_allclose(api.probabilities, expected, rtol=0, atol=1e-6)
        out = tmp_path / f"{name}.csv"
        cli = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(artifact), str(folder), "--out", str(out)],
                             capture_output=True, text=True)
        assert cli.returncode == 0 and f"{len(paths)} images, 1 skipped" in cli.stderr, cli.stderr
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == len(paths) * len(data.attributes)
    # the INT8 artifact as one folder for a device: model, thresholds and card; predict takes it as is
    device = tmp_path / "device"
    made = subprocess.run([str(BIN / "lwpar"), "bundle", "--model", str(run / "lwalm+int8"), "--out", str(device),
                           "--require-card"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in device.iterdir()) == ["card.json", "card.md", "model.onnx", "thresholds.json"]
    moved = Predictor(device).predict(copies)
    np.testing.assert_array_equal(moved.probabilities, api.probabilities)
    np.testing.assert_array_equal(moved.thresholds, api.thresholds)
    assert json.loads((device / "card.json").read_text())["artifact"] == "lwalm+int8"
