"""Scoring a model on one split of a prepared dataset with the PAR metrics, and choosing each
attribute's decision threshold on the validation split (the one maximising its balanced accuracy):
the literature's figures stay at the one threshold 0.5, the tuned ones are labelled as such."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from lwpar.core.errors import LwparError
from lwpar.data.loader import Prepared
from lwpar.evaluation.metrics import balanced_thresholds, calibration, pedestrian_metrics, per_attribute_table, summary


def evaluate(probabilities: Callable[[list, str], np.ndarray], attributes: list[str], data: Prepared, split: str,
             threshold: float, source: str, tune: bool = False) -> tuple[dict, pd.DataFrame, np.ndarray | None]:
    """`probabilities(paths, what)`: the model's probabilities for images (`what` names the pass in the
    log). Returns the summary (metrics.json), the per-attribute table and, with `tune`, the thresholds
    chosen on validation (the summary then also holds the split's scores at them)."""
    paths, labels = data.split(split)
    if not paths:
        raise LwparError(f"{data.folder}: split {split!r} is empty")
    probs = probabilities(paths, f"scoring {split}")
    if attributes != data.attributes or probs.shape[1] != len(data.attributes):
        raise LwparError(f"{source}: predicts {probs.shape[1]} attributes, {data.folder} has "
                         f"{len(data.attributes)} (trained on another dataset?)")
    metrics = pedestrian_metrics(labels, probs, threshold)
    result = {"model": source, "dataset": data.meta["dataset"], "split": split, "images": len(paths),
              **summary(metrics), "calibration": calibration(labels, probs)}
    tuned = None
    if tune:
        val_paths, val_labels = data.split("val")
        if not val_paths:
            raise LwparError(f"{data.folder}: split 'val' is empty: no images to choose thresholds on")
        tuned = balanced_thresholds(val_labels, probabilities(val_paths, "scoring val"), threshold)
        result["tuned_thresholds"] = {"chosen_on": "val", **summary(pedestrian_metrics(labels, probs, tuned))}
    return result, per_attribute_table(metrics, data.attributes), tuned
