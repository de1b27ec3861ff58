"""Rank policies, one registry (`registry.POLICIES`), one module per family: `formula` (ratio,
energy, budget), `evbmf`, `measured` (search, greedy: per-layer scores from `sensitivity`) and
`latency` (measured scores spent against a measured latency table). `plan` chooses every selected
layer's rank under a recipe's policy; `measure` runs the probes the sensitivity stage records."""

from lwpar.compress.ranks import evbmf, formula, latency, measured  # noqa: F401 (each registers its policies)
from lwpar.compress.ranks.registry import POLICIES, Planning, measure, plan, policy

__all__ = ["POLICIES", "Planning", "measure", "plan", "policy"]
