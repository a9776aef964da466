"""Ranking metrics against hand-computed values; bad inputs raise."""
import numpy as np
import pytest

from genrec.rec.metrics import catalog_coverage, hallucination_rate, hit_rate_at_k, ndcg_at_k, ranking_metrics

INV_LOG2_3 = 1 / np.log2(3)  # NDCG of a hit at rank 2


def test_hits_at_rank_two_padding_and_all_padding_rows():
    ranked = np.array([[3, 1, 2], [0, 4, -1], [5, -1, -1], [-1, -1, -1]])
    targets = np.array([1, 4, 6, 7])  # ranks 2, 2, miss (padded row), miss (nothing returned)
    assert hit_rate_at_k(ranked, targets, 1) == 0.0
    assert hit_rate_at_k(ranked, targets, 2) == 0.5
    assert hit_rate_at_k(ranked, targets, 3) == 0.5
    assert ndcg_at_k(ranked, targets, 1) == 0.0
    assert ndcg_at_k(ranked, targets, 2) == pytest.approx(2 * INV_LOG2_3 / 4)
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx(0.31546487678572877)


def test_hits_at_ranks_one_and_three():
    ranked = np.array([[7, 8, 9], [9, 8, 7]])
    targets = np.array([7, 7])
    assert hit_rate_at_k(ranked, targets, 1) == 0.5
    assert ndcg_at_k(ranked, targets, 1) == 0.5
    assert hit_rate_at_k(ranked, targets, 2) == 0.5
    assert hit_rate_at_k(ranked, targets, 3) == 1.0
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx((1 + 0.5) / 2)  # 1/log2(2), 1/log2(4)


def test_no_hits_at_all_score_zero():
    ranked = np.array([[1, 2], [2, 1], [-1, -1]])
    targets = np.array([3, 3, 0])
    assert ranking_metrics(ranked, targets, ks=(1, 2)) == {"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 0.0, "ndcg@2": 0.0}


def test_ranking_metrics_keys_and_a_hit_at_rank_five():
    ranked = np.array([[0, 1, 2, 3, 4], [9, 8, 7, 6, 5]])
    targets = np.array([4, 9])
    metrics = ranking_metrics(ranked, targets, ks=(1, 5))
    assert list(metrics) == ["hr@1", "ndcg@1", "hr@5", "ndcg@5"]
    assert metrics["hr@1"] == 0.5 and metrics["ndcg@1"] == 0.5
    assert metrics["hr@5"] == 1.0
    assert metrics["ndcg@5"] == pytest.approx((1 / np.log2(6) + 1) / 2)  # 0.693426...
    default = ranking_metrics(np.tile(np.arange(20), (2, 1)), targets)
    assert set(default) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (1, 5, 10, 20)}


def test_hallucination_rate_is_exact_title_match():
    returned = ["Toy Story", "Heat", "Toy Story", "toy story", "Toy Story 5"]
    assert hallucination_rate(returned, ["Toy Story", "Heat", "Jumanji"]) == pytest.approx(2 / 5)
    assert hallucination_rate(["Heat"], {"Heat"}) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        hallucination_rate([], ["Heat"])


def test_catalog_coverage_counts_distinct_items_in_top_k():
    ranked = np.array([[0, 1, 5], [1, 2, -1], [-1, -1, -1]])
    assert catalog_coverage(ranked, num_items=10, k=1) == pytest.approx(0.2)  # {0, 1}
    assert catalog_coverage(ranked, num_items=10, k=2) == pytest.approx(0.3)  # {0, 1, 2}
    assert catalog_coverage(ranked, num_items=10, k=3) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="outside the catalog"):
        catalog_coverage(ranked, num_items=5, k=3)
    with pytest.raises(ValueError, match="k=4"):
        catalog_coverage(ranked, num_items=10, k=4)


@pytest.mark.parametrize(
    "ranked, targets, k, message",
    [
        ([[1, 2], [3, 4]], [1, 2, 3], 1, "2 users but targets has 3"),
        ([[1, 2], [3, 4]], [1, 2], 3, "k=3 must be between 1 and the ranked width 2"),
        ([[1, 2], [3, 4]], [1, 2], 0, "k=0"),
        ([1, 2], [1], 1, "2-d integer"),
        ([[1.0, 2.0]], [1], 1, "2-d integer"),
        ([[1, 2]], [[1]], 1, "1-d integer"),
        ([[1, 2]], [-1], 1, "negative target"),
        ([[1, -2]], [1], 1, "-1 is the only padding"),
        ([[1, 2], [3, 3]], [1, 3], 1, "user 1's ranking repeats"),
        (np.zeros((0, 3), dtype=int), np.zeros(0, dtype=int), 1, "no users"),
    ],
)
def test_bad_inputs_raise(ranked, targets, k, message):
    for metric in (hit_rate_at_k, ndcg_at_k):
        with pytest.raises(ValueError, match=message):
            metric(np.asarray(ranked), np.asarray(targets), k)
