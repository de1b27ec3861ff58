"""The files a report reads, given explicitly (the report job's declared inputs), each named by
(dataset, model, artifact or variant or target). Nothing is found by listing folders, so a file an
earlier configuration left on disk never reaches a table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lwpar.core.errors import LwparError

Key = tuple[str, str, str]
SCORES = ("mA", "mA_tuned", "accuracy", "precision", "recall", "f1", "ece", "mce")


@dataclass
class Inputs:
    profiles: dict[Key, Path] = field(default_factory=dict)        # (dataset, model, target)
    metrics: dict[Key, Path] = field(default_factory=dict)         # (dataset, model, artifact): eval/metrics.json
    per_attribute: dict[Key, Path] = field(default_factory=dict)   # (dataset, model, artifact): eval/per_attribute.csv
    layers: dict[Key, Path] = field(default_factory=dict)          # (dataset, model, variant): layers.csv
    finetune: dict[Key, Path] = field(default_factory=dict)        # (dataset, model, variant): finetune.json
    prune: dict[Key, Path] = field(default_factory=dict)           # (dataset, model, variant): prune.json
    int8_errors: dict[Key, Path] = field(default_factory=dict)     # (dataset, model, <name>+int8): node_error.csv
    target_metrics: dict[Key, Path] = field(default_factory=dict)  # (dataset, model, <artifact>@<target>): scored there

    @classmethod
    def from_pairs(cls, **pairs: dict[str, Path]) -> Inputs:
        """From {"<dataset>/<model>/<name>": path} per kind (the report command's NAME=PATH arguments)."""
        parsed = {}
        for kind, named in pairs.items():
            parsed[kind] = {}
            for name, path in named.items():
                key = tuple(name.split("/"))
                if len(key) != 3 or not all(key):
                    raise LwparError(f"--{kind.replace('_', '-')} {name}={path}: expected <dataset>/<model>/<name>=PATH")
                parsed[kind][key] = Path(path)
        return cls(**parsed)

    def profile_files(self):
        """(dataset, model, profile) of every profile (one per target), in key order."""
        for key in sorted(self.profiles):
            yield key[0], key[1], _json(self.profiles[key])

    def runs(self):
        """(dataset, model, profile) once per dataset and model: its first target's profile."""
        seen = set()
        for dataset, model, profile in self.profile_files():
            if (dataset, model) not in seen:
                seen.add((dataset, model))
                yield dataset, model, profile

    def of_run(self, kind: str, dataset: str, model: str) -> list[tuple[str, Path]]:
        """(name, path) of one run's inputs of a kind, by name."""
        return sorted((key[2], path) for key, path in getattr(self, kind).items() if key[:2] == (dataset, model))

    def scores(self, dataset: str, model: str, name: str, target: str | None = None) -> dict:
        """An artifact's test scores (NaN where it was not scored: baseline_reference is the baseline's
        weights); with `target`, as that target's runtime scored it where it did. `scored_on` names the
        runtime."""
        path = self.target_metrics.get((dataset, model, f"{name}@{target}")) or self.metrics.get((dataset, model, name))
        if path is None:
            return {k: np.nan for k in SCORES} | {"scored_on": ""}
        data = _json(path)
        calibrated = data.get("calibration", {})  # absent from evaluations made before it
        return {**{k: data[k] for k in ("mA", "accuracy", "precision", "recall", "f1")},
                "mA_tuned": data.get("tuned_thresholds", {}).get("mA", np.nan),
                "ece": calibrated.get("ece", np.nan), "mce": calibrated.get("mce", np.nan),
                # evaluations made before the second runtime were all ONNX Runtime's
                "scored_on": data.get("runtime", {}).get("name", "onnxruntime")}

    def attribute_scores(self, dataset: str, model: str, name: str) -> pd.DataFrame | None:
        path = self.per_attribute.get((dataset, model, name))
        return pd.read_csv(path) if path is not None else None

    def reliability_bins(self, dataset: str, model: str, name: str) -> list[dict]:
        path = self.metrics.get((dataset, model, name))
        return _json(path).get("calibration", {}).get("reliability", []) if path is not None else []

    def method(self, dataset: str, model: str, variant: str) -> str:
        """What the variant's compression step did, from its records."""
        key = (dataset, model, variant)
        if key in self.prune:
            return "prune-" + _json(self.prune[key])["kind"]
        if key in self.layers:
            return "+".join(pd.read_csv(self.layers[key])["method"].unique())
        return "none (fine-tuning only)"


def _json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LwparError(f"{path}: unreadable ({exc})") from None
