"""The timing interface that compression plans with and deployment implements: a `Timer` takes models
and returns each one's measured latency, all of them timed in one interleaved run. Compression
(latency tables, pruning to a speed-up) asks a Timer; `lwpar.deploy.benchmark.target_timer` builds
one that exports the models to ONNX and times them with ONNX Runtime on a profile target. Neither
side imports the other.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol

import numpy as np


@dataclass(frozen=True)
class Timed:
    """A model to time: a torch module at a fixed input shape. `whole`: a whole model, exported and
    run as the profile runs artifacts; otherwise one layer, exported as it is."""

    module: Any
    input_shape: tuple
    whole: bool = False


class Timer(Protocol):
    def __call__(self, models: dict[Hashable, Timed]) -> dict[Hashable, dict]:
        """{key: {"median_ms", "q1_ms", "q3_ms"}} of every model, timed in one interleaved run."""


def measure(keys: list, time_one: Callable[[Any], float], rounds: int = 7, seed: int = 0) -> dict[Any, dict]:
    """Median and quartiles (ms) of every key over `rounds` rounds, each timing all keys in a fresh
    random order (interleaved: the machine's drift spreads over all of them). `time_one(key)`: ms."""
    from lwpar.core.progress import Progress

    order = list(keys)
    times = {key: [] for key in order}
    rng = random.Random(seed)
    with Progress(rounds * len(order), f"timing {len(order)} models, {rounds} rounds", unit="model") as progress:
        for _ in range(rounds):
            rng.shuffle(order)
            for key in order:
                times[key].append(time_one(key))
                progress.update()
    return {key: {"median_ms": float(np.median(v)), "q1_ms": float(np.percentile(v, 25)),
                  "q3_ms": float(np.percentile(v, 75))} for key, v in times.items()}


def medians(timer: Timer, models: dict[Hashable, Any], input_shape: tuple) -> dict[Hashable, float]:
    """Median ms of whole models at one input shape (pruning's search compares them)."""
    timed = timer({key: Timed(model, input_shape, whole=True) for key, model in models.items()})
    return {key: result["median_ms"] for key, result in timed.items()}


def thread_count(setting: int) -> int:
    """A `profile.threads` entry as a number of threads: 0 means every core."""
    return setting or os.cpu_count() or 1


def plan_settings(profile: dict) -> tuple[int, int]:
    """The batch size and thread count latency plans are timed at: the profile's first of each (threads 0:
    every core), so that a plan and the profile's first row measure the same thing."""
    return profile["batch_sizes"][0], thread_count(profile["threads"][0])
