"""Weight converters for the packaged backbones: a Caffe model, a Keras 3 HDF5 file, a torchvision
state dict. Each returns a state dict for the module that `backbones` builds; shapes are checked.

A caffemodel is one protobuf message (NetParameter); its few fields that hold weights are read here
from the wire format, so neither Caffe nor protobuf's generated classes are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lwpar.core.errors import LwparError

# caffe.proto field numbers: NetParameter.layer, LayerParameter.{name, type, blobs},
# BlobProto.{data, shape, num, channels, height, width}, BlobShape.dim
_NET_LAYER, _LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 100, 1, 2, 7
_BLOB_DATA, _BLOB_SHAPE, _BLOB_LEGACY_DIMS, _SHAPE_DIM = 5, 7, (1, 2, 3, 4), 1


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message; length-delimited values as views."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("message ends inside a field")
        yield number, wire, value


def _packed_varints(buf: memoryview) -> list[int]:
    values, i = [], 0
    while i < len(buf):
        value, i = _varint(buf, i)
        values.append(value)
    return values


def _blob(buf: memoryview) -> np.ndarray:
    data, shape, legacy = [], None, {}
    for number, wire, value in _fields(buf):
        if number == _BLOB_DATA:
            data.append(np.frombuffer(bytes(value), dtype="<f4") if wire == 2 else
                        np.frombuffer(bytes(value), dtype="<f4", count=1))
        elif number == _BLOB_SHAPE:
            shape = [d for n, w, v in _fields(value) if n == _SHAPE_DIM
                     for d in (_packed_varints(v) if w == 2 else [v])]
        elif number in _BLOB_LEGACY_DIMS and wire == 0:
            legacy[number] = value
    values = np.concatenate(data) if data else np.zeros(0, np.float32)
    if shape is None:  # an old blob: num, channels, height, width
        shape = [legacy.get(n, 1) for n in _BLOB_LEGACY_DIMS]
    if int(np.prod(shape)) != values.size:
        raise ValueError(f"blob of shape {shape} holds {values.size} values")
    return values.reshape(shape)


def read_caffemodel(path: Path) -> dict[str, tuple[str, list[np.ndarray]]]:
    """layer name -> (layer type, its blobs), for every layer of a caffemodel that has blobs."""
    try:
        buf = memoryview(Path(path).read_bytes())
        layers = {}
        for number, wire, value in _fields(buf):
            if number != _NET_LAYER or wire != 2:
                continue
            name, kind, blobs = None, None, []
            for n, w, v in _fields(value):
                if n == _LAYER_NAME:
                    name = bytes(v).decode()
                elif n == _LAYER_TYPE:
                    kind = bytes(v).decode()
                elif n == _LAYER_BLOBS:
                    blobs.append(_blob(v))
            if blobs:
                layers[name] = (kind, blobs)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise LwparError(f"{path}: not a readable caffemodel ({exc})") from None
    if not layers:
        raise LwparError(f"{path}: no layer with weights: not a caffemodel")
    return layers


def _put(state: dict, key: str, value, source: str) -> None:
    tensor = torch.as_tensor(np.ascontiguousarray(value), dtype=torch.float32)
    if key not in state:
        raise LwparError(f"{source}: the model has no tensor {key}")
    if tuple(tensor.shape) != tuple(state[key].shape):
        raise LwparError(f"{source}: {tuple(tensor.shape)} does not fit {key} {tuple(state[key].shape)}")
    state[key] = tensor


def _conv_bn(state: dict, layers: dict, caffe: str, conv: str, bn: str, path: Path) -> None:
    """A Caffe conv (with bias), BatchNorm (mean, variance, scale factor) and Scale onto a bias-free
    conv and a BatchNorm; the conv's bias is folded into the running mean, exactly."""
    try:
        weight, *bias = layers[f"conv_{caffe}"][1]
        mean, var, factor = layers[f"bn_{caffe}"][1]
        gamma, beta = layers[f"scale_{caffe}"][1]
    except (KeyError, ValueError):
        raise LwparError(f"{path}: layer conv_/bn_/scale_{caffe} missing or incomplete") from None
    factor = float(factor.ravel()[0])
    scale = 0.0 if factor == 0 else 1.0 / factor
    _put(state, f"{conv}.weight", weight, str(path))
    _put(state, f"{bn}.running_mean", mean.ravel() * scale - (bias[0].ravel() if bias else 0), str(path))
    _put(state, f"{bn}.running_var", var.ravel() * scale, str(path))
    _put(state, f"{bn}.weight", gamma.ravel(), str(path))
    _put(state, f"{bn}.bias", beta.ravel(), str(path))


def caffe_resnet_state(path: Path, target: dict, blocks=(3, 4, 6, 3)) -> dict:
    """open_nsfw's ResNet-50-1by2 caffemodel onto timm's ResNet layout (conv1/bn1, layerN.M.convK/bnK,
    layerN.0.downsample.{0,1}). Its layers are named conv_1 and conv_stage{s}_block{b}_branch2{a,b,c}
    / _proj_shortcut, each followed by bn_ and scale_ layers of the same suffix."""
    layers = read_caffemodel(path)
    state = {k: v.clone() for k, v in target.items()}
    _conv_bn(state, layers, "1", "conv1", "bn1", path)
    for s, count in enumerate(blocks):
        for b in range(count):
            prefix, block = f"stage{s}_block{b}", f"layer{s + 1}.{b}"
            for branch, index in (("a", 1), ("b", 2), ("c", 3)):
                _conv_bn(state, layers, f"{prefix}_branch2{branch}", f"{block}.conv{index}", f"{block}.bn{index}", path)
            if b == 0:
                _conv_bn(state, layers, f"{prefix}_proj_shortcut", f"{block}.downsample.0", f"{block}.downsample.1", path)
    return state


# Keras 3 HED: block{1..5}/layers/conv2d{,_1,_2}/vars/{0: kernel HWIO, 1: bias}; torchvision vgg16
# features holds the same 13 convolutions at these indices.
VGG16_CONVS = [(1, 2, 0), (1, 2, 2), (2, 2, 5), (2, 2, 7), (3, 3, 10), (3, 3, 12), (3, 3, 14),
               (4, 3, 17), (4, 3, 19), (4, 3, 21), (5, 3, 24), (5, 3, 26), (5, 3, 28)]


def keras_vgg16_state(path: Path, target: dict) -> dict:
    """HED's Keras 3 weights file onto torchvision's `vgg16().features` keys (kernels HWIO -> OIHW)."""
    import h5py

    state = {k: v.clone() for k, v in target.items()}
    try:
        with h5py.File(path, "r") as h5:
            seen = {}
            for block, _, index in VGG16_CONVS:
                position = seen.get(block, 0)
                seen[block] = position + 1
                group = h5[f"block{block}/layers/conv2d{'' if position == 0 else f'_{position}'}/vars"]
                _put(state, f"{index}.weight", np.transpose(group["0"][()], (3, 2, 0, 1)), str(path))
                _put(state, f"{index}.bias", group["1"][()], str(path))
    except (OSError, KeyError) as exc:
        raise LwparError(f"{path}: not HED's VGG16 weights file ({type(exc).__name__}: {exc})") from None
    return state


def torchvision_features_state(path: Path, target: dict) -> dict:
    """A MobileNetV2 `features.*` state dict onto torchvision's current `features` keys. The packaged
    file predates torchvision's nesting of each block's first conv and norm (`conv.0.weight` is now
    `conv.0.0.weight`), so tensors are paired by position, every pair's shape checked."""
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise LwparError(f"{path}: cannot read weights ({type(exc).__name__})") from None
    tensors = [v for k, v in source.items() if k.startswith("features.") and not k.endswith("num_batches_tracked")]
    keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(tensors) != len(keys):
        raise LwparError(f"{path}: {len(tensors)} feature tensors, the model has {len(keys)}")
    state = {k: v.clone() for k, v in target.items()}
    for key, value in zip(keys, tensors):
        _put(state, key, value, str(path))
    return state
