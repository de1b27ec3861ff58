"""Fitting a compressed model from its own inputs: the sequential fit (each layer from the inputs the
layers compressed before it give it) and block-wise reconstruction (each changed block trained
towards the uncompressed one), and the walk both rely on (forward stopped at a module, blocks)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lwpar.compress.blockwise import reconstruct_blocks
from lwpar.compress.calibration import second_moments, unfolded
from lwpar.compress.decompose.factorize import apply_plan
from lwpar.compress.decompose.metric import InputMetric
from lwpar.compress.sequential import SequentialFit, corrected_target
from lwpar.compress.walk import BlockWalk, block_of, changed_modules, execution_order, feeders, run_to
from lwpar.core.errors import LwparError
from lwpar.models import build_model

CPU = torch.device("cpu")


class _Moments:
    """Calibration statistics held in memory (what `calibration.Statistics` reads from its file)."""

    def __init__(self, moments: dict, ridge: float):
        self.moments, self.ridge = moments, ridge

    def metric(self, name, shape, rank):
        return InputMetric(self.moments[name].double().numpy(), shape, self.ridge)

    def heldout(self, name):
        return self.moments[name].double().numpy()


def _correlated_images(count: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Images whose channels are strongly correlated (a random mixing with falling variances)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=generator, dtype=torch.float64) * 0.5 ** torch.arange(channels)
    white = torch.randn(count, channels, 8, 8, generator=generator, dtype=torch.float64)
    return torch.einsum("dc,ncij->ndij", mixing, white)


def _two_layers(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 10, 3, padding=1)).double().eval()


def _output_error(teacher: nn.Module, student: nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        expected = teacher(images)
        return float((student(images) - expected).pow(2).sum() / expected.pow(2).sum())


RIDGE = 1e-7
PLAN = [{"layer": "0", "method": "svd", "rank": 3}, {"layer": "2", "method": "svd", "rank": 4}]


def _fitted(teacher, images, sequential: bool) -> nn.Module:
    moments, _ = second_moments(teacher, ["0", "2"], [images], CPU)
    student = copy.deepcopy(teacher)
    walk = SequentialFit(teacher, images, 16, CPU, RIDGE) if sequential else None
    apply_plan(student, copy.deepcopy(PLAN), statistics=_Moments(moments, RIDGE), sequential=walk)
    return student


def test_the_sequential_fit_is_never_worse_than_the_covariance_fit_on_a_two_layer_toy():
    teacher, images = _two_layers(), _correlated_images(48, 6)
    covariance, sequential = _fitted(teacher, images, False), _fitted(teacher, images, True)
    # the first layer sees the uncompressed inputs either way: the same fit
    first = [m[0][0].weight.detach() for m in (covariance, sequential)]
    assert float((first[1] - first[0]).norm() / first[0].norm()) < 1e-5
    errors = [_output_error(teacher, m, images) for m in (covariance, sequential)]
    # SVD is the exact optimum of the sequential objective; the covariance fit's layer is one candidate
    assert errors[1] <= errors[0] * (1 + 1e-6), errors
    assert errors[1] < 0.9 * errors[0], errors  # and the first layer's error is large enough to correct


def test_on_unchanged_inputs_the_corrected_target_is_the_weight():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 3, 2, 2))
    rows = rng.standard_normal((200, 12))
    moment = rows.T @ rows / 200
    np.testing.assert_allclose(corrected_target(weight, moment, moment, 1e-2), weight, rtol=1e-10, atol=1e-12)


def test_a_sequential_fit_needs_as_many_inputs_as_the_rank():
    teacher = _two_layers()
    walk = SequentialFit(teacher, _correlated_images(1, 6)[:, :, :1, :1], 1, CPU, RIDGE)  # one 1 x 1 image: one row
    with pytest.raises(Exception, match="calibration inputs cannot fit rank 3"):
        walk.fitting(copy.deepcopy(teacher), "0", {"in": 6, "out": 12, "kh": 3, "kw": 3}, 3)


def test_run_to_stops_at_the_module_and_returns_what_enters_or_leaves_it():
    model = _two_layers()
    images = _correlated_images(2, 6)
    calls = []
    model[2].register_forward_pre_hook(lambda m, args: calls.append("last layer ran"))
    entering = run_to(model, "1", images, "input")
    leaving = run_to(model, "1", images, "output")
    torch.testing.assert_close(entering, model[0](images))
    torch.testing.assert_close(leaving, torch.relu(model[0](images)))
    assert calls == []  # nothing after the module was computed
    assert execution_order(model, ["2", "0", "1"], images) == ["0", "1", "2"]


def test_the_blocks_of_an_alm_are_its_residual_blocks_levels_and_lateral_layers():
    model = build_model("alm", "resnet18", 3)
    assert block_of(model, "main_branch.layer2.0.conv1") == "main_branch.layer2.0"
    assert block_of(model, "main_branch.layer2.0.downsample.0") == "main_branch.layer2.0"
    assert block_of(model, "st_4d.att_list.1.conv2") == "st_4d"
    assert block_of(model, "latlayer_3b") == "latlayer_3b"


def _toy_network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)

    def block(inputs, outputs):
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU())
    network = nn.Sequential(block(6, 16), block(16, 16), nn.Conv2d(16, 8, 1))
    for norm in (network[0][1], network[1][1]):  # statistics as a trained network has them
        norm.running_var.uniform_(0.5, 2.0)
        norm.running_mean.uniform_(-0.2, 0.2)
    return network.eval()


def test_block_wise_reconstruction_lowers_each_changed_blocks_error_and_touches_nothing_else():
    teacher = _toy_network()
    student = copy.deepcopy(teacher)
    apply_plan(student, [{"layer": "0.0", "method": "svd", "rank": 4}, {"layer": "1.0", "method": "spatial_svd",
                                                                       "rank": 4}])
    untouched = {k: v.clone() for k, v in student.state_dict().items() if k.startswith(("0.1", "1.1", "2."))}
    images, heldout = _correlated_images(80, 6).float().split([64, 16])  # one distribution, two samples
    before = _output_error(teacher, student, heldout)
    record = reconstruct_blocks(student, teacher, images, heldout, {"steps": 60, "batch_size": 8, "lr": 1e-2}, CPU, 0)
    assert [b["block"] for b in record["blocks"]] == ["0", "1"]
    for block in record["blocks"]:
        assert block["kept"] and block["heldout_error_after"] < block["heldout_error_before"], block
    assert _output_error(teacher, student, heldout) < 0.7 * before
    for key, value in untouched.items():  # BatchNorm and the unchanged layer stay as they were
        torch.testing.assert_close(student.state_dict()[key], value, rtol=0, atol=0)
    assert all(p.requires_grad for p in student.parameters())


def test_a_model_compression_left_unchanged_has_no_block_to_reconstruct():
    teacher = _toy_network()
    student = copy.deepcopy(teacher)
    assert changed_modules(teacher, student) == []
    images = _correlated_images(8, 6).float()
    assert reconstruct_blocks(student, teacher, images, images, {"steps": 5, "batch_size": 4, "lr": 1e-2}, CPU, 0) == \
        {"blocks": [], "seconds": 0.0}


def test_a_block_whose_output_channels_were_pruned_is_skipped_with_its_reason():
    teacher = _toy_network()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # the first block keeps 12 of its 16 output channels, the next conv their inputs
        student[0][0] = nn.Conv2d(6, 12, 3, padding=1, bias=False)
        student[0][1] = nn.BatchNorm2d(12).eval()
        student[1][0] = nn.Conv2d(12, 16, 3, padding=1, bias=False)
    images, heldout = _correlated_images(40, 6).float().split([32, 8])
    record = reconstruct_blocks(student, teacher, images, heldout, {"steps": 20, "batch_size": 8, "lr": 1e-2}, CPU, 0)
    first, second = record["blocks"]
    assert first["block"] == "0" and not first["kept"] and "[12, 8, 8], the uncompressed block's [16, 8, 8]" in first["skipped"]
    assert second["block"] == "1" and "skipped" not in second
    assert second["heldout_error_after"] < second["heldout_error_before"]


class _Branching(nn.Module):
    """A stem, a stage of two blocks, a side branch reading the first block's output and a head reading
    the second's; with `in_place`, the first block's output is changed in place before the side reads it."""

    def __init__(self, in_place: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.in_place = in_place
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(*(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(2)))
        self.side, self.head = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        first = self.stage[0](self.stem(x))
        second = self.stage[1](first)
        if self.in_place:
            first.add_(1)
        return self.head(second) + self.side(first)


BRANCH_BLOCKS = ["stage.0", "stage.1", "head", "side"]  # in execution order


def test_a_block_fed_by_an_earlier_block_is_found_unless_its_input_changed_on_the_way():
    images = torch.randn(2, 3, 8, 8)
    assert feeders(_Branching().eval(), BRANCH_BLOCKS, images) == \
        {"stage.0": None, "stage.1": "stage.0", "side": "stage.0", "head": "stage.1"}
    assert feeders(_Branching(in_place=True).eval(), BRANCH_BLOCKS, images)["side"] is None


@pytest.mark.parametrize("in_place", [False, True])
def test_the_block_walk_gives_each_block_the_inputs_a_full_forward_pass_gives_it(in_place):
    teacher = _Branching(in_place).eval()
    student = copy.deepcopy(teacher)
    images, heldout = torch.randn(10, 3, 8, 8), torch.randn(3, 3, 8, 8)
    stem_calls = []
    for model in (teacher, student):
        model.stem.register_forward_hook(lambda m, args, output: stem_calls.append(len(args[0])))
    walk = BlockWalk(teacher, student, list(reversed(BRANCH_BLOCKS)), {"fit": images, "heldout": heldout}, 4, CPU)
    assert walk.order == BRANCH_BLOCKS
    walked = 0  # images the stem ran on inside the walk's own calls

    def walking(call, *args):
        nonlocal walked
        before = len(stem_calls)
        value = call(*args)
        walked += sum(stem_calls[before:])
        return value

    for block in walk.order:
        inputs = walking(walk.enter, block)
        for who, model in (("teacher", teacher), ("student", student)):
            for part, batch in (("fit", images), ("heldout", heldout)):
                torch.testing.assert_close(inputs[who, part], run_to(model, block, batch), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(walking(walk.output, "teacher", "fit"), run_to(teacher, block, images, "output"))
        with torch.no_grad():  # the student's block changes before the walk leaves it
            student.get_submodule(block).apply(lambda m: m.weight.mul_(0.5) if isinstance(m, nn.Conv2d) else None)
        walking(walk.leave)
    # per model and image set, the stem ran once to reach the first block and, with the in-place change, once
    # more to reach the side branch; every other block's inputs came from the block feeding it
    assert walked == 2 * (len(images) + len(heldout)) * (2 if in_place else 1)
    with pytest.raises(LwparError, match="twice"):
        walk.enter("side")


def test_the_sequential_fit_reads_the_same_moments_as_full_forward_passes_on_an_alm():
    teacher = build_model("alm", "resnet18", 3).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # the student's first residual block as an earlier compression left it
        student.main_branch.layer1[0].conv1.weight.mul_(0.7)
    images = torch.randn(6, 3, 64, 32)
    names = ["latlayer_4d", "main_branch.layer2.0.conv2", "main_branch.layer1.1.conv1", "main_branch.layer2.0.downsample.0"]
    fit = SequentialFit(teacher, images, 4, CPU, RIDGE)
    for name in fit.order(names):
        own, cross, rows = fit.moments(student, name)
        layer = teacher.get_submodule(name)
        ours, theirs = (unfolded(layer, run_to(m, name, images)).double() for m in (student, teacher))
        np.testing.assert_allclose(own, (ours.T @ ours / rows).numpy(), rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(cross, (ours.T @ theirs / rows).numpy(), rtol=1e-4, atol=1e-8)
