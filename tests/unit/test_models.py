"""Models: parameter counts of the published ALM, forward shapes, fused == reference."""

from __future__ import annotations

import pytest
import torch

from lwpar.core.errors import LwparError
from lwpar.models import build_model
from lwpar.models.alm import LocalizationLevel, StrongBaseline
from lwpar.models.backbones import build_backbone


@pytest.mark.parametrize("attributes,published", [(35, 15.15e6), (26, 14.02e6), (51, 17.15e6)])
def test_alm_bn_inception_parameter_count(attributes, published):
    model = build_model("alm", "bn_inception", attributes)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) / published < 0.01


@pytest.mark.parametrize("backbone", ["bn_inception", "efficientnet_lite0", "resnet18", "resnet50", "vgg16",
                                      "resnet50_half", "mobilenet_v2"])
@pytest.mark.parametrize("arch", ["alm", "strong_baseline"])
def test_forward_shapes(backbone, arch):
    model = build_model(arch, backbone, 7, logit_bn=backbone == "resnet18")
    x = torch.randn(2, 3, 128, 64)
    model.train()
    outputs = model(x)
    assert len(outputs) == (4 if arch == "alm" else 1)
    assert all(o.shape == (2, 7) for o in outputs)
    model.eval()
    with torch.no_grad():
        voted = model(x)
    assert voted.shape == (2, 7)
    if arch == "alm":  # max voting: eval output is the element-wise max of the four outputs
        model.training = True  # top level only: batch norm stays in eval mode
        with torch.no_grad():
            torch.testing.assert_close(voted, torch.stack(model(x)).amax(0))


@pytest.mark.parametrize("arch", ["alm", "strong_baseline"])
def test_logit_bn_normalizes_every_output_and_exports(arch, tmp_path):
    """With `logit_bn`, each output's logits are batch-normalized per attribute in training and, in
    evaluation, scaled and shifted by the running statistics before the vote; ONNX Runtime agrees.
    Without it (the published ALM) the model has no BatchNorm1d."""
    import numpy as np
    import onnxruntime as ort

    from lwpar.deploy.export import export_onnx

    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in build_model(arch, "resnet18", 6).modules())
    torch.manual_seed(0)
    model = build_model(arch, "resnet18", 6, logit_bn=True)
    x = torch.randn(8, 3, 64, 32)
    outputs = model.train()(x)
    assert len(outputs) == len(model.logit_bn) == (4 if arch == "alm" else 1)
    for logits in outputs:
        torch.testing.assert_close(logits.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
        torch.testing.assert_close(logits.var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    with torch.no_grad():
        for norm in model.logit_bn:  # statistics and affine terms away from the identity
            norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)
    model.eval()
    raw = []
    hooks = [norm.register_forward_hook(lambda m, args, out: raw.append(args[0])) for norm in model.logit_bn]
    with torch.no_grad():
        voted = model(x)
    for hook in hooks:
        hook.remove()
    expected = torch.stack([(r - n.running_mean) / torch.sqrt(n.running_var + n.eps) * n.weight + n.bias
                            for r, n in zip(raw, model.logit_bn)]).amax(0)
    torch.testing.assert_close(voted, expected)
    path = export_onnx(model, (64, 32), tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, voted.numpy(), atol=1e-4, rtol=1e-4)


def test_backbone_pyramid_strides():
    for name in ["bn_inception", "efficientnet_lite0", "resnet18", "vgg16", "resnet50_half", "mobilenet_v2"]:
        body = build_backbone(name, pretrained=False)
        maps = body(torch.randn(1, 3, 256, 128))
        assert [m.shape[1] for m in maps] == list(body.channels), name
        assert [m.shape[2] for m in maps] == [32, 16, 8], name


def test_efficientnet_lite0_pretrained_weights_load_offline():
    pretrained = build_backbone("efficientnet_lite0", pretrained=True)
    scratch = build_backbone("efficientnet_lite0", pretrained=False)
    first = next(iter(pretrained.state_dict()))
    assert not torch.equal(pretrained.state_dict()[first], scratch.state_dict()[first])


@pytest.mark.fault
def test_missing_weights_offline_fail_clearly(tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(LwparError, match=r"bn_inception pretrained weights: cannot download .*put "
                                         r"bn_inception-52deb4733.pth into .*or set pretrained: false"):
        build_backbone("bn_inception", pretrained=True, weights_dir=tmp_path)


@pytest.mark.fault
def test_weights_with_wrong_hash_refused(tmp_path):
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    with pytest.raises(LwparError, match=r"resnet18-f37072fd.pth: sha256 [0-9a-f]+ does not start with f37072fd"):
        build_backbone("resnet18", pretrained=True, weights_dir=tmp_path)


def _randomize_transforms(level: LocalizationLevel, scale: float) -> None:
    # Large transform parameters push samples outside the map, exercising border clamping.
    for stn in level.stn_list:
        torch.nn.init.normal_(stn.weight, std=scale)
        torch.nn.init.normal_(stn.bias, std=2 * scale)


def _assert_fused_equals_reference(level, x):
    """A level's fused logits and gradients (input and every parameter) equal the published ones."""
    level.head = "reference"
    reference = level(x)
    grads_ref = torch.autograd.grad(reference.sum(), [x, *level.parameters()])
    level.head = "fused"
    fused = level(x)
    grads_fused = torch.autograd.grad(fused.sum(), [x, *level.parameters()])
    torch.testing.assert_close(fused, reference, rtol=1e-9, atol=1e-9)
    for a, b in zip(grads_fused, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels,size", [(768, (16, 8)), (512, (8, 4)), (256, (4, 2)), (32, (5, 3)), (32, (1, 1))])
def test_fused_equals_reference(align_corners, channels, size):
    torch.manual_seed(channels + size[0])
    level = LocalizationLevel(5, channels, "reference", align_corners).double()
    _randomize_transforms(level, 1.0)
    x = torch.randn(3, channels, *size, dtype=torch.float64, requires_grad=True)
    _assert_fused_equals_reference(level, x)


@pytest.mark.parametrize("align_corners", [False, True])
def test_fused_equals_reference_float32_whole_model(align_corners):
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 6, alm_head="reference", align_corners=align_corners).eval()
    for level in (model.st_3b, model.st_4d, model.st_5b):
        _randomize_transforms(level, 0.5)
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        reference = model(x)
        model.set_head("fused")
        fused = model(x)
    assert ((fused - reference).abs() / reference.abs().clamp_min(1e-3)).max() < 1e-5


def test_checkpoint_interchangeable_between_heads():
    fused = build_model("alm", "resnet18", 4, alm_head="fused")
    reference = build_model("alm", "resnet18", 4, alm_head="reference")
    assert list(fused.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(fused.state_dict())


@pytest.mark.parametrize("sizes", [((4, 2), (8, 4)), ((8, 4), (16, 8)), ((3, 5), (7, 6)), ((1, 1), (4, 2)), ((5, 3), (5, 3))])
def test_exported_pyramid_upsampling_matches_interpolate(sizes):
    from lwpar.models.alm import bilinear_upsample

    (h, w), out = sizes
    coarse = torch.randn(2, 6, h, w, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(coarse, size=out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(bilinear_upsample(coarse, out), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_levels_sharing_one_kernel_computation_equal_levels_alone(align_corners):
    torch.manual_seed(1)
    model = build_model("alm", "resnet18", 5, alm_head="fused", align_corners=align_corners).double().eval()
    for level in (model.st_3b, model.st_4d, model.st_5b):
        _randomize_transforms(level, 1.0)
    x = torch.randn(2, 3, 96, 48, dtype=torch.float64)
    with torch.no_grad():
        shared = model(x)
        *maps, main = model.pyramid(x)
        alone = torch.stack([level(f) for level, f in zip((model.st_3b, model.st_4d, model.st_5b), maps)] + [main]).amax(0)
    torch.testing.assert_close(shared, alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_fused_head_runs_factorized_attention_exactly(align_corners):
    """The heads' attention convs and transform units stay open to compression: after per-attribute
    SVD (ranks differing between attributes, one attribute left dense, as a measured rank policy may
    leave them) the fused head still equals the published computation, values and gradients."""
    from lwpar.compress.decompose.factorize import factorize_layer

    torch.manual_seed(3)
    level = LocalizationLevel(4, 64, "reference", align_corners).double()
    _randomize_transforms(level, 1.0)
    for index in (0, 2, 3):  # attribute 1 keeps dense attention convs: two groups, put back in order
        att, rank = level.att_list[index], 2 + index  # a different rank per attribute: zero-padded
        att.conv1 = factorize_layer(att.conv1, "svd", rank)[0]
        att.conv2 = factorize_layer(att.conv2, "svd", rank + 1)[0]
    level.stn_list[1] = factorize_layer(level.stn_list[1], "svd", 2)[0]
    level.fc_list[2] = factorize_layer(level.fc_list[2], "svd", 1)[0]
    assert isinstance(level.att_list[0].conv1, torch.nn.Sequential)
    x = torch.randn(3, 64, 6, 4, dtype=torch.float64, requires_grad=True)
    _assert_fused_equals_reference(level, x)


def test_bn_inception_stride_one_pools_export_without_ceil_mode():
    """ceil_mode is a no-op at stride 1, and ONNX Runtime's AveragePool runs it on a slow path."""
    from lwpar.models.bninception import BNInception

    pools = [m for m in BNInception().modules() if isinstance(m, (torch.nn.AvgPool2d, torch.nn.MaxPool2d))]
    stride_one = [m for m in pools if m.stride in (1, (1, 1))]
    assert len(stride_one) == 8 and not any(m.ceil_mode for m in stride_one)
    assert all(m.ceil_mode for m in pools if m not in stride_one)  # stride 2: the official output sizes


def test_model_files_from_before_the_rename_still_build_the_strong_baseline():
    assert isinstance(build_model("baseline", "resnet18", 3), StrongBaseline)
