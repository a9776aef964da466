"""A TF-IDF pair model as a reward model (RewardConfig.backbone: tfidf): seconds to fit on a CPU.

r(cv, jd) = w · φ(cv, jd), fitted with the pairwise objective of the neural reward models (logistic
regression on φ(cv, jd+) − φ(cv, jd−), both orders), where φ joins
  shared     tfidf(cv) ⊙ tfidf(jd) and their cosine: one weight per word (or word bigram) "in both texts";
  jd_words   tfidf(jd): one weight per word of the JD alone. Without it a word no CV has ("remote")
             can only dilute the JD's normalised vector, so RL against the model learns to drop it;
  word_pairs one weight per (CV word, JD word) pair, hashed into 2^18 slots and L2-normalised: the
             model can learn that "lead" in a CV and "junior" in a JD go badly together.
The shared part alone cannot be gamed with text that is not about the CV; the other two let the
model see what the shared words cannot (on the synthetic market: remote work, and a little of
seniority; bench/results/ppo_market.md). Text without spaces (Chinese) is read as character 1-2-grams, and its
pairs are pairs of characters.

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
PAIR_SLOTS = 2**18


def _as_is(tokens):
    """The hashing vectorizer's analyzer: the pair tokens are made already (a module function pickles)."""
    return tokens


class TfidfPairModel:
    def __init__(self, chinese: bool = False, C: float = 10.0, ngram_max: int = 1, jd_words: bool = False,
                 word_pairs: bool = False):
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer

        self.vectorizer = (TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, min_df=2) if chinese
                           else TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english",
                                                ngram_range=(1, ngram_max)))
        self.C, self.jd_words, self.word_pairs = C, jd_words, word_pairs
        self.pair_hasher = HashingVectorizer(n_features=PAIR_SLOTS, analyzer=_as_is, alternate_sign=False, norm="l2")
        self.weights: np.ndarray | None = None

    def features(self, cvs, jds):
        import scipy.sparse as sp

        cvs, jds = list(cvs), list(jds)
        a, b = self.vectorizer.transform(cvs), self.vectorizer.transform(jds)
        product = a.multiply(b).tocsr()
        parts = [product, sp.csr_matrix(np.asarray(product.sum(1)))]
        if getattr(self, "jd_words", False):  # (absent from models pickled before the option)
            parts.append(b)
        if getattr(self, "word_pairs", False):
            parts.append(self.pair_hasher.transform([self._pairs(cv, jd) for cv, jd in zip(cvs, jds)]))
        return sp.hstack(parts).tocsr()

    def _pairs(self, cv: str, jd: str) -> list[str]:
        cv_words, jd_words = self._unigrams(cv), self._unigrams(jd)
        return [f"{c}|{j}" for c in cv_words for j in jd_words]

    def _unigrams(self, text: str) -> set[str]:
        """The text's single words (characters for Chinese) that are in the TF-IDF vocabulary."""
        if not hasattr(self, "_analyzer"):
            self._analyzer = self.vectorizer.build_analyzer()
        vocabulary = self.vectorizer.vocabulary_
        return {t for t in self._analyzer(text) if t in vocabulary and " " not in t and
                (self.vectorizer.analyzer != "char" or len(t) == 1)}

    def fit(self, pairs: pd.DataFrame) -> "TfidfPairModel":
        """pairs: cv_text, pos_text, neg_cv_text, neg_text (prepare-jobs' preference rows)."""
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        self.vectorizer.fit(pd.unique(pd.concat([pairs["cv_text"], pairs["pos_text"], pairs["neg_text"]])))
        diff = self.features(pairs["cv_text"], pairs["pos_text"]) - self.features(pairs["neg_cv_text"], pairs["neg_text"])
        x = sp.vstack([diff, -diff])
        y = np.r_[np.ones(diff.shape[0]), np.zeros(diff.shape[0])]
        self.weights = LogisticRegression(C=self.C, max_iter=3000, fit_intercept=False).fit(x, y).coef_.ravel()
        return self

    def score(self, cvs, jds) -> np.ndarray:
        return np.asarray(self.features(cvs, jds) @ self.weights).ravel().astype(np.float32)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_analyzer"}  # a closure: rebuilt on use


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
