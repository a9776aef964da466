"""The GIRL models behind `/v1/jobs/*`, as plain classes (no Ray): JobGenerator writes a JD for a CV,
JobMatcher scores (CV, JD) pairs with the reward model and recommends real openings.

The prompt is always `genrec.girl.prompts.generator_prompt` (what the generator was trained on);
scoring is `genrec.girl.reward.load_reward(...).score`; recommending is
`genrec.girl.recommend.JobRecommender.recommend` (generate -> embed -> retrieve -> rerank).
"""
from __future__ import annotations

import logging
from collections import defaultdict

from genrec.config import GeneratorServeConfig, MatcherServeConfig
from genrec.storage import fetch, fetch_file, shown

log = logging.getLogger("genrec.serve")


class JobGeneratorModel:
    """A CV -> JD checkpoint loaded once; generates for a batch of (cv, max_new_tokens, temperature)."""

    def __init__(self, cfg: GeneratorServeConfig) -> None:
        from genrec.models.loading import load_checkpoint

        self.cfg = cfg
        self.model, self.tokenizer, self.meta = load_checkpoint(fetch(cfg.checkpoint_dir))
        self.model.eval()

    def generate(self, batch: list[tuple[str, int, float]]) -> list[str]:
        """JD texts, one per request. Requests sharing (max_new_tokens, temperature) run as one call."""
        groups: dict[tuple[int, float], list[int]] = defaultdict(list)
        for position, (_, max_new_tokens, temperature) in enumerate(batch):
            groups[(max_new_tokens, temperature)].append(position)
        texts = [""] * len(batch)
        for (max_new_tokens, temperature), positions in groups.items():
            outs = self._generate([batch[p][0] for p in positions], max_new_tokens, temperature)
            for position, text in zip(positions, outs):
                texts[position] = text
        return texts

    def _generate(self, cvs: list[str], max_new_tokens: int, temperature: float) -> list[str]:
        import torch

        from genrec.girl.prompts import generator_prompt

        # Tokenized as training tokenizes a prompt (genrec.data.tokenize.batch_prompt_ids), left-padded.
        prompts = self.tokenizer([generator_prompt(cv) for cv in cvs], split_special_tokens=True)["input_ids"]
        pad, width = self.tokenizer.pad_token_id, max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                      pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, **sampling)
        return [text.strip() for text in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]

    def info(self) -> dict:
        return {"checkpoint": shown(self.cfg.checkpoint_dir), "stage": self.meta.get("stage"),
                "training_metrics": self.meta.get("metrics", {}), "device": str(self.model.device)}


class JobMatcherModel:
    """The reward model (score) and, when a generator and openings are given, JobRecommender."""

    def __init__(self, cfg: MatcherServeConfig) -> None:
        self.cfg = cfg
        self.recommender = None
        if cfg.generator_dir:
            from genrec.girl.recommend import JobRecommender

            if not cfg.jds_path:
                raise ValueError("matcher.jds_path: JobRecommender needs the openings (jds.parquet)")
            self.recommender = JobRecommender(fetch(cfg.generator_dir), fetch(cfg.reward_dir), fetch_file(cfg.jds_path),
                                              embedder=cfg.embedder)
            self.reward = self.recommender.reward  # the same reward model scores both endpoints: loaded once
        else:
            from genrec.girl.reward import load_reward

            self.reward = load_reward(fetch(cfg.reward_dir))

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        scores = self.reward.score([cv for cv, _ in pairs], [jd for _, jd in pairs])
        return [float(s) for s in scores]

    def recommend(self, cv: str, k: int) -> list[dict]:
        return [dict(item, score=float(item["score"])) for item in self.recommender.recommend(cv, k)]

    def info(self) -> dict:
        return {"reward": self.reward.info, "reward_dir": shown(self.cfg.reward_dir),
                "generator_dir": shown(self.cfg.generator_dir) if self.cfg.generator_dir else None,
                "jds_path": shown(self.cfg.jds_path) if self.cfg.jds_path else None,
                "embedder": self.cfg.embedder if self.recommender is not None else None,
                "recommend": self.recommender is not None}
