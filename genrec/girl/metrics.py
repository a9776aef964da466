"""Metrics of the GIRL side: ROC AUC, a reward model's pairwise accuracy and calibration on held-out
preference rows, and a reliability diagram."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` predicting binary `labels` (ties count half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pairwise_accuracy(r_pos, r_neg) -> float:
    """Share of pairs ranked right (ties count half)."""
    r_pos, r_neg = np.asarray(r_pos, np.float64), np.asarray(r_neg, np.float64)
    return float(np.mean((r_pos > r_neg) + 0.5 * (r_pos == r_neg))) if len(r_pos) else float("nan")


def calibration_table(r_pos, r_neg, bins: int = 10) -> list[dict]:
    """Predicted P(JD+ ranks above JD-) = sigmoid(r+ - r-) in `bins` equal-width bins of [0, 1],
    against the share of those pairs actually ranked right by that prediction's side... namely the
    share whose JD+ is the labelled better one. Pairs are taken in both orders (swapped ones
    predict 1 - p and are wrong when right), so the table covers the whole [0, 1] range."""
    diff = np.asarray(r_pos, np.float64) - np.asarray(r_neg, np.float64)
    p = np.concatenate([1 / (1 + np.exp(-diff)), 1 / (1 + np.exp(diff))])
    truth = np.concatenate([np.ones(len(diff)), np.zeros(len(diff))])
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        sel = which == b
        table.append({"lo": round(float(edges[b]), 3), "hi": round(float(edges[b + 1]), 3), "n": int(sel.sum()),
                      "mean_predicted": round(float(p[sel].mean()), 4) if sel.any() else None,
                      "observed": round(float(truth[sel].mean()), 4) if sel.any() else None})
    return table


def expected_calibration_error(table: list[dict]) -> float:
    total = sum(row["n"] for row in table)
    return float(sum(row["n"] * abs(row["mean_predicted"] - row["observed"]) for row in table if row["n"]) / max(total, 1))


def heldout_metrics(score_fn, pairs, interactions=None, bins: int = 10) -> dict:
    """pairwise_acc (and per negative kind), pair_auc (JD+ scores vs JD- scores) on preference rows;
    auc of scores vs labels on labelled interactions (when given and both labels occur);
    the calibration table and its expected calibration error. `score_fn(cv_texts, jd_texts)`."""
    r_pos = score_fn(pairs["cv_text"].tolist(), pairs["pos_text"].tolist())
    r_neg = score_fn(pairs["neg_cv_text"].tolist(), pairs["neg_text"].tolist())
    table = calibration_table(r_pos, r_neg, bins)
    metrics = {
        "pairs": int(len(pairs)),
        "pairwise_acc": pairwise_accuracy(r_pos, r_neg),
        "pair_auc": auc(np.concatenate([r_pos, r_neg]), np.r_[np.ones(len(r_pos)), np.zeros(len(r_neg))]),
        "by_kind": {kind: pairwise_accuracy(r_pos[(pairs["neg_kind"] == kind).to_numpy()],
                                            r_neg[(pairs["neg_kind"] == kind).to_numpy()])
                    for kind in sorted(pairs["neg_kind"].unique())},
        "calibration": table,
        "ece": expected_calibration_error(table),
    }
    if interactions is not None and len(interactions) and interactions["label"].nunique() == 2:
        scores = score_fn(interactions["cv_text"].tolist(), interactions["jd_text"].tolist())
        metrics["auc"] = auc(scores, interactions["label"].to_numpy())
        metrics["interactions"] = int(len(interactions))
    else:
        metrics["auc"] = metrics["pair_auc"]
    return metrics


def plot_calibration(table: list[dict], path, title: str = "reward calibration") -> Path | None:
    """A reliability diagram as PNG when matplotlib is installed (it is not a dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in table if r["n"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([r["mean_predicted"] for r in rows], [r["observed"] for r in rows], "o-", label="reward model")
    ax.set_xlabel("predicted P(JD+ above JD-)")
    ax.set_ylabel("observed share")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def agreement_on_samples(scores, fits, group_size: int) -> dict:
    """How a reward ranks the generator's own JDs against the hidden true fit: the check that matters
    for RL, which compares responses to the same CV (pairwise accuracy on recruiter pairs does not).

    scores, fits: one per sampled JD, each CV's `group_size` samples next to each other.
    within_cv_spearman: Spearman correlation inside each CV's group, averaged over the groups where
    both vary; spearman: over all samples; best_of_n_fit: mean true fit of the sample the reward
    ranks first in each group, beside mean_fit (a random pick) and oracle_best_of_n_fit (the best
    sample's); between_cv_share: the share of the score variance that lies between CVs' means (what
    a value head must learn before a single sample per CV says anything).
    """
    from scipy.stats import spearmanr

    scores, fits = np.asarray(scores, np.float64), np.asarray(fits, np.float64)
    if scores.shape != fits.shape or scores.size % group_size:
        raise ValueError(f"{scores.size} scores and {fits.size} fits do not split into groups of {group_size}")
    s, f = scores.reshape(-1, group_size), fits.reshape(-1, group_size)
    within = [spearmanr(a, b).statistic for a, b in zip(s, f) if np.ptp(a) > 0 and np.ptp(b) > 0]
    return {
        "groups": int(len(s)),
        "within_cv_spearman": float(np.mean(within)) if within else float("nan"),
        "spearman": float(spearmanr(scores, fits).statistic),
        "best_of_n_fit": float(f[np.arange(len(s)), s.argmax(1)].mean()),
        "mean_fit": float(f.mean()),
        "oracle_best_of_n_fit": float(f.max(1).mean()),
        "between_cv_share": float(s.mean(1).var() / scores.var()) if scores.var() > 0 else float("nan"),
    }
