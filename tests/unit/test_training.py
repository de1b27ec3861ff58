"""Training in process: the loop resumes to bit-identical weights from its checkpoint, NaN stops with
epoch and step, frozen stages, the moving average, schedules, precision."""

from __future__ import annotations

import pytest
import torch

from lwpar.core.errors import LwparError


def _fit(tiny, out, interrupt_at=None, **train):
    """`fit` of the tiny ALM for 2 epochs of 2 updates (`train` changes the schedule); with
    `interrupt_at`, the run stops as a Ctrl-C would when that epoch starts."""
    from unittest import mock

    import lwpar.training.loop as loop
    from lwpar.data.loader import Prepared
    from lwpar.models import build_model

    tmp, params = tiny
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 35)
    cfg = {**params["train"], "epochs": 2, "max_steps_per_epoch": 2, **train}
    real = loop.train_one_epoch

    def interrupted(model, opt, loader, steps, epoch, *args):
        if epoch == interrupt_at:
            raise KeyboardInterrupt
        return real(model, opt, loader, steps, epoch, *args)

    with mock.patch.object(loop, "train_one_epoch", interrupted):
        result = loop.fit(model, Prepared(tmp / "prepared"), [64, 32], cfg, out, loop.Run(torch.device("cpu")),
                          fingerprint="tiny")
    return model, result


@pytest.mark.fault
# per-update schedule and moving average: the most state a resume must restore (every schedule's rates:
# test_schedules_follow_their_definitions; a SIGKILLed process resuming: stages/test_train_stage)
@pytest.mark.parametrize("schedule,ema_decay", [("cosine_steps", 0.8)])
def test_an_interrupted_run_resumes_from_its_checkpoint_to_bit_identical_weights(tiny, tmp_path, schedule, ema_decay):
    _, whole = _fit(tiny, tmp_path / "whole", schedule=schedule, ema_decay=ema_decay)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny, tmp_path / "resumed", interrupt_at=1, schedule=schedule, ema_decay=ema_decay)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    _, resumed = _fit(tiny, tmp_path / "resumed", schedule=schedule, ema_decay=ema_decay)
    assert len(resumed.history) == 2 and resumed.best_epoch == whole.best_epoch
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in whole.history]


@pytest.mark.fault
def test_a_diverging_run_names_epoch_and_step(tiny, tmp_path):
    with pytest.raises(LwparError, match=r"^loss is (nan|inf) at epoch 1, step \d+: training diverged$"):
        _fit(tiny, tmp_path, lr=1e30, warmup_epochs=0)


@pytest.mark.fault
def test_frozen_stages_without_pretrained_weights_are_refused(tiny, tmp_path):
    from lwpar.data.loader import Prepared
    from lwpar.training.baseline import train_baseline

    tmp, params = tiny
    bad = {**params, "train": {**params["train"], "frozen_stages": 1}}
    with pytest.raises(LwparError, match="train.frozen_stages: 1 freezes randomly initialised layers of model 'tiny'"):
        train_baseline(bad, "tiny", Prepared(tmp / "prepared"), tmp_path)


@pytest.mark.fault
def test_truncated_model_file_is_a_clear_error(tmp_path):
    from lwpar.compress.structure import load_model
    from lwpar.core.modelfile import save_model
    from lwpar.models import build_model

    cfg = {"arch": "alm", "backbone": "resnet18", "pretrained": False, "alm_head": "fused", "align_corners": False,
           "input_size": [64, 32]}
    save_model(tmp_path / "whole.pt", build_model("alm", "resnet18", 3), cfg, ["a", "b", "c"])
    broken = tmp_path / "model.pt"
    broken.write_bytes((tmp_path / "whole.pt").read_bytes()[:5000])
    with pytest.raises(LwparError, match=r"model.pt: corrupt or truncated model file"):
        load_model(broken)


def test_frozen_stages_keep_their_weights_and_batchnorm_statistics(tiny, tmp_path):
    from lwpar.data.loader import Prepared
    from lwpar.models import build_model
    from lwpar.training.loop import Run, fit

    tmp, params = tiny
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 35)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {**params["train"], "epochs": 1, "max_steps_per_epoch": 2, "warmup_epochs": 0}
    fit(model, Prepared(tmp / "prepared"), [64, 32], cfg, tmp_path, Run(torch.device("cpu")), frozen_stages=2)  # the stem (conv1, bn1) and layer1
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("main_branch.conv1.", "main_branch.bn1.", "main_branch.layer1."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # BN running stats included
    assert not torch.equal(before["main_branch.layer2.0.conv1.weight"], after["main_branch.layer2.0.conv1.weight"])
    assert not torch.equal(before["main_branch.layer2.0.bn1.running_mean"], after["main_branch.layer2.0.bn1.running_mean"])


def test_the_moving_average_of_the_weights_is_what_training_keeps(tiny, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from lwpar.data.loader import Prepared
    from lwpar.models import build_model
    from lwpar.training.loop import Run, fit

    tmp, params = tiny
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 35)
    decay, watched = 0.6, "main_branch.layer4.1.conv2.weight"
    after_each_update = []
    hook = register_optimizer_step_post_hook(
        lambda *_: after_each_update.append(model.get_parameter(watched).detach().clone()))
    try:
        cfg = {**params["train"], "epochs": 1, "max_steps_per_epoch": 3, "warmup_epochs": 0, "ema_decay": decay}
        result = fit(model, Prepared(tmp / "prepared"), [64, 32], cfg, tmp_path, Run(torch.device("cpu")))
    finally:
        hook.remove()
    assert len(after_each_update) == 3
    expected = after_each_update[0]      # the average starts at the first update's weights
    for weights in after_each_update[1:]:
        expected = decay * expected + (1 - decay) * weights
    kept = result.state_dict[watched]     # under the model's own names: the kept file loads as any other
    torch.testing.assert_close(kept, expected)
    assert not torch.allclose(kept, after_each_update[-1])   # not the last weights
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert torch.equal(checkpoint["model"][watched], after_each_update[-1])   # what a resumed run goes on from


def test_freezing_more_stages_than_the_backbone_has_is_a_clear_error():
    from lwpar.core.errors import LwparError
    from lwpar.models.backbones import build_backbone, freeze_stages

    with pytest.raises(LwparError, match=r"train.frozen_stages: 6 is more than the backbone's 5 stages"):
        freeze_stages(build_backbone("resnet18", False), 6)


@pytest.mark.parametrize("name,count", [("efficientnet_lite0", 4), ("resnet18", 2), ("bn_inception", 3),
                                        ("resnet50_half", 3), ("mobilenet_v2", 4)])
def test_folding_frozen_batchnorms_keeps_the_function_and_the_state_dict(name, count):
    from lwpar.models.backbones import build_backbone, folded_frozen_batchnorm, freeze_stages

    torch.manual_seed(0)
    backbone = build_backbone(name, False).to(memory_format=torch.channels_last)
    for module in backbone.modules():  # fresh BatchNorms are identities: give them statistics to fold
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    frozen = freeze_stages(backbone, count)
    backbone.eval()
    x = torch.randn(2, 3, 96, 64)
    reference = backbone(x)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    norms = [m for f in frozen for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with folded_frozen_batchnorm(backbone, frozen) as folded:
        assert folded == len(norms) > 0    # every frozen BatchNorm here reads a frozen convolution
        for norm in norms:                 # folded: their statistics no longer enter the computation
            norm.running_mean.add_(100.0)
        inside = backbone(x)
        for norm in norms:
            norm.running_mean.copy_(state[_name_of(backbone, norm) + ".running_mean"])
    for a, b in zip(reference, inside):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    assert backbone.state_dict().keys() == state.keys()
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items())
    after = backbone(x)                    # undone: the BatchNorms compute again
    assert all(torch.equal(a, b) for a, b in zip(reference, after))
    for norm in norms:
        norm.running_mean.add_(1.0)
    assert not torch.allclose(backbone(x)[0], reference[0])


def _name_of(root, module):
    return next(name for name, m in root.named_modules() if m is module)


def test_nothing_is_folded_when_nothing_is_frozen():
    from lwpar.models.backbones import build_backbone, folded_frozen_batchnorm

    backbone = build_backbone("resnet18", False)
    with folded_frozen_batchnorm(backbone, []) as folded:
        assert folded == 0


def test_every_backbone_lists_its_stages_from_the_input_up():
    from lwpar.models.backbones import BACKBONES, build_backbone

    for name in BACKBONES:
        backbone = build_backbone(name, False)
        stages = backbone.stages()
        listed = {id(p) for stage in stages for module in stage for p in module.parameters()}
        assert len(stages) >= 4 and listed == {id(p) for p in backbone.parameters()}, name


def _rates(schedule: str, epochs: int = 2, steps: int = 10, **cfg) -> list[float]:
    """The rate each of an `epochs` x `steps` run's updates runs at, stepping as `fit` does."""
    from lwpar.training.schedules import PER_UPDATE_SCHEDULES, build_scheduler

    cfg = {"schedule": schedule, "epochs": epochs, "warmup_epochs": 0, "step_size": 1, "gamma": 0.1,
           "patience": 0, **cfg}
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, steps, warmup_steps=0)
    rates = []
    for _ in range(epochs):
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if schedule in PER_UPDATE_SCHEDULES:
                scheduler.step()
        if schedule == "plateau":
            scheduler.step(0.0)        # a validation score that never improves
        elif schedule not in PER_UPDATE_SCHEDULES:
            scheduler.step()
    return rates


def test_schedules_follow_their_definitions():
    per_update = _rates("cosine_steps")
    assert per_update[0] == 1.0 and per_update[10] == pytest.approx(0.5) and per_update[-1] < 0.01
    assert all(a > b for a, b in zip(per_update, per_update[1:]))            # falls at every update
    per_epoch = _rates("cosine")
    assert per_epoch == pytest.approx([1.0] * 10 + [0.5] * 10)
    assert _rates("step", epochs=3)[::10] == pytest.approx([1.0, 0.1, 0.01])
    # the first score sets the best; each later one fails to beat it
    assert _rates("plateau", epochs=3)[::10] == pytest.approx([1.0, 1.0, 0.1])


def test_unknown_schedule_is_a_clear_error():
    from lwpar.core.errors import LwparError

    with pytest.raises(LwparError, match="train.schedule"):
        _rates("linear")


def test_runtime_amp_chooses_the_training_precision_by_device_and_cpu():
    from lwpar.core.runtime import training_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    amx, avx512_bf16, avx2 = {"avx2", "amx_bf16"}, {"avx2", "avx512f", "avx512_bf16"}, {"avx2", "fma"}
    assert training_precision(False, cpu, amx) == training_precision(False, cuda, amx) == torch.float32
    assert training_precision(True, cuda, avx2) == torch.float16 and training_precision(True, cpu, amx) == torch.float32
    assert training_precision("auto", cuda, avx2) == torch.float16
    assert training_precision("auto", cpu, amx) == training_precision("auto", cpu, avx512_bf16) == torch.bfloat16
    assert training_precision("auto", cpu, avx2) == torch.float32
    assert training_precision("bf16", cuda, avx2) == training_precision("bf16", cpu, amx) == torch.bfloat16
    with pytest.warns(UserWarning, match=r"runtime.amp: bf16 on a CPU without amx_bf16 or avx512_bf16: .*slower"):
        assert training_precision("bf16", cpu, avx2) == torch.bfloat16


def test_bfloat16_training_runs_and_changes_the_computation(tiny, tmp_path):
    """Under bf16 autocast the same steps train to other (finite) weights than in float32."""
    from lwpar.data.loader import Prepared
    from lwpar.models import build_model
    from lwpar.training.loop import Run, fit

    tmp, params = tiny
    cfg = {**params["train"], "epochs": 1, "max_steps_per_epoch": 2, "warmup_epochs": 0}
    weights = {}
    for precision in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = build_model("alm", "resnet18", 35)
        # 64 x 64: at 64 x 32 ResNet-18's last stride-2 convolution has a one-column output, a shape
        # that torch 2.14.1's oneDNN computes wrongly in bfloat16 on AMX (see test_faulty_autocast_...)
        result = fit(model, Prepared(tmp / "prepared"), [64, 64], cfg, tmp_path / str(precision),
                     Run(torch.device("cpu"), precision))
        weights[precision] = result.state_dict["main_branch.layer4.1.conv2.weight"]
        assert torch.isfinite(weights[precision]).all() and weights[precision].dtype == torch.float32
    assert not torch.equal(weights[torch.float32], weights[torch.bfloat16])


class _WrongUnderAutocast(torch.nn.Module):
    """A model whose logits are garbage under CPU autocast, as a faulty low-precision kernel makes them."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, images):
        logits = self.conv(images).mean((2, 3))
        return logits * 1e3 if torch.is_autocast_enabled("cpu") else logits


def test_faulty_autocast_falls_back_to_float32_and_a_sound_one_is_kept():
    from lwpar.models import build_model
    from lwpar.core.runtime import checked_precision

    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match=r"runtime.amp: bfloat16 autocast changes this model's logits by .* at input "
                                         r"\[16, 8\] on this cpu \(a faulty kernel\); running in float32"):
        assert checked_precision(_WrongUnderAutocast().train(), torch.bfloat16, [16, 8], cpu) == torch.float32
    torch.manual_seed(0)
    model = build_model("alm", "resnet18", 35).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert checked_precision(model, torch.bfloat16, [64, 64], cpu) == torch.bfloat16
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # no mode, RNG or statistics changed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert checked_precision(_WrongUnderAutocast(), torch.float32, [16, 8], cpu) == torch.float32
