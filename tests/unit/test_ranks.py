"""Measured rank selection: the LWALM per-layer binary search, the greedy budget allocation, and the
sensitivity cache they share (replayed without measuring, refused when measured otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lwpar.core.errors import LwparError
from lwpar.evaluation.complexity import count_macs
from lwpar.compress.decompose.factorize import apply_plan, factorized_macs, original_macs, select_layers
from lwpar.compress.ranks import plan
from lwpar.compress.ranks.measured import candidate_ranks
from lwpar.compress.ranks.sensitivity import SensitivityProbe, load_cache, save_cache

SIZE = (16, 16)
SETTINGS = {"eps": 0.02, "metric": "mA", "val_images": None, "calibration_batches": 0,
            "fractions": [0.1, 0.25, 0.5, 0.75], "sensitivity_from": None}


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                          nn.Conv2d(48, 64, 1), nn.ReLU(), nn.Conv2d(64, 40, 1))
    with torch.no_grad():  # trained kernels are far from full rank: rank 12 in both channel modes, plus noise
        for conv in (model[3], model[6], model[8]):
            out_channels, in_channels, kh, kw = conv.weight.shape
            core = torch.randn(12, 12, kh, kw)
            low = torch.einsum("oa,abhw,ib->oihw", torch.randn(out_channels, 12), core, torch.randn(in_channels, 12))
            conv.weight.copy_(low / low.norm() * conv.weight.norm() + 0.02 * conv.weight)
    return model.eval()


def _probe(model, cache=None):
    """Score: 1 - relative output error against the unmodified model, on fixed inputs."""
    x = torch.randn(8, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    calls = []

    def score(m):
        with torch.no_grad():
            return 1 - float((m(x) - reference).norm() / reference.norm())

    def recalibrate(m):
        calls.append(m)

    probe = SensitivityProbe(model, score, recalibrate, cache=cache)
    probe.recalibrations = calls
    return probe


def _policy(name, **extra):
    return {"policy": name, "fraction": 0.5, "energy": 0.9, "macs_fraction": 0.6, "multiple": 8,
            "search": {**SETTINGS, **extra}}


def _plan(model, policy, probe):
    names = select_layers(model, ["kxk", "pointwise"])
    return plan(model, names, {"kxk": "tucker2", "pointwise": "svd"}, SIZE, policy, count_macs(model, SIZE), probe)


def test_search_picks_the_smallest_rank_within_eps_for_each_layer():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = _probe(model)
    chosen = _plan(model, _policy("search"), probe)
    assert chosen, "some layer must be compressible within eps"
    reference = probe.baseline()
    for entry in chosen:
        ranks = candidate_ranks(entry, 8)
        assert all(factorized_macs(entry["method"], entry["shape"], r, entry["io"]) <
                   original_macs(entry["shape"], entry["io"]) for r in ranks), "no candidate may cost more"
        drops = [reference - probe(entry, r) for r in ranks]  # every candidate, measured (or cached)
        within = [r for r, d in zip(ranks, drops) if d <= 0.02]
        assert entry["rank"] == min(within), (entry["layer"], list(zip(ranks, drops)))
    # probing leaves the model, its BatchNorm statistics included, exactly as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert probe.recalibrations, "every probe re-estimates BatchNorm first"


def test_greedy_meets_the_mac_budget_and_a_tighter_budget_replays_from_the_cache():
    model = _model()
    total = count_macs(model, SIZE)
    probe = _probe(model)
    chosen = _plan(model, _policy("greedy"), probe)
    measured = probe.measured
    trial = _model()
    apply_plan(trial, chosen, decompose=False)
    assert count_macs(trial, SIZE) <= 0.6 * total

    replay = SensitivityProbe(model, cache=probe.cache)  # no score function: cache only
    tighter = _plan(model, _policy("greedy") | {"macs_fraction": 0.3}, replay)
    assert replay.measured == 0 and measured > 0
    trial = _model()
    apply_plan(trial, tighter, decompose=False)
    assert count_macs(trial, SIZE) <= 0.3 * total


def test_cache_round_trips_and_is_refused_under_other_settings(tmp_path):
    model = _model()
    probe = _probe(model)
    chosen = _plan(model, _policy("search"), probe)
    meta = {"baseline_sha256": "abc", "seed": 0, "metric": "mA"}
    save_cache(tmp_path / "s.json", probe, meta)
    replayed = _plan(model, _policy("search"), SensitivityProbe(model, cache=load_cache(tmp_path / "s.json", meta)))
    assert [(e["layer"], e["rank"]) for e in replayed] == [(e["layer"], e["rank"]) for e in chosen]
    with pytest.raises(LwparError, match=r"s.json: measured with metric='mA', this plan needs 'f1'"):
        load_cache(tmp_path / "s.json", {**meta, "metric": "f1"})
    with pytest.raises(LwparError, match=r"sensitivity cache has no score for .*: run the sensitivity stage"):
        _plan(model, _policy("search", eps=0.004), SensitivityProbe(model, cache=load_cache(tmp_path / "s.json", meta)))
    # a file cut short by a crash mid-write (write_json is atomic, but a copy or a full disk is not)
    text = (tmp_path / "s.json").read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(LwparError, match=r"cut.json: unreadable sensitivity cache"):
        load_cache(tmp_path / "cut.json", meta)


class _Block(nn.Module):
    """A residual block whose in-place activation runs both before and after its second convolution
    (SiLU: unlike ReLU, applying it twice changes the result)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x)


class _Body(nn.Module):
    """Blocks in a ModuleList that the forward iterates: the list itself is never called (as in
    timm's EfficientNet features)."""

    def __init__(self, channels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([_Block(channels) for _ in range(3)])

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


def test_reusing_the_prefix_gives_the_same_scores_from_fewer_forwards():
    """Replaying what runs before the probed layer must not change a score, with BatchNorms
    re-estimated by every probe, an in-place activation shared across the probed layer, and a
    classifier probed after a body whose block list is never called."""
    from lwpar.training.batchnorm import recalibrate_batchnorm

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, *SIZE, generator=generator)
    batches = [(torch.randn(4, 3, *SIZE, generator=generator), None) for _ in range(2)]

    def measure(reuse):
        torch.manual_seed(0)
        # 64 channels: three ranks or more per layer, so a record is replayed more than once
        model = nn.Sequential(_Body(64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64)).eval()
        with torch.no_grad():
            reference = model(x)
        stem_calls = []
        model[0].stem[0].register_forward_hook(lambda *args: stem_calls.append(1))

        def score(m):
            with torch.no_grad():
                return 1 - float((m(x) - reference).norm() / reference.norm())

        probe = SensitivityProbe(model, score, lambda m: recalibrate_batchnorm(m, batches, torch.device("cpu")),
                                 reuse_prefix=reuse)
        chosen = plan(model, select_layers(model, ["kxk", "pointwise", "linear"]), {"kxk": "svd", "pointwise": "svd"}, SIZE,
                      _policy("greedy", macs_fraction=0.9), count_macs(model, SIZE), probe)
        with torch.no_grad():
            assert torch.equal(model(x), reference), "the probe leaves the model as it found it"
        return probe.cache, [(e["layer"], e["rank"]) for e in chosen], len(stem_calls)

    scores, chosen, stem_calls = measure(False)
    reused_scores, reused_chosen, reused_stem_calls = measure(True)
    assert len(scores) >= 10 and reused_scores == pytest.approx(scores, abs=1e-6) and reused_chosen == chosen
    assert reused_stem_calls < stem_calls / 4, "the stem ran for every probe: nothing was replayed"


def _recorded_probe(forwards):
    """A replaying probe of `_model()` whose layer 6 has been probed once, so that what runs before it
    is recorded; every measurement runs the model `forwards(measurement number)` times."""
    model = _model()
    x = torch.randn(2, 3, *SIZE)
    measurements = []

    def score(m):
        measurements.append(1)
        with torch.no_grad():
            for _ in range(forwards(len(measurements))):
                m(x)
        return 0.0

    probe = SensitivityProbe(model, score, reuse_prefix=True)
    entry = {"layer": "6", "method": "svd"}
    probe.baseline()
    probe(entry, 8)
    return model, x, probe, entry


def test_reusing_the_prefix_refuses_measurements_that_call_the_model_differently():
    model, _, probe, entry = _recorded_probe(lambda n: n)  # one more forward at every measurement
    with pytest.raises(LwparError, match=r"reuse_prefix: a module was called more often"):
        probe(entry, 16)
    assert all(type(m).__name__ != "_Replay" for m in model.modules()), "replays are removed after an error"


def test_a_failure_while_installing_replays_leaves_the_model_as_it_was(monkeypatch):
    import lwpar.compress.ranks.sensitivity as search

    model, x, probe, entry = _recorded_probe(lambda n: 1)
    with torch.no_grad():
        reference = model(x)
    assert len(probe._recorded) >= 2, "the test needs at least two replays to install"
    made, real = [], search._Replay

    def second_fails(outputs):
        made.append(1)
        if len(made) == 2:
            raise RuntimeError("out of memory")
        return real(outputs)

    monkeypatch.setattr(search, "_Replay", second_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        probe(entry, 16)
    assert all(type(m).__name__ != "_Replay" for m in model.modules()), "an installed replay was left in the model"
    assert all(not m._forward_hooks for m in model.modules()), "a recording hook was left in the model"
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_a_probe_of_a_variant_that_fits_outputs_fits_them_too(monkeypatch):
    """The measured policies score each rank as the plan will factorize it: with calibration statistics,
    the probe's replacement is fitted in the layer's metric (here: the metric the statistics give)."""
    import lwpar.compress.ranks.sensitivity as sensitivity
    from lwpar.compress.decompose.factorize import layer_info
    from lwpar.compress.decompose.metric import InputMetric

    model = _model()
    entry = layer_info(model, ["6"], {"kxk": "tucker2", "pointwise": "svd"}, SIZE)[0]
    second_moment = np.diag(np.linspace(0.01, 10, 48))

    class Statistics:
        def metric(self, name, shape, rank):
            assert (name, shape, rank) == ("6", entry["shape"], 16)
            return InputMetric(second_moment, shape)

    seen = []
    real = sensitivity.factorize_layer
    monkeypatch.setattr(sensitivity, "factorize_layer",
                        lambda *args, **kwargs: seen.append(kwargs.get("metric")) or real(*args, **kwargs))
    scores = [sensitivity.SensitivityProbe(model, lambda m: float(m(torch.ones(1, 3, *SIZE)).sum()),
                                           statistics=statistics)(entry, 16) for statistics in (None, Statistics())]
    assert seen[0] is None and np.array_equal(seen[1].second_moment, second_moment)
    assert scores[0] != scores[1]  # the same rank fitted another way scores otherwise
