"""The real packages' backbone weights: found without importing the package, converted once into a
checksummed file, each port checked against an independent computation on the same file (OpenCV's
Caffe runtime; a NumPy forward over the HDF5 arrays), and a saved model on each rebuilt to the same
function. The converters on tiny files: unit/test_packaged.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lwpar.data.loader import IMAGENET_MEAN, IMAGENET_STD
from lwpar.models import convert, packaged
from lwpar.models.backbones import OPEN_NSFW_MEAN_BGR, build_backbone

pytestmark = pytest.mark.timeout(300)
NAMES = list(packaged.PACKAGED)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder: nothing converted yet."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def _normalized_and_caffe_inputs(shape, mean_bgr, seed=0):
    rgb = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
    normalized = (rgb - np.float32(IMAGENET_MEAN)[:, None, None]) / np.float32(IMAGENET_STD)[:, None, None]
    caffe = rgb[:, ::-1] * 255 - np.float32(mean_bgr)[:, None, None]
    return torch.from_numpy(normalized), np.ascontiguousarray(caffe)


@pytest.mark.parametrize("name", NAMES)
def test_packaged_weights_load_offline_without_importing_their_package(name, hub, tmp_path):
    before = set(sys.modules)
    pretrained = build_backbone(name, True, tmp_path / "weights")
    assert packaged.PACKAGED[name].module not in set(sys.modules) - before
    converted = tmp_path / "weights" / f"{name}-from-{packaged.PACKAGED[name].sha256[:12]}-v{packaged.CONVERSION}.pt"
    assert converted.is_file() and Path(f"{converted}.sha256").is_file()
    scratch = build_backbone(name, False)
    first = next(k for k in scratch.state_dict() if k.endswith("weight"))
    assert not torch.equal(pretrained.state_dict()[first], scratch.state_dict()[first])
    # the second build reads the converted file, not the package
    again = build_backbone(name, True, tmp_path / "weights")
    assert all(torch.equal(a, b) for a, b in zip(pretrained.state_dict().values(), again.state_dict().values()))
    maps = pretrained.eval()(torch.randn(1, 3, 256, 192))
    assert [m.shape[1] for m in maps] == pretrained.channels and [m.shape[2] for m in maps] == [32, 16, 8]


def test_resnet50_half_port_equals_opencv_running_the_caffemodel(hub):
    cv2 = pytest.importorskip("cv2")
    folder = packaged.source_file("resnet50_half").parent
    net = cv2.dnn.readNetFromCaffe(str(folder / "deploy.prototxt"), str(folder / "resnet_50_1by2_nsfw.caffemodel"))
    normalized, caffe = _normalized_and_caffe_inputs((2, 3, 256, 224), OPEN_NSFW_MEAN_BGR)  # its 7 x 7 pool needs >= 224
    net.setInput(caffe)
    # the ends of stages 1-3; the blobs are the sums before the in-place ReLU that follows each
    reference = net.forward(["eltwise_stage1_block3", "eltwise_stage2_block5", "eltwise_stage3_block2"])
    with torch.no_grad():
        ported = build_backbone("resnet50_half", True).eval()(normalized)
    for expected, got in zip(reference, ported):
        expected = np.maximum(expected, 0)
        assert got.shape == expected.shape
        assert np.abs(got.numpy() - expected).max() <= 1e-4 * np.abs(expected).max()


def _numpy_conv3x3_relu(x: np.ndarray, kernel_hwio: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras' 'same' 3 x 3 convolution and ReLU, straight from the HDF5 arrays (float64)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    windows = np.stack([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)])  # 9 x C x H x W
    out = np.einsum("kchw,kco->ohw", windows, kernel_hwio.reshape(9, *kernel_hwio.shape[2:])) + bias[:, None, None]
    return np.maximum(out, 0)


def test_vgg16_port_agrees_layer_by_layer_with_the_hdf5_arrays(hub):
    import h5py

    from lwpar.models.backbones import HED_MEAN_BGR

    backbone = build_backbone("vgg16", True).eval().double()
    normalized, caffe = _normalized_and_caffe_inputs((1, 3, 64, 32), HED_MEAN_BGR)  # even at every pool
    x, reference = normalized.double(), caffe[0].astype(np.float64)
    convs = {index: (block, position) for position, (block, _, index) in enumerate(convert.VGG16_CONVS)}
    with h5py.File(packaged.source_file("vgg16"), "r") as h5, torch.no_grad():
        x = backbone.input(x)
        seen = {}
        for index, module in enumerate([*backbone.to_stride8, *backbone.to_stride16, backbone.pool5]):
            x = module(x)
            if index in convs:
                block = convs[index][0]
                name = "conv2d" if block not in seen else f"conv2d_{seen[block]}"
                seen[block] = seen.get(block, 0) + 1
                group = h5[f"block{block}/layers/{name}/vars"]
                reference = _numpy_conv3x3_relu(reference, group["0"][()].astype(np.float64), group["1"][()])
            elif isinstance(module, torch.nn.MaxPool2d):
                c, h, w = reference.shape
                reference = reference.reshape(c, h // 2, 2, w // 2, 2).max((2, 4))
            if isinstance(module, (torch.nn.ReLU, torch.nn.MaxPool2d)):
                scale = np.abs(reference).max()
                assert np.abs(x[0].numpy() - reference).max() <= 1e-6 * scale, index  # float32 input rounding


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_model_on_a_packaged_backbone_reloads_to_the_same_function(name, hub, tmp_path):
    """A model file is rebuilt without its pretrained weights (`load_model`): whatever the pretrained
    backbone adds to the computation (the Caffe input map) must be there all the same."""
    from lwpar.models import build_model
    from lwpar.core.modelfile import save_model
    from lwpar.compress.structure import load_model

    cfg = {"arch": "alm", "backbone": name, "pretrained": True, "alm_head": "fused", "align_corners": False,
           "logit_bn": False, "input_size": [64, 32]}
    model = build_model("alm", name, 5, pretrained=True, weights_dir=tmp_path / "weights").eval()
    save_model(tmp_path / "model.pt", model, cfg, [f"a{i}" for i in range(5)])
    reloaded, _ = load_model(tmp_path / "model.pt")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), model(x))
