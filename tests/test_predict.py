"""`lwpar predict` and `lwpar.Predictor`: the artifact's own metadata, the same probabilities as
`lwpar evaluate`'s ONNX path, INT8 artifacts, bad input, and no torch at run time."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BIN, ROOT
from lwpar import LwparError, Predictor
from lwpar.artifact import read_metadata, write_metadata
from lwpar.data.loader import build_transform
from lwpar.artifact import onnx_session
from lwpar.evaluation import predict_onnx
from lwpar.export import export_onnx
from lwpar.models import build_model
from lwpar.preprocess import describe

ATTRIBUTES = ["hat", "bag", "skirt", "boots", "glasses"]
SIZE = (64, 32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny ALM exported as `lwpar export` does, and a folder of photos of other sizes."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("predict")
    folder = tmp / "artifact"
    folder.mkdir()
    export_onnx(build_model("alm", "resnet18", len(ATTRIBUTES)).eval(), SIZE, folder / "model.onnx")
    write_metadata(folder / "model.onnx", {"attributes": ATTRIBUTES, "preprocessing": describe(SIZE)})
    images = tmp / "images"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(160, 70), (90, 41), (300, 120), (64, 32), (57, 25)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / ("nested" if i == 4 else "") / f"p{i}.{'png' if i % 2 else 'jpg'}")
    return folder, images


def _images(folder):
    return sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


@pytest.mark.timeout(120)
def test_predictor_matches_the_evaluate_onnx_path(artifact):
    folder, images = artifact
    paths = _images(images)
    expected = predict_onnx(onnx_session(folder / "model.onnx"), paths, build_transform(SIZE, False), 2, 0)
    result = Predictor(folder).predict(paths)
    assert result.attributes == ATTRIBUTES and result.probabilities.shape == (5, len(ATTRIBUTES))
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-6)
    assert (result.decisions == (expected >= 0.5)).all()
    one = Predictor(folder / "model.onnx", threshold=0.9).predict(Image.open(paths[0]))
    np.testing.assert_allclose(one.probabilities[0], expected[0], rtol=0, atol=1e-6)
    assert (one.decisions[0] == (expected[0] >= 0.9)).all()


@pytest.mark.timeout(120)
def test_predict_command_writes_every_image_and_skips_a_corrupt_one(artifact, tmp_path):
    folder, images = artifact
    good = _images(images)
    corrupt = images / "nested" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    try:
        run = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(folder), str(images),
                              "--out", str(tmp_path / "out.csv"), "--batch", "2"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "skipped" in run.stderr and "broken.jpg" in run.stderr and "5 images, 1 skipped" in run.stderr
        rows = list(csv.DictReader((tmp_path / "out.csv").open()))
        assert len(rows) == 5 * len(ATTRIBUTES) and {r["attribute"] for r in rows} == set(ATTRIBUTES)
        api = Predictor(folder).predict(good)
        by_image = {}
        for row in rows:
            by_image.setdefault(row["image"], []).append(float(row["probability"]))
        np.testing.assert_allclose([by_image[str(p)] for p in good], api.probabilities, atol=1e-6)

        named = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(folder), str(corrupt)],
                               capture_output=True, text=True)
        assert named.returncode == 2 and named.stderr.strip().endswith("broken.jpg: cannot decode image (UnidentifiedImageError)")
    finally:
        corrupt.unlink()


@pytest.mark.timeout(120)
def test_predict_runs_without_torch_and_writes_json_lines(artifact, tmp_path):
    folder, images = artifact
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "from lwpar.cli import main\n"
            f"sys.exit(main(['predict', '--model', {str(folder)!r}, {str(images)!r}, '--out', {str(tmp_path / 'o.jsonl')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and set(lines[0]["attributes"]) == set(ATTRIBUTES)
    assert {"probability", "positive"} == set(lines[0]["attributes"]["hat"])


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_bad_artifacts_and_inputs_are_one_line_errors(artifact, tmp_path):
    folder, images = artifact
    plain = tmp_path / "plain.onnx"
    export_onnx(build_model("alm", "resnet18", 2).eval(), SIZE, plain)
    with pytest.raises(LwparError, match=r"plain.onnx: not an lwpar artifact"):
        Predictor(plain)
    with pytest.raises(LwparError, match=r"nowhere: no ONNX model"):
        Predictor(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    for inputs, message in (([str(empty)], "empty: no images in this folder"),
                            ([str(tmp_path / "missing.jpg")], "missing.jpg: no such file or folder")):
        run = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(folder), *inputs],
                             capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(180)
def test_int8_artifact_keeps_the_metadata_and_predicts(artifact, tmp_path):
    from lwpar.config import load_params
    from lwpar.quantize import quantize_model

    folder, images = artifact
    cfg = {**load_params(ROOT / "params.yaml")["quantize"], "mode": "static"}
    batches = [np.random.default_rng(i).standard_normal((4, 3, *SIZE)).astype(np.float32) for i in range(2)]
    quantize_model(folder / "model.onnx", tmp_path / "model.onnx", cfg, iter(batches))
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["attributes"] == ATTRIBUTES and meta["precision"] == "int8"
    fp32 = Predictor(folder).predict(_images(images)).probabilities
    int8 = Predictor(tmp_path).predict(_images(images)).probabilities
    assert np.abs(int8 - fp32).max() < 0.1  # quantized, yet the same model


@pytest.mark.e2e
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
        expected = predict_onnx(onnx_session(artifact / "model.onnx"), paths, build_transform(size, False), 4, 0)
        api = Predictor(artifact).predict(copies)
        assert api.attributes == data.attributes
        np.testing.assert_allclose(api.probabilities, expected, rtol=0, atol=1e-6)
        out = tmp_path / f"{name}.csv"
        cli = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(artifact), str(folder), "--out", str(out)],
                             capture_output=True, text=True)
        assert cli.returncode == 0 and f"{len(paths)} images, 1 skipped" in cli.stderr, cli.stderr
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == len(paths) * len(data.attributes)
