"""PAR metrics exactly as Rethinking of PAR's `get_pedestrian_metrics` computes them.

Label-based: per attribute (TPR + TNR) / 2, averaged into mA. Instance-based: accuracy
|P & G| / |P | G|, precision |P & G| / |P|, recall |P & G| / |G| per image, averaged; F1 from the
averaged precision and recall. An empty set contributes 0 (the epsilon in the reference code).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-20


def pedestrian_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Summary metrics and per-attribute figures for binary `labels` and scores `probs` (N x A)."""
    gt = np.asarray(labels) > 0.5
    pred = np.asarray(probs) > threshold
    pos, neg = gt.sum(0), (~gt).sum(0)
    true_pos = (gt & pred).sum(0)
    true_neg = (~gt & ~pred).sum(0)
    label_pos_recall = true_pos / (pos + EPS)
    label_neg_recall = true_neg / (neg + EPS)
    label_ma = (label_pos_recall + label_neg_recall) / 2

    intersect = (gt & pred).sum(1)
    union = (gt | pred).sum(1)
    instance_acc = intersect / (union + EPS)
    instance_prec = intersect / (pred.sum(1) + EPS)
    instance_recall = intersect / (gt.sum(1) + EPS)
    precision, recall = float(instance_prec.mean()), float(instance_recall.mean())
    return {
        "mA": float(label_ma.mean()),
        "accuracy": float(instance_acc.mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall + EPS),
        "label_accuracy": float((gt == pred).mean()),
        "per_attribute": {
            "mA": label_ma, "pos_recall": label_pos_recall, "neg_recall": label_neg_recall,
            "positives": pos, "negatives": neg,
        },
    }


def per_attribute_table(metrics: dict, attributes: list[str]):
    import pandas as pd

    per = metrics["per_attribute"]
    return pd.DataFrame({"attribute": attributes, **{k: np.asarray(v) for k, v in per.items()}})


def summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "per_attribute"}


def balanced_thresholds(labels: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per attribute, the decision threshold (positive when the probability is above it, as
    `pedestrian_metrics` decides) that maximises the attribute's balanced accuracy on these images,
    the quantity mA averages. Each threshold lies midway between two consecutive distinct
    probabilities; an attribute with no positive or no negative image, or that no cut separates
    better than chance, keeps `default`."""
    gt = np.asarray(labels) > 0.5
    scores = np.asarray(probs, dtype=np.float64)
    thresholds = np.full(scores.shape[1], default, dtype=np.float64)
    for a in range(scores.shape[1]):
        positives = int(gt[:, a].sum())
        negatives = len(gt) - positives
        if positives == 0 or negatives == 0:
            continue
        order = np.argsort(-scores[:, a], kind="stable")
        ranked, truth = scores[order, a], gt[order, a]
        # cut k: the k + 1 highest scores are positive; only between distinct scores
        balanced = (np.cumsum(truth) / positives + 1 - np.cumsum(~truth) / negatives) / 2
        balanced[:-1][ranked[:-1] == ranked[1:]] = -np.inf
        k = int(np.argmax(balanced))
        if balanced[k] <= 0.5:
            continue
        thresholds[a] = (ranked[k] + ranked[k + 1]) / 2 if k + 1 < len(ranked) else np.nextafter(ranked[k], -np.inf)
    return thresholds


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """Calibration of the attribute probabilities, over every image and attribute: with equal-width
    bins of the predicted probability, each bin's mean probability (confidence) against its fraction
    of positive labels (frequency). ECE is the count-weighted mean of their gaps, MCE the largest gap
    (Guo et al., ICML 2017; here of each binary attribute's positive-class probability)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = (np.asarray(labels) > 0.5).ravel().astype(np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    filled = count > 0
    confidence = np.divide(np.bincount(index, weights=p, minlength=bins), count, where=filled, out=np.zeros(bins))
    frequency = np.divide(np.bincount(index, weights=y, minlength=bins), count, where=filled, out=np.zeros(bins))
    gap = np.abs(frequency - confidence)
    return {
        "bins": bins,
        "ece": float(np.sum(count * gap) / max(len(p), 1)),
        "mce": float(gap[filled].max()) if filled.any() else 0.0,
        "reliability": [{"low": b / bins, "high": (b + 1) / bins, "count": int(count[b]),
                         "confidence": float(confidence[b]) if filled[b] else None,
                         "frequency": float(frequency[b]) if filled[b] else None} for b in range(bins)],
    }
