"""Ranking metrics of the fixed evaluation protocol (docs/evaluation.md), on item indices.

`ranked` is (n_users, K_max): each user's items best first, distinct, padded with -1 where fewer
than K_max items came back (padding is a miss). `targets` is each user's held-out item.
HR@K is the share of users whose target is in their top K; NDCG@K is 1/log2(rank + 1) at the
target's 1-based rank within the top K, else 0, averaged over users (one relevant item, so the
ideal DCG is 1).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD = -1


def hit_rate_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    rank = _hit_rank(ranked, targets, k)
    return float(np.mean(rank > 0))


def ndcg_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    rank = _hit_rank(ranked, targets, k)
    gain = np.zeros(len(rank))
    hit = rank > 0
    gain[hit] = 1.0 / np.log2(rank[hit] + 1.0)
    return float(np.mean(gain))


def ranking_metrics(ranked: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """{"hr@K": ..., "ndcg@K": ...} for every K in ks."""
    ranked, targets = _check(ranked, targets)
    out = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate_at_k(ranked, targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
    return out


def hallucination_rate(returned_titles: Iterable[str], catalog_titles: Iterable[str]) -> float:
    """Share of returned titles (a flat list over all users and ranks) that are not, character for
    character, the title of a catalog item. Normalising generated text is the caller's choice."""
    returned = list(returned_titles)
    if not returned:
        raise ValueError("hallucination_rate needs at least one returned title")
    catalog = catalog_titles if isinstance(catalog_titles, (set, frozenset)) else set(catalog_titles)
    return sum(title not in catalog for title in returned) / len(returned)


def catalog_coverage(ranked: np.ndarray, num_items: int, k: int) -> float:
    """Share of the catalog's items that appear in at least one user's top k."""
    ranked = _check_ranked(ranked)
    _check_k(ranked, k)
    if num_items <= 0:
        raise ValueError(f"num_items must be positive, got {num_items}")
    top = ranked[:, :k]
    if top.size and top.max() >= num_items:
        raise ValueError(f"ranked holds item {int(top.max())}, outside the catalog of {num_items} items")
    return len(np.unique(top[top != PAD])) / num_items


def _hit_rank(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """1-based rank of each user's target within the top k, 0 where it is not there."""
    ranked, targets = _check(ranked, targets)
    _check_k(ranked, k)
    hits = ranked[:, :k] == targets[:, None]  # targets are >= 0, so padding never hits
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)


def _check(ranked, targets) -> tuple[np.ndarray, np.ndarray]:
    ranked = _check_ranked(ranked)
    targets = np.asarray(targets)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be a 1-d integer array, got shape {targets.shape} dtype {targets.dtype}")
    if len(targets) != len(ranked):
        raise ValueError(f"ranked has {len(ranked)} users but targets has {len(targets)}")
    if len(targets) == 0:
        raise ValueError("no users to score")
    if (targets < 0).any():
        raise ValueError(f"user {int(np.argmax(targets < 0))} has a negative target item {int(targets.min())}")
    return ranked, targets


def _check_ranked(ranked) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must be a 2-d integer array (n_users, K), got shape {ranked.shape} dtype {ranked.dtype}")
    if ranked.size and ranked.min() < PAD:
        raise ValueError(f"ranked holds {int(ranked.min())}; item ids are >= 0 and -1 is the only padding")
    ordered = np.sort(ranked, axis=1)
    dup = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)
    if dup.any():
        user = int(np.argmax(dup.any(axis=1)))
        raise ValueError(f"user {user}'s ranking repeats an item; a top-K must hold K distinct items")
    return ranked


def _check_k(ranked: np.ndarray, k: int) -> None:
    if not 1 <= k <= ranked.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the ranked width {ranked.shape[1]}")
