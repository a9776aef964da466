"""Reward functions for PPO: anything with `.score(source_texts, response_texts) -> np.ndarray`.

- the learned reward model (genrec.girl.reward.load_reward): what PPO optimises in GIRL;
- TrueFitReward: the synthetic market's hidden fit of a generated JD (diagnosis, never for a real
  model's training: it is the ground truth the learned reward is checked against);
- CountReward: occurrences of one word, a toy task with a known optimum for testing the loop.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from genrec.config import PPOConfig


class CountReward:
    """Number of whitespace-separated words equal to `word` in the response."""

    def __init__(self, word: str):
        self.word = word

    def score(self, source_texts: Sequence[str], response_texts: Sequence[str]) -> np.ndarray:
        return np.array([text.split().count(self.word) for text in response_texts], dtype=np.float32)


class TrueFitReward:
    """genrec.girl.true_fit.fit_of_text of each response against its CV's hidden fields."""

    def __init__(self, rows_by_text: Mapping[str, Mapping]):
        self.rows_by_text = rows_by_text

    def score(self, source_texts: Sequence[str], response_texts: Sequence[str]) -> np.ndarray:
        from genrec.girl.true_fit import fit_of_text

        missing = [t for t in source_texts if t not in self.rows_by_text]
        if missing:
            raise KeyError(f"no true_ fields for CV {missing[0][:80]!r}: the prompts file is not a synthetic market")
        return np.array([fit_of_text(self.rows_by_text[s], r) for s, r in zip(source_texts, response_texts)],
                        dtype=np.float32)


def has_truth(rows: Sequence[Mapping]) -> bool:
    return bool(rows) and all(k in rows[0] for k in ("true_role", "true_seniority", "true_skills", "true_location"))


def build_reward(cfg: PPOConfig, rows_by_text: Mapping[str, Mapping] | None = None, device=None):
    if cfg.reward == "count":
        return CountReward(cfg.reward_word)
    if cfg.reward == "true_fit":
        if not rows_by_text:
            raise ValueError(f"reward=true_fit needs a prompts file with true_ columns; {cfg.prompts_path} has none")
        return TrueFitReward(rows_by_text)
    from genrec.girl.reward import load_reward

    return load_reward(cfg.reward_path, device=device)
