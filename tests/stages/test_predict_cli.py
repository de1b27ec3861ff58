"""`lwpar predict` and `lwpar bundle` as commands: thresholds beside the artifact, bundles, videos and
box files, skipped and refused inputs, and no torch at run time."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import BIN
from lwpar import LwparError, Predictor
from lwpar.deploy.export import export_onnx
from lwpar.models import build_model

from synthetic import ATTRIBUTES, SIZE, images as _images


@pytest.mark.timeout(120)
def test_tuned_thresholds_beside_the_artifact_decide_unless_one_threshold_is_given(artifact, tmp_path):
    import shutil

    from lwpar.deploy.artifact import thresholds_file

    folder, images = artifact
    copy = tmp_path / "artifact"
    shutil.copytree(folder, copy)
    tuned = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    (copy / "thresholds.json").write_text(json.dumps(thresholds_file(ATTRIBUTES[::-1], tuned[::-1], 10)))
    result = Predictor(copy).predict(_images(images))
    np.testing.assert_array_equal(result.thresholds, tuned)
    assert (result.decisions == (result.probabilities > tuned)).all()
    assert (Predictor(copy, threshold=0.5).predict(_images(images)).thresholds == 0.5).all()
    run = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(copy), str(images)], capture_output=True, text=True)
    assert run.returncode == 0 and "thresholds.json" in run.stderr.splitlines()[-1], run.stderr
    (copy / "thresholds.json").write_text(json.dumps(thresholds_file(ATTRIBUTES[:2], tuned[:2], 10)))
    with pytest.raises(LwparError, match=r"thresholds.json: thresholds for other attributes"):
        Predictor(copy)


@pytest.mark.timeout(120)
def test_bundle_copies_an_artifact_that_predict_accepts(artifact, tmp_path):
    folder, images = artifact

    def bundle(*args):
        return subprocess.run([str(BIN / "lwpar"), "bundle", *args], capture_output=True, text=True)

    refused = bundle("--model", str(folder), "--out", str(tmp_path / "device"), "--require-card")
    assert refused.returncode == 2 and "no thresholds.json, card.json, card.md" in refused.stderr
    assert not (tmp_path / "device").exists()
    made = bundle("--model", str(folder / "model.onnx"), "--out", str(tmp_path / "device"))
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "device").iterdir()) == ["model.onnx"]
    assert oct((tmp_path / "device").stat().st_mode & 0o777) != oct(0o700)
    np.testing.assert_array_equal(Predictor(tmp_path / "device").predict(_images(images)).probabilities,
                                  Predictor(folder).predict(_images(images)).probabilities)
    again = bundle("--model", str(folder), "--out", str(tmp_path / "device"))
    assert again.returncode == 2 and "device: exists and is not empty" in again.stderr
    assert list(tmp_path.glob(".device.*")) == []


def _video(path, frames=6, size=(96, 160)):
    """A small MJPEG video of smooth moving images, and its frames as OpenCV decodes them (RGB)."""
    cv2 = pytest.importorskip("cv2")
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    yy, xx = np.mgrid[0:height, 0:width]
    for t in range(frames):
        pixels = np.stack([(xx * 2 + t * 20) % 256, (yy + t * 9) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        writer.write(pixels)
    writer.release()
    capture, decoded = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(Image.fromarray(frame[:, :, ::-1].copy()))
    assert len(decoded) == frames
    return decoded


def _probabilities(csv_path):
    by_image = {}
    for row in csv.DictReader(open(csv_path)):
        by_image.setdefault(row["image"], []).append(float(row["probability"]))
    return by_image


@pytest.mark.timeout(120)
def test_predict_on_a_videos_frames_and_on_the_person_crops_of_a_box_file(artifact, tmp_path):
    folder, _ = artifact
    video = tmp_path / "walk.avi"
    frames = _video(video)
    predictor = Predictor(folder)

    def predict(*args):
        return subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(folder), *args], capture_output=True, text=True)

    run = predict(str(video), "--every", "2", "--out", str(tmp_path / "frames.csv"))
    assert run.returncode == 0 and "3 images, 0 skipped" in run.stderr, run.stderr
    got = _probabilities(tmp_path / "frames.csv")
    assert list(got) == [f"{video}#frame={i}" for i in (0, 2, 4)]
    np.testing.assert_allclose(list(got.values()), predictor.predict([frames[i] for i in (0, 2, 4)]).probabilities,
                               rtol=0, atol=1e-6)

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("frame,id,x,y,w,h\n1,7,10,5,40,80\n1,8,100,0,60,96\n4,7,12,6,40,80\n")
    run = predict(str(video), "--boxes", str(boxes), "--out", str(tmp_path / "crops.csv"))
    assert run.returncode == 0 and "3 images" in run.stderr, run.stderr
    got = _probabilities(tmp_path / "crops.csv")
    assert list(got) == [f"{video}#frame=1&box=10,5,40,80&id=7", f"{video}#frame=1&box=100,0,60,96&id=8",
                         f"{video}#frame=4&box=12,6,40,80&id=7"]
    crops = [frames[1].crop((10, 5, 50, 85)), frames[1].crop((100, 0, 160, 96)), frames[4].crop((12, 6, 52, 86))]
    np.testing.assert_allclose(list(got.values()), predictor.predict(crops).probabilities, rtol=0, atol=1e-6)


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_bad_videos_and_boxes_are_one_line_errors(artifact, tmp_path):
    folder, images = artifact
    video = tmp_path / "walk.avi"
    _video(video, frames=3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00 ftyp not a video")
    cases = {"outside": ("frame,x,y,w,h\n0,0,0,10,10\n2,150,0,20,50\n", "boxes.csv: line 3: box x=150 y=0 w=20 h=50 outside frame 2 (160 x 96)"),
             "late": ("frame,x,y,w,h\n5,0,0,10,10\n", "boxes.csv: line 2: frame 5, but the video has 3 frames"),
             "columns": ("frame,x,y,width,h\n0,0,0,10,10\n", "boxes.csv: no column w"),
             "text": ("frame,x,y,w,h\n0,a,0,10,10\n", "boxes.csv: line 2: frame, x, y, w, h must be numbers")}
    out = tmp_path / "out.csv"
    for content, message in cases.values():
        (tmp_path / "boxes.csv").write_text(content)
        run = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(folder), str(video), "--boxes",
                              str(tmp_path / "boxes.csv"), "--out", str(out)], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert not out.exists()  # nothing half-written
    for inputs, message in (([str(broken)], "broken.mp4: cannot open video"),
                            ([str(images), "--boxes", str(tmp_path / "boxes.csv")], "boxes apply to one video, and the inputs have 0")):
        run = subprocess.run([str(BIN / "lwpar"), "predict", "--model", str(folder), *inputs], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


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


