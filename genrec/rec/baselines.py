"""Baselines in the same harness and split as the generative models: most-popular and SASRec.

Both read a prepared folder (train/ valid/ test/ parquet and catalog.parquet), never raw logs, and
are scored with the fixed protocol (docs/evaluation.md): leave-one-out, full ranking over the whole catalog,
no sampled negatives. Items are catalog indices (rows of catalog.parquet), 0..num_items-1.

Sequences from prepared rows. Every row holds (position, the last H items before it, target), so a
user's sequence is the union of its rows. With `samples_per_user: all` (the default) the training
rows hold every target position 1..n-3 and the first row's history holds position 0, so the whole
sequence comes back whatever H was; SASRec then cuts it to its own `max_len` (50, its standard
window on Amazon). Where fewer training prefixes were kept, the longest reconstructable suffix is
used (it starts at the earliest history of the earliest kept row), and popularity is counted on it.

Split use, as the protocol says: both models learn from the training part only (every item before
the validation target); SASRec stops early on validation NDCG@10 (input: the training part; target:
the validation item), and is tested on the test target with the history before it, which includes
the validation item.

SASRec is written by hand in PyTorch on `nn.TransformerEncoderLayer`: no well-kept library here
ships it (RecBole is a whole framework with its own data pipeline and split logic).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("genrec.baselines")

DEFAULT_KS = (1, 5, 10, 20)


# ------------------------------------------------------------------------------ data
@dataclasses.dataclass
class UserSequences:
    """Each user's item sequence (catalog indices), ending with the validation and test targets."""

    user_ids: list[str]
    item_ids: list[str]  # catalog item id of each index
    sequences: list[np.ndarray]  # per user: ..., validation target, test target (int64)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def training_parts(self) -> list[np.ndarray]:
        """Every item before the validation target: what the models may learn from."""
        return [s[:-2] for s in self.sequences]

    def valid_inputs(self) -> tuple[list[np.ndarray], np.ndarray]:
        """(history, target) for validation: the training part predicts the validation item."""
        return [s[:-2] for s in self.sequences], np.array([s[-2] for s in self.sequences], np.int64)

    def test_inputs(self) -> tuple[list[np.ndarray], np.ndarray]:
        """(history, target) for test: everything before the test item, validation item included."""
        return [s[:-1] for s in self.sequences], np.array([s[-1] for s in self.sequences], np.int64)


def load_sequences(prepared_dir: str | Path) -> UserSequences:
    """Rebuild each user's sequence from the prepared rows of all three splits (see module doc).

    Vectorised: every history entry and target becomes a (user, position, item) triple; the triples
    are sorted and deduplicated. Rows that disagree on an item, or a user whose positions have a gap,
    are bad input and raise, naming the user.
    """
    root = Path(prepared_dir)
    catalog_ids = pq.read_table(root / "catalog.parquet", columns=["item_id"]).column("item_id").combine_chunks()
    columns = ["user_id", "history_item_ids", "target_item_id", "position"]
    parts = []
    for split in ("train", "valid", "test"):
        path = root / split
        if not path.exists():
            raise FileNotFoundError(f"{path}: not a prepared folder (run `genrec prepare` first)")
        if any(path.iterdir()):
            table = pq.read_table(path, columns=columns)
            parts.append(table.cast(pa.schema([table.schema.field(c) for c in columns])))
    if not parts:
        raise ValueError(f"{root}: the prepared splits hold no rows")
    rows = pa.concat_tables(parts).combine_chunks()

    user_names, user = np.unique(rows.column("user_id").to_numpy(zero_copy_only=False), return_inverse=True)
    position = rows.column("position").to_numpy().astype(np.int64)
    history = rows.column("history_item_ids").combine_chunks()
    flat = pc.list_flatten(history)
    parent = pc.list_parent_indices(history).to_numpy().astype(np.int64)
    sizes = pc.list_value_length(history).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rank = np.arange(len(parent)) - offsets[parent]  # index within its history list
    hist_pos = position[parent] - sizes[parent] + rank

    items = pa.concat_arrays([flat, rows.column("target_item_id").combine_chunks()])
    index = pc.index_in(items, value_set=catalog_ids)
    if index.null_count:
        bad = items.filter(pc.is_null(index))[0]
        raise ValueError(f"{root}: item {bad} appears in the rows but not in catalog.parquet")
    item = index.to_numpy(zero_copy_only=False).astype(np.int64)
    t_user = np.concatenate([user[parent], user])
    t_pos = np.concatenate([hist_pos, position])

    order = np.lexsort((t_pos, t_user))
    t_user, t_pos, item = t_user[order], t_pos[order], item[order]
    same = (t_user[1:] == t_user[:-1]) & (t_pos[1:] == t_pos[:-1])
    clash = same & (item[1:] != item[:-1])
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise ValueError(f"user {user_names[t_user[i]]}: rows disagree on the item at position {t_pos[i]}")
    keep = np.concatenate([[True], ~same])
    t_user, t_pos, item = t_user[keep], t_pos[keep], item[keep]
    gap = (t_user[1:] == t_user[:-1]) & (t_pos[1:] != t_pos[:-1] + 1)
    if gap.any():
        i = int(np.flatnonzero(gap)[0])
        raise ValueError(f"user {user_names[t_user[i]]}: no row covers position {t_pos[i] + 1}")
    bounds = np.flatnonzero(t_user[1:] != t_user[:-1]) + 1
    sequences = np.split(item, bounds)
    short = [user_names[u] for u, s in zip(np.unique(t_user), sequences) if len(s) < 3]
    if short:
        raise ValueError(f"user {short[0]}: fewer than 3 items in the prepared rows (no training item)")
    return UserSequences(user_names.tolist(), catalog_ids.to_pylist(), sequences)


def _top_k(scores: torch.Tensor, histories: Sequence[np.ndarray], k: int, exclude_history: bool) -> np.ndarray:
    """Top-k indices of every row of a full [n, num_items] score matrix (ties: lower index first)."""
    if exclude_history:
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate([np.asarray(h, np.int64) for h in histories]) if len(rows) else rows
        scores = scores.clone()
        scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -torch.inf
    k = min(k, scores.shape[1])
    # A stable descending sort, so equal scores rank the same way on every run and machine.
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k].cpu().numpy()


# ------------------------------------------------------------------------------ most popular
class MostPopular:
    """Recommends the items with the most training interactions, the same list for every user.

    `exclude_history` drops items the user already has (off by default, as in the published
    protocol, where a repeat purchase may be the test item).
    """

    def __init__(self, num_items: int, exclude_history: bool = False) -> None:
        self.num_items = num_items
        self.exclude_history = exclude_history
        self.counts = np.zeros(num_items, np.int64)

    def fit(self, training_parts: Sequence[np.ndarray]) -> "MostPopular":
        """Counts interactions in the training parts only: validation and test targets never count."""
        items = np.concatenate([np.asarray(s, np.int64) for s in training_parts]) if len(training_parts) else []
        self.counts = np.bincount(np.asarray(items, np.int64), minlength=self.num_items)
        return self

    def recommend(self, users_histories: Sequence[Sequence[int]], k: int = 20) -> np.ndarray:
        """[n_users, k] catalog indices, most popular first."""
        histories = [np.asarray(h, np.int64) for h in users_histories]
        scores = torch.as_tensor(self.counts, dtype=torch.float64)
        if not self.exclude_history:  # one list for everybody: rank once
            return np.tile(_top_k(scores[None], [[]], k, False), (len(histories), 1))
        out = [_top_k(scores.expand(len(chunk), -1), chunk, k, True)
               for chunk in (histories[i:i + 1024] for i in range(0, len(histories), 1024))]
        return np.concatenate(out) if out else np.zeros((0, min(k, self.num_items)), np.int64)


# ------------------------------------------------------------------------------ SASRec
@dataclasses.dataclass
class SASRecConfig:
    """SASRec (Kang & McAuley 2018) as in the S3-Rec / RecBole full-ranking setups."""

    hidden: int = 64  # embedding and model width
    num_blocks: int = 2  # self-attention blocks
    num_heads: int = 1  # attention heads per block
    dropout: float = 0.2  # embedding, attention and feed-forward dropout (0.5 is common on sparse Amazon sets)
    max_len: int = 50  # the last max_len items of a history are used (50 is the Amazon standard)
    loss: Literal["ce", "bce"] = "ce"  # ce: softmax over the whole catalog; bce: one sampled negative per position (the original)
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 128  # users per step
    epochs: int = 200  # most passes over the training users
    eval_every: int = 1  # epochs between validation passes
    patience: int = 10  # validation passes without NDCG@10 gain before stopping
    max_train_s: float = 0.0  # stop after the epoch that passes this many seconds (0 = no limit)
    eval_batch_size: int = 512  # users per scoring batch at validation and test
    seed: int = 0  # same seed, same data -> same model (on the same device)
    device: str = "cpu"  # "cpu", "cuda", or "auto" (cuda when available)

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss: must be 'ce' or 'bce', got {self.loss!r}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by num_heads={self.num_heads}")
        if self.max_len < 1 or self.epochs < 1 or self.eval_every < 1:
            raise ValueError("max_len, epochs and eval_every must be at least 1")


class SASRecModel(nn.Module):
    """Item + learned position embeddings -> causal self-attention blocks -> last-layer norm.

    Index 0 is padding; item i of the catalog is embedding i + 1. Scores are dot products with the
    (shared) item embeddings. Blocks are pre-norm, as in the original SASRec.
    """

    def __init__(self, num_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.hidden, cfg.num_heads, dim_feedforward=cfg.hidden, dropout=cfg.dropout,
            activation="relu", batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.num_blocks, enable_nested_tensor=False)
        self.last_norm = nn.LayerNorm(cfg.hidden)
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, L] left-padded item ids (0 = pad) -> [B, L, hidden] states."""
        b, length = seqs.shape
        real = seqs > 0
        x = self.item_emb(seqs) * self.cfg.hidden ** 0.5
        x = x + self.pos_emb(torch.arange(length, device=seqs.device))
        x = self.emb_dropout(x) * real.unsqueeze(-1)
        # Query t sees keys <= t that are real items; a pad query sees itself, so no row is all
        # masked (that gives NaN). Pad outputs are never used.
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril()
        allowed = causal & (real.unsqueeze(1) | torch.eye(length, dtype=torch.bool, device=seqs.device))
        mask = (~allowed).repeat_interleave(self.cfg.num_heads, dim=0)
        x = self.blocks(x, mask=mask)
        return self.last_norm(x) * real.unsqueeze(-1)

    def item_weights(self) -> torch.Tensor:
        """[num_items, hidden]: the output embedding of every catalog item (padding left out)."""
        return self.item_emb.weight[1:]

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, num_items] scores of every catalog item after each history (full ranking)."""
        return self(seqs)[:, -1] @ self.item_weights().T


def pad_left(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """[n, max_len] int64 of the last max_len items + 1 of each history, left-padded with 0."""
    out = np.zeros((len(histories), max_len), np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h, np.int64)[-max_len:]
        if len(h):
            out[i, max_len - len(h):] = h + 1
    return out


def training_pairs(training_parts: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample per user with >= 2 training items, as in SASRec: input = part[:-1], targets =
    part[1:], both the last max_len, left-padded (0 = no target). Every position is trained."""
    parts = [np.asarray(p, np.int64) for p in training_parts if len(p) >= 2]
    return pad_left([p[:-1] for p in parts], max_len), pad_left([p[1:] for p in parts], max_len)


class SASRec:
    """Train with early stopping on validation NDCG@10, recommend by full ranking."""

    def __init__(self, num_items: int, config: SASRecConfig | None = None) -> None:
        self.cfg = config or SASRecConfig()
        self.num_items = num_items
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.cfg.device == "auto" else self.cfg.device
        )
        torch.manual_seed(self.cfg.seed)
        self.model = SASRecModel(num_items, self.cfg).to(self.device)
        self.history: list[dict] = []  # one entry per validation pass
        self.best: dict = {}

    def fit(
        self,
        training_parts: Sequence[np.ndarray],
        valid_histories: Sequence[np.ndarray] | None = None,
        valid_targets: np.ndarray | None = None,
    ) -> "SASRec":
        """Train on the training parts; with validation data, keep the epoch of best NDCG@10."""
        from genrec.rec.metrics import ranking_metrics

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        inputs, targets = training_pairs(training_parts, cfg.max_len)
        if len(inputs) == 0:
            raise ValueError("no user has 2 training items: SASRec has nothing to learn from")
        inputs_t, targets_t = torch.as_tensor(inputs), torch.as_tensor(targets)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
        best_ndcg, best_state, stale = -1.0, None, 0
        started = time.time()
        for epoch in range(1, cfg.epochs + 1):
            self.model.train()
            order = torch.as_tensor(rng.permutation(len(inputs)))
            total, steps = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                loss = self._loss(inputs_t[idx].to(self.device), targets_t[idx].to(self.device), rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            entry = {"epoch": epoch, "loss": total / steps, "elapsed_s": round(time.time() - started, 2)}
            if valid_targets is not None and epoch % cfg.eval_every == 0:
                ranked = self.recommend(valid_histories, k=10)
                entry.update({f"valid_{k}": v for k, v in ranking_metrics(ranked, valid_targets, ks=(10,)).items()})
                if entry["valid_ndcg@10"] > best_ndcg:
                    best_ndcg, stale = entry["valid_ndcg@10"], 0
                    best_state = copy.deepcopy(self.model.state_dict())
                    self.best = dict(entry)
                else:
                    stale += 1
                log.info("sasrec %s", entry)
                self.history.append(entry)
                if stale >= cfg.patience:
                    break
            else:
                self.history.append(entry)
            if cfg.max_train_s and time.time() - started > cfg.max_train_s:
                log.info("sasrec: stopping after epoch %d, past max_train_s=%s", epoch, cfg.max_train_s)
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.train_s = time.time() - started
        return self

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        real = targets > 0
        states = self.model(inputs)[real]  # only positions with a target: most of a batch is padding
        positives = targets[real] - 1  # catalog indices
        weights = self.model.item_weights()
        if self.cfg.loss == "ce":
            return F.cross_entropy(states @ weights.T, positives)
        # One uniform negative per position, redrawn where it hits the positive (the original's
        # "not in the user's set" matters little with thousands of items, and costs a loop).
        negatives = torch.as_tensor(rng.integers(0, self.num_items, len(positives)), device=positives.device)
        clash = negatives == positives
        negatives[clash] = (negatives[clash] + 1) % self.num_items
        pos_logit = (states * weights[positives]).sum(-1)
        neg_logit = (states * weights[negatives]).sum(-1)
        return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))

    @torch.no_grad()
    def recommend(self, users_histories: Sequence[Sequence[int]], k: int = 20, exclude_history: bool = False) -> np.ndarray:
        """[n_users, k] catalog indices: every catalog item is scored (full ranking), best first."""
        self.model.eval()
        histories = [np.asarray(h, np.int64) for h in users_histories]
        if any(len(h) == 0 for h in histories):
            raise ValueError("SASRec needs at least one history item per user")
        out = []
        for start in range(0, len(histories), self.cfg.eval_batch_size):
            chunk = histories[start:start + self.cfg.eval_batch_size]
            seqs = torch.as_tensor(pad_left(chunk, self.cfg.max_len), device=self.device)
            out.append(_top_k(self.model.score_all(seqs).float(), chunk, k, exclude_history))
        return np.concatenate(out) if out else np.zeros((0, min(k, self.num_items)), np.int64)


# ------------------------------------------------------------------------------ harness
def evaluate_baseline(
    prepared_dir: str | Path,
    model: Literal["pop", "sasrec"] = "pop",
    ks: Sequence[int] = DEFAULT_KS,
    config: SASRecConfig | None = None,
    exclude_history: bool = False,
) -> dict:
    """Train a baseline on a prepared folder and score it on the test split (full ranking).

    Returns {"model", "users", "items", "test": {hr@k, ndcg@k}, "train_s", "eval_s"}, and for
    SASRec also "valid" (metrics at the best epoch), "best_epoch", "epochs_run" and "config".
    SASRec's train_s counts its validation passes. `exclude_history` drops each user's history
    items from the ranking (S3-Rec's evaluation code does so; off by default): a dot-product model
    with tied embeddings otherwise puts the last history item first for most users (93% on Toys),
    which costs HR@1 almost everything and HR@10 a little.
    """
    from genrec.rec.metrics import ranking_metrics

    data = load_sequences(prepared_dir)
    k = max(ks)
    started = time.time()
    result: dict = {"model": model, "users": len(data.sequences), "items": data.num_items}
    if model == "pop":
        rec = MostPopular(data.num_items, exclude_history=exclude_history).fit(data.training_parts())
        result["train_s"] = round(time.time() - started, 3)
    elif model == "sasrec":
        rec = SASRec(data.num_items, config)
        valid_h, valid_t = data.valid_inputs()
        rec.fit(data.training_parts(), valid_h, valid_t)
        result["train_s"] = round(rec.train_s, 3)
        result["valid"] = ranking_metrics(rec.recommend(valid_h, k=k, exclude_history=exclude_history), valid_t, ks=ks)
        result["best_epoch"] = rec.best.get("epoch")
        result["epochs_run"] = len(rec.history)
        result["config"] = dataclasses.asdict(rec.cfg)
    else:
        raise ValueError(f"model: must be 'pop' or 'sasrec', got {model!r}")
    started = time.time()
    test_h, test_t = data.test_inputs()
    ranked = rec.recommend(test_h, k=k) if model == "pop" else rec.recommend(test_h, k=k, exclude_history=exclude_history)
    result["test"] = ranking_metrics(ranked, test_t, ks=ks)
    result["eval_s"] = round(time.time() - started, 3)
    return result
