"""Per-layer sensitivity, what the measured rank policies plan from: the validation score of the model
with one layer at a time replaced by its rank-r factorization, BatchNorm statistics re-estimated on
training batches, on a fixed validation subset (never the test split). Every measurement lands in
one sensitivity cache, keyed by layer, method and rank, that is written as an artifact: a later plan
(another budget, another eps) replays from it and measures only what it lacks.

Everything that runs before the probed layer computes what it computed for the previous probe, so
with `reuse_prefix` those modules replay their recorded outputs instead of running again (measured
on ALM-Lite0 at 256 x 128: the backbone is 65 % of a forward and half of it precedes the average
probed layer).

`measure_sensitivity` is the sensitivity stage's one call: it decodes the images once, resumes from
`<out>.partial` (every probe is written there as it is measured) and runs the policy's probes.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from lwpar.compress.decompose.factorize import _replace, factorize_layer
from lwpar.core.errors import LwparError
from lwpar.core.io import read_json, sha256_file, write_json
from lwpar.core.progress import Progress

BASELINE = "baseline"


def _clone(output):
    """A copy of every tensor in a module's output (a tensor, or tuples, lists and dicts of them)."""
    return tree_map_only(torch.Tensor, torch.clone, output)


class _Replay(nn.Module):
    """Stands in for a module that runs before the probed layer: its n-th call in training mode
    (BatchNorm re-estimation) or in evaluation mode (scoring) returns what the module returned in
    its n-th such call of an earlier measurement. Counting the two modes apart keeps the scores
    aligned when re-estimation is skipped (no BatchNorm after the layer). The output is a copy:
    in-place activations downstream would otherwise overwrite the record."""

    def __init__(self, outputs: dict):
        super().__init__()
        self.outputs, self.calls = outputs, {True: 0, False: 0}

    def forward(self, *args, **kwargs):
        outputs, done = self.outputs[self.training], self.calls[self.training]
        if done == len(outputs):
            raise LwparError(f"reuse_prefix: a module was called more often than in the measurement it replays "
                             f"({len(outputs)} calls): every measurement must make the same model calls")
        self.calls[self.training] += 1
        return _clone(outputs[done])


class SensitivityProbe:
    """Scores of the model with one layer factorized; `score(model)` and `recalibrate(model)` are
    supplied by the caller (validation subset, training batches). Without them the probe only
    replays its cache and names what is missing.

    `reuse_prefix` replays, instead of running, the modules that finish before the probed layer
    starts. It requires that every measurement makes the same model calls on the same inputs (fixed
    images and batches) and holds their outputs for all those calls in memory."""

    def __init__(self, model: nn.Module, score=None, recalibrate=None, seed: int = 0, epc: dict | None = None,
                 cache: dict | None = None, on_measure=None, reuse_prefix: bool = False, statistics=None):
        self.model, self.score, self.recalibrate, self.seed, self.epc = model, score, recalibrate, seed, epc
        self.statistics = statistics  # `compress.calibration.Statistics`: probes fit outputs, as the plan will
        self.cache = dict(cache or {})
        self.measured = 0
        self.on_measure = on_measure  # called with (key, score) after every new measurement
        self.reuse_prefix = reuse_prefix
        self._spans = None    # module name -> (first start, last end) within one forward, in call ticks
        self._recorded = {}   # module name -> its outputs, call by call per mode, over one measurement

    def _trace_hooks(self) -> list:
        """Hooks that record when each module starts and ends within the model's next forward."""
        tick, spans, forwards = itertools.count(), {}, []

        def started(name):
            def hook(module, args):
                if len(forwards) == 1:
                    spans.setdefault(name, [next(tick), None])
            return hook

        def ended(name):
            def hook(module, args, output):
                if len(forwards) == 1:
                    spans[name][1] = next(tick)
                    if not name:
                        self._spans = {n: tuple(span) for n, span in spans.items() if n}
            return hook

        handles = [self.model.register_forward_pre_hook(lambda module, args: forwards.append(1))]
        for name, module in self.model.named_modules():
            handles += [module.register_forward_pre_hook(started(name)), module.register_forward_hook(ended(name))]
        return handles

    def _prefix(self, layer: str) -> set[str]:
        """The largest modules whose every call ends before `layer` first starts."""
        if layer not in self._spans:
            return set()
        start = self._spans[layer][0]
        before = {name for name, (_, end) in self._spans.items() if end < start}

        def ancestors(name):  # all of them: a container the parent iterates (timm's blocks) is never called
            parts = name.split(".")
            return {".".join(parts[:i]) for i in range(1, len(parts))}
        return {name for name in before if not ancestors(name) & before}

    def _reuse(self, layer: str | None, hooks: list, replaced: dict) -> dict:
        """Replace the prefix's recorded modules by replays and record the rest of the prefix. Every
        hook and replaced module lands in `hooks` and `replaced` as soon as it is installed, so the
        caller can undo a partial installation."""
        if self._spans is None:
            hooks += self._trace_hooks()
            return {}
        prefix = self._prefix(layer) if layer else set()
        self._recorded = {name: outputs for name, outputs in self._recorded.items() if name in prefix}
        for name in sorted(self._recorded):  # a fixed order: a name never depends on set iteration
            replaced[name] = self.model.get_submodule(name)
            _replace(self.model, name, _Replay(self._recorded[name]))
        recording = {name: {True: [], False: []} for name in prefix - set(self._recorded)}
        for name, store in recording.items():
            hooks.append(self.model.get_submodule(name).register_forward_hook(
                lambda module, args, output, store=store: store[module.training].append(_clone(output))))
        return recording

    @staticmethod
    def key(layer: str, method: str, rank: int) -> str:
        return f"{layer}|{method}|{rank}"

    def _measure(self, key: str, prepare=None, layer: str | None = None) -> float:
        if key in self.cache:
            return self.cache[key]
        if self.score is None:
            raise LwparError(f"sensitivity cache has no score for {key}: run the sensitivity stage for this variant")
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [copy.deepcopy(m.state_dict()) for m in norms]
        restore = prepare() if prepare else None
        hooks, replaced = [], {}
        try:
            recording = self._reuse(layer, hooks, replaced) if self.reuse_prefix else {}
            if self.recalibrate:
                self.recalibrate(self.model)
            value = float(self.score(self.model.eval()))
            self._recorded.update(recording)  # only a measurement that ran to its end recorded every call
        finally:
            for handle in hooks:
                handle.remove()
            for name, module in replaced.items():
                _replace(self.model, name, module)
            if restore:
                restore()
            for m, state in zip(norms, saved):
                m.load_state_dict(state)
            self.model.eval()
        self.cache[key] = value
        self.measured += 1
        if self.on_measure:
            self.on_measure(key, value)
        return value

    def baseline(self) -> float:
        """The unmodified model's score, BatchNorm re-estimated like every probe's."""
        return self._measure(BASELINE)

    def __call__(self, entry: dict, rank: int) -> float:
        name = entry["layer"]

        def prepare():
            original = self.model.get_submodule(name)
            fitting = {} if self.statistics is None else {"metric": self.statistics.metric(name, entry["shape"], rank)}
            replacement, _ = factorize_layer(original, entry["method"], rank, self.seed, self.epc, **fitting)
            _replace(self.model, name, replacement.to(next(original.parameters()).device))
            return lambda: _replace(self.model, name, original)
        return self._measure(self.key(name, entry["method"], rank), prepare, name)


def cache_settings(params: dict, recipe: dict, model_file: Path, calibration: Path | None = None) -> dict:
    """What the scores depend on besides layer, method and rank; a cache is reused only if they match
    (for probes that fit outputs, also the fit, its regulariser and the statistics file)."""
    search = recipe["rank"]["search"]
    fitted = {"fit": recipe["fit"], "ridge": params["calibration"]["ridge"],
              "calibration_sha256": sha256_file(calibration)} if calibration is not None else {}
    return {"baseline_sha256": sha256_file(model_file), "seed": params["seed"], "epc": recipe.get("epc"),
            "metric": search["metric"], "val_images": search["val_images"],
            "calibration_batches": search["calibration_batches"], **fitted}


def save_cache(path: Path, probe: SensitivityProbe, meta: dict) -> None:
    write_json(path, {**meta, "scores": probe.cache})


def load_cache(path: Path, meta: dict) -> dict:
    """Scores from a sensitivity artifact, refused when it was measured under other settings."""
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise LwparError(f"{path}: unreadable sensitivity cache ({error})") from None
    for key, value in meta.items():
        if blob.get(key) != value:
            raise LwparError(f"{path}: measured with {key}={blob.get(key)!r}, this plan needs {value!r}")
    return blob["scores"]


def measure_sensitivity(model: nn.Module, model_file: Path, data, recipe: dict, names: list[str], input_size,
                        total_macs: int, run, train_batch: int, settings: dict, out: Path,
                        statistics=None) -> tuple[SensitivityProbe, dict]:
    """Run the probes `recipe`'s measured rank policy needs on `model` (in eval mode on `run.device`),
    recording each in `<out>.partial` and resuming from it; returns the probe (its cache holds every
    score) and the record written beside the scores: `settings` (what a cache is checked against) with
    the seconds spent, the probes resumed and the plan where the probes alone make one.

    `run` (a `training.loop.Run`): device, precision, seed, validation batch size and threshold;
    `statistics`: the start model's calibration statistics, when the recipe fits outputs."""
    from lwpar.compress.ranks.registry import measure
    from lwpar.data.loader import ImageTable, build_transform, make_loader
    from lwpar.evaluation.metrics import pedestrian_metrics
    from lwpar.evaluation.scoring import probabilities
    from lwpar.training.batchnorm import recalibrate_batchnorm

    search = recipe["rank"]["search"]
    plain = build_transform(input_size, False)
    # Decoded once: every probe sees the same validation images and calibration batches.
    val_paths, val_labels = data.split("val", limit=search["val_images"])
    val_images = torch.stack([ImageTable(val_paths, val_labels, plain)[i][0] for i in range(len(val_paths))])
    train_paths, train_labels = data.split("train")
    loader = make_loader(train_paths, train_labels, plain, train_batch, 0, shuffle=True, seed=run.seed)
    calibration = [b for _, b in zip(range(search["calibration_batches"]), loader)]
    partial = out.with_name(out.name + ".partial")
    resumed, spent = {}, 0.0  # spent: seconds the interrupted runs measured for, so the total stays honest
    if partial.exists():
        try:
            resumed = load_cache(partial, settings)
            spent = float(read_json(partial).get("seconds", 0.0))
        except LwparError:  # measured under other settings: resuming it would mix two runs
            partial.unlink()
    if resumed:
        print(f"resuming with {len(resumed)} probes measured by an interrupted run", flush=True)
    started = time.time()
    progress = Progress(None, f"sensitivity ({recipe['rank']['policy']})", unit="probe", every=0)

    def record(key, value):
        save_cache(partial, probe, {**settings, "seconds": round(spent + time.time() - started, 1)})
        progress.update(note=f"{key} {search['metric']} {value:.4f}")

    def score(m):
        probs = probabilities(m, val_images.split(run.eval_batch), run.device, run.precision)
        return pedestrian_metrics(val_labels, probs, run.threshold)[search["metric"]]

    def recalibrate(m):
        recalibrate_batchnorm(m, calibration, run.device, max_batches=len(calibration))

    # every probe scores the same images and recalibrates on the same batches: what runs before the
    # probed layer can be replayed (reuse_prefix)
    probe = SensitivityProbe(model, score, recalibrate if calibration else None, seed=run.seed, epc=recipe.get("epc"),
                             cache=resumed, on_measure=record, reuse_prefix=True, statistics=statistics)
    with progress:
        chosen = measure(model, names, recipe["methods"], input_size, recipe["rank"], total_macs, probe)
    save_cache(out, probe, {**settings, "seconds": round(spent + time.time() - started, 1), "resumed_probes": len(resumed),
                            "plan": [{"layer": e["layer"], "rank": e["rank"]} for e in chosen]})
    partial.unlink(missing_ok=True)
    return probe, {"resumed": len(resumed), "chosen": chosen}
