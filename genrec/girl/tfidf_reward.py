"""A TF-IDF pair model as a reward model (RewardConfig.backbone: tfidf): seconds to fit on a CPU.

r(cv, jd) = w · [tfidf(cv) ⊙ tfidf(jd), cos(cv, jd)]: one weight per word for "this word is in both
texts", fitted with the pairwise objective of the neural reward models (logistic regression on
φ(cv, jd+) − φ(cv, jd−), both orders). It can only reward words the JD shares with the CV, which
makes it hard to game with text that is not about the CV. On the synthetic market it ranks pairs
better and follows the hidden true fit more closely than the tiny LM reward model at CPU budgets
(bench/results/reward_quality.md). Text without spaces (Chinese) is read as character 1-2-grams.

Same scorer interface as genrec.girl.reward.RewardScorer (`score`, `info`, `meta`), so PPO, job
recommendation and Serve load it through `load_reward` unchanged.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.girl import prompts
from genrec.girl.reward_checkpoint import write_meta

MODEL_FILE = "tfidf_pair_model.pkl"


class TfidfPairModel:
    def __init__(self, chinese: bool = False, C: float = 10.0):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = (TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=2) if chinese
                           else TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english"))
        self.C = C
        self.weights: np.ndarray | None = None

    def features(self, cvs, jds):
        import scipy.sparse as sp

        a, b = self.vectorizer.transform(list(cvs)), self.vectorizer.transform(list(jds))
        product = a.multiply(b).tocsr()
        return sp.hstack([product, sp.csr_matrix(np.asarray(product.sum(1)))]).tocsr()

    def fit(self, pairs: pd.DataFrame) -> "TfidfPairModel":
        """pairs: cv_text, pos_text, neg_cv_text, neg_text (prepare-jobs' preference rows)."""
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        self.vectorizer.fit(pd.unique(pd.concat([pairs["cv_text"], pairs["pos_text"], pairs["neg_text"]])))
        diff = self.features(pairs["cv_text"], pairs["pos_text"]) - self.features(pairs["neg_cv_text"], pairs["neg_text"])
        x = sp.vstack([diff, -diff])
        y = np.r_[np.ones(diff.shape[0]), np.zeros(diff.shape[0])]
        self.weights = LogisticRegression(C=self.C, max_iter=2000, fit_intercept=False).fit(x, y).coef_.ravel()
        return self

    def score(self, cvs, jds) -> np.ndarray:
        return (self.features(cvs, jds) @ self.weights).astype(np.float32)


class TfidfRewardScorer:
    """Scores (CV, JD) pairs with a saved TfidfPairModel, texts cut by the same word budgets."""

    def __init__(self, model: TfidfPairModel, meta: dict):
        self.model, self.meta = model, meta

    @property
    def info(self) -> dict:
        keys = ("backbone", "checkpoint", "max_cv_words", "max_jd_words", "metrics")
        return {k: self.meta.get(k) for k in keys}

    def score(self, cv_texts, jd_texts) -> np.ndarray:
        cv_texts, jd_texts = list(cv_texts), list(jd_texts)
        if len(cv_texts) != len(jd_texts):
            raise ValueError(f"score: {len(cv_texts)} CVs but {len(jd_texts)} JDs; pass one of each per pair")
        cvs = [prompts.truncate_text(t, self.meta.get("max_cv_words", prompts.MAX_CV_WORDS)) for t in cv_texts]
        jds = [prompts.truncate_text(t or "", self.meta.get("max_jd_words", prompts.MAX_JD_WORDS)) for t in jd_texts]
        return self.model.score(cvs, jds)


def save_tfidf_reward(directory, model: TfidfPairModel, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / MODEL_FILE, "wb") as f:
        pickle.dump(model, f)
    write_meta(directory, dict(meta, backbone="tfidf"))
    return directory


def load_tfidf_reward(directory: Path, meta: dict) -> TfidfRewardScorer:
    with open(Path(directory) / MODEL_FILE, "rb") as f:  # a checkpoint of this machine's own training
        model = pickle.load(f)
    return TfidfRewardScorer(model, meta)
