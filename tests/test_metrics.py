"""Average precision, recall@k and their summary against hand-computed values and oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vladsearch.evaluation.metrics import average_precision, query_group, recall_at_k, score_query, summarize


def oxford_compute_ap(positives, ignore, ranked):
    """Line-by-line port of Oxford's compute_ap.cpp (the trapezoid oracle)."""
    old_recall, old_precision, ap, hits, j = 0.0, 1.0, 0.0, 0, 0
    for entry in ranked:
        if entry in ignore:
            continue
        if entry in positives:
            hits += 1
        recall = hits / len(positives)
        precision = hits / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def test_step_ap_hand_computed():
    # positives at ranks 1, 3, 5: precisions 1, 2/3, 3/5
    assert average_precision(list("axbyc"), {"a", "b", "c"}) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_trapezoid_ap_hand_computed():
    # each positive: (precision before + precision at) / 2 -> (1+1)/2, (1/2+2/3)/2, (2/4+3/5)/2
    expected = (1 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3
    assert average_precision(list("axbyc"), {"a", "b", "c"}, interpolation="trapezoid") == pytest.approx(expected)


def test_perfect_and_worst_rankings():
    assert average_precision(["a", "b", "x"], {"a", "b"}) == 1.0
    assert average_precision(["a", "b", "x"], {"a", "b"}, interpolation="trapezoid") == 1.0
    assert average_precision(["x", "y"], {"a"}) == 0.0


def test_ignored_entries_are_removed_before_ranking():
    # q is ignored, so a sits at rank 2 (not 3) and b at rank 3: (1/2 + 2/3) / 2
    assert average_precision(["q", "x", "a", "b"], {"a", "b"}, ignore={"q"}) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # the same ranking without ignore is worse
    assert average_precision(["q", "x", "a", "b"], {"a", "b"}) == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_missing_positive_counts_as_zero():
    # c is never retrieved: divide by 3 positives, not 2
    assert average_precision(["a", "x", "b"], {"a", "b", "c"}) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision(["a", "x", "b"], {"a", "b", "c"}, interpolation="trapezoid") == pytest.approx(
        (1 + (1 / 2 + 2 / 3) / 2) / 3)


def test_positive_that_is_ignored_is_not_counted():
    assert average_precision(["a", "b"], {"a", "b"}, ignore={"b"}) == 1.0


def test_no_positives_gives_nan():
    assert math.isnan(average_precision(["a"], set()))
    assert math.isnan(recall_at_k(["a"], {"q"}, ignore={"q"}, k=1))


def test_trapezoid_matches_oxford_code_and_step_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        ranked = list(rng.permutation(30))
        positives = set(rng.choice(30, size=rng.integers(1, 8), replace=False).tolist())
        ignore = set(rng.choice(30, size=3, replace=False).tolist()) - positives
        assert average_precision(ranked, positives, ignore, "trapezoid") == pytest.approx(
            oxford_compute_ap(positives, ignore, ranked))
        kept = [r for r in ranked if r not in ignore]
        labels = [r in positives for r in kept]
        scores = -np.arange(len(kept), dtype=float)
        assert average_precision(ranked, positives, ignore) == pytest.approx(
            sklearn_metrics.average_precision_score(labels, scores))


def test_bad_interpolation_raises():
    with pytest.raises(ValueError, match="interpolation"):
        average_precision(["a"], {"a"}, interpolation="11-point")


def test_recall_at_k_with_ignore():
    ranked = ["q", "x", "y", "a", "z"]
    assert recall_at_k(ranked, {"a"}, ignore={"q"}, k=2) == 0.0
    assert recall_at_k(ranked, {"a"}, ignore={"q"}, k=3) == 1.0
    assert recall_at_k(ranked, {"a"}, k=3) == 0.0
    assert recall_at_k(ranked, {"missing"}, k=5) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(ranked, {"a"}, k=0)


def test_query_group():
    assert query_group("crop_0012.jpg") == "crop"
    assert query_group("queries/flipcrop_0001.jpg") == "flipcrop"
    assert query_group("bikes_img1.ppm") == "bikes"
    assert query_group("100000.jpg") is None


def test_summarize_overall_and_groups():
    rows = [
        score_query("crop_0000.jpg", ["a", "b"], {"a"}),           # ap 1, r@1 1
        score_query("crop_0001.jpg", ["b", "a"], {"a"}),           # ap 1/2, r@1 0
        score_query("exact_0002.jpg", ["c", "a"], {"c"}),          # ap 1, r@1 1
        score_query("exact_0003.jpg", ["c"], {"q"}, ignore={"q"}),  # no positive: unscored
    ]
    summary = summarize(rows)
    assert summary["queries"] == 3 and summary["unscored"] == 1
    assert summary["mAP"] == pytest.approx(2.5 / 3)
    assert summary["recall@1"] == pytest.approx(2 / 3)
    assert summary["recall@5"] == 1.0
    assert set(summary["groups"]) == {"crop", "exact"}
    assert summary["groups"]["crop"] == {"queries": 2, "mAP": 0.75, "recall@1": 0.5, "recall@5": 1.0,
                                         "recall@10": 1.0}
    assert summary["groups"]["exact"]["queries"] == 1


def test_summarize_without_groups():
    rows = [score_query("100000.jpg", ["a"], {"a"}), score_query("q_1.jpg", ["a"], {"b"})]
    summary = summarize(rows)
    assert summary["groups"] == {}  # one name has no '_', the other forms a single group
    assert summary["mAP"] == 0.5
    assert math.isnan(summarize([])["mAP"])
