"""The registry of rank policies, as `decompose.methods` is the registry of methods: each policy is
one registered object whose `plan` chooses every selected layer's rank and whose `measure` runs the
probes the sensitivity stage records for it (measured policies only). Which policies exist, what
they read and whether they measure is said once, in `compress.recipes.RANK_POLICIES`; the tests
hold the registry to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from lwpar.compress.decompose.factorize import layer_info
from lwpar.compress.recipes import RANK_POLICIES
from lwpar.core.errors import LwparError


@dataclass
class Planning:
    """What a policy plans from: the model, its selected layers (`layer_info`: shape, sizes, method),
    the recipe's `rank` block, the model's MACs, and for measured policies the sensitivity probe (and
    for `latency` the latency table)."""

    model: nn.Module
    info: list[dict]
    policy: dict
    total_macs: int | None
    probe: object | None = None
    latency_table: dict | None = None

    @property
    def multiple(self) -> int:
        return self.policy.get("multiple", 8)


@dataclass(frozen=True)
class Policy:
    name: str
    plan: Callable[[Planning], list[dict]]
    measure: Callable[[Planning], list[dict]] | None = None   # default: plan


POLICIES: dict[str, Policy] = {}


def register(name: str, measure: Callable[[Planning], list[dict]] | None = None):
    """Registers the decorated function as policy `name`'s plan."""
    def decorate(plan: Callable[[Planning], list[dict]]):
        POLICIES[name] = Policy(name, plan, measure)
        return plan
    return decorate


def policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise LwparError(f"unknown rank policy {name!r} (known: {', '.join(POLICIES)})") from None


def planning(model: nn.Module, names: list[str], methods: dict, input_size, rank: dict, total_macs: int | None = None,
             probe=None, latency_table: dict | None = None) -> Planning:
    if RANK_POLICIES.get(rank["policy"]) and RANK_POLICIES[rank["policy"]].measured and probe is None:
        raise LwparError(f"rank policy {rank['policy']!r} measures accuracy: it needs a sensitivity probe")
    return Planning(model, layer_info(model, names, methods, input_size), rank, total_macs, probe, latency_table)


def plan(model: nn.Module, names: list[str], methods: dict, input_size, rank: dict, total_macs: int | None = None,
         probe=None, latency_table: dict | None = None) -> list[dict]:
    """Ranks per layer under the recipe's rank policy: each entry of `layer_info` with its `rank`."""
    chosen = policy(rank["policy"])
    return chosen.plan(planning(model, names, methods, input_size, rank, total_macs, probe, latency_table))


def measure(model: nn.Module, names: list[str], methods: dict, input_size, rank: dict, total_macs: int,
            probe) -> list[dict]:
    """Run the probes a measured policy plans from (the sensitivity stage); returns the plan where the
    probes alone make one (`search`, `greedy`), else nothing (`latency` needs its latency table too)."""
    chosen = policy(rank["policy"])
    return (chosen.measure or chosen.plan)(planning(model, names, methods, input_size, rank, total_macs, probe))
