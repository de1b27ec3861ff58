"""PAR metrics on hand-computed cases, including an attribute with no positives."""

from __future__ import annotations

import numpy as np
import pytest

from lwpar.evaluation.metrics import pedestrian_metrics


def test_hand_computed_case():
    gt = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0]])
    m = pedestrian_metrics(gt, pred.astype(float))
    # attribute 0: TP 2 / P 2, TN 1 / N 2 -> (1 + 0.5) / 2; attribute 1: TP 0/1, TN 2/3;
    # attribute 2: TP 1/2, TN 2/2
    expected_ma = np.mean([(1 + 0.5) / 2, (0 + 2 / 3) / 2, (0.5 + 1) / 2])
    assert m["mA"] == pytest.approx(expected_ma)
    # instance: |P&G| / |P|G|: 1/2, 1/2, 1/2, 0/1 ; precision 1/1, 1/2, 1/1, 0/1 ; recall 1/2, 1/1, 1/2, 0/0
    assert m["accuracy"] == pytest.approx(np.mean([0.5, 0.5, 0.5, 0.0]))
    assert m["precision"] == pytest.approx(np.mean([1, 0.5, 1, 0]))
    assert m["recall"] == pytest.approx(np.mean([0.5, 1, 0.5, 0]))
    p, r = m["precision"], m["recall"]
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["label_accuracy"] == pytest.approx(np.mean(gt == pred))


def test_attribute_without_positives_counts_zero_recall():
    gt = np.array([[0, 1], [0, 0], [0, 1]])
    pred = np.array([[0, 1], [0, 0], [0, 1]], dtype=float)
    m = pedestrian_metrics(gt, pred)
    # attribute 0 has no positives: TPR counts as 0 (the epsilon), TNR 1 -> 0.5
    assert m["per_attribute"]["mA"][0] == pytest.approx(0.5)
    assert m["per_attribute"]["mA"][1] == pytest.approx(1.0)
    # image 1 has empty prediction and empty truth: 0 / (0 + eps) = 0
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_threshold_applies_to_probabilities():
    gt = np.array([[1], [0]])
    assert pedestrian_metrics(gt, np.array([[0.6], [0.4]]))["mA"] == 1.0
    assert pedestrian_metrics(gt, np.array([[0.6], [0.4]]), threshold=0.7)["mA"] == 0.5


def test_calibration_hand_computed_case():
    from lwpar.evaluation.metrics import calibration

    labels = np.array([[1, 0], [1, 1]])
    probs = np.array([[0.9, 0.2], [0.6, 0.4]])
    result = calibration(labels, probs, bins=2)
    # bin [0, 0.5): p 0.2 and 0.4, one positive of two: confidence 0.3, frequency 0.5, gap 0.2
    # bin [0.5, 1]: p 0.9 and 0.6, both positive: confidence 0.75, frequency 1.0, gap 0.25
    assert result["ece"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.25)
    assert result["mce"] == pytest.approx(0.25)
    assert [b["count"] for b in result["reliability"]] == [2, 2]
    assert result["reliability"][0]["confidence"] == pytest.approx(0.3)
    assert result["reliability"][1]["frequency"] == pytest.approx(1.0)
    # a perfectly calibrated case, and an empty bin
    assert calibration(np.array([[1], [0]]), np.array([[1.0], [0.0]]), bins=3)["ece"] == 0.0
    assert calibration(np.array([[1], [0]]), np.array([[1.0], [0.0]]), bins=3)["reliability"][1]["count"] == 0


def test_balanced_thresholds_hand_computed_case():
    from lwpar.evaluation.metrics import balanced_thresholds, pedestrian_metrics

    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 1]])
    probs = np.array([[0.30, 0.9, 0.1], [0.25, 0.8, 0.2], [0.20, 0.7, 0.3], [0.10, 0.6, 0.4]])
    thresholds = balanced_thresholds(labels, probs)
    # attribute 0: the two positives score highest: cut between 0.25 and 0.20
    assert thresholds[0] == pytest.approx(0.225)
    # attribute 1: positives at 0.9 and 0.6 around two negatives; the best cut keeps only 0.9 (0.75)
    assert thresholds[1] == pytest.approx(0.85)
    # attribute 2: the one positive scores highest
    assert thresholds[2] == pytest.approx(0.35)
    assert pedestrian_metrics(labels, probs, thresholds)["mA"] == pytest.approx((1 + 0.75 + 1) / 3)


def test_balanced_thresholds_are_the_best_cut_and_keep_the_default_where_undefined():
    from lwpar.evaluation.metrics import balanced_thresholds, pedestrian_metrics

    rng = np.random.default_rng(0)
    labels = rng.random((200, 4)) < 0.3
    probs = np.clip(labels * 0.2 + rng.random((200, 4)) * 0.8, 0, 1).round(2)  # ties on purpose
    labels[:, 3] = False  # no positive: threshold undefined
    thresholds = balanced_thresholds(labels, probs)
    assert thresholds[3] == 0.5
    tuned = pedestrian_metrics(labels, probs, thresholds)["per_attribute"]["mA"]
    for a in range(3):  # no threshold on a fine grid does better
        grid = [pedestrian_metrics(labels[:, [a]], probs[:, [a]], t)["mA"] for t in np.linspace(0, 1, 401)]
        assert tuned[a] >= max(grid) - 1e-12 and tuned[a] > 0.5
