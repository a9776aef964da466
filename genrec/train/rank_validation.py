"""Validation by ranking, for `item_tokens` models: HR@10 and NDCG@10 of the next item over the whole
catalog, for the first `valid_rank_users` validation users by user id.

The validation loss is a poor guide for such a model: on Amazon Toys it bottoms out at epoch 6 while
HR@10 keeps rising to epoch 9 and stays there (bench/results/quality_items.md), so `best/` chosen by
loss is an undertrained model. Ranking costs one forward pass a user (one softmax over the item
tokens, genrec/rec/item_rank.py), so it runs at every validation and `best/` keeps the highest HR@10.
The users, prompts and ranking are those `genrec evaluate split=valid max_users=N` scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from genrec.data.item_tokens import catalog_token_ids
from genrec.data.templates import get_template
from genrec.data.tokenize import prompt_ids
from genrec.rec.item_rank import rank_by_item_tokens
from genrec.rec.metrics import ranking_metrics

KEY = "valid_hr@10"  # what best/ keeps the highest of


class RankValidation:
    def __init__(self, data_dir: str | Path, template_name: str, tokenizer, format: str, max_len: int, users: int,
                 batch_users: int = 64) -> None:
        data = Path(data_dir)
        catalog = pq.read_table(data / "catalog.parquet", columns=["item_id", "title"])
        item_ids = catalog.column("item_id").to_pylist()
        index = {item: k for k, item in enumerate(item_ids)}
        rows = pq.read_table(data / "valid").sort_by("user_id").slice(0, users).to_pylist()
        self.prompts = prompt_ids(tokenizer, get_template(template_name), rows, max_len - 1,
                                  dict(zip(item_ids, catalog.column("title").to_pylist())), format)
        self.targets = np.array([index[row["target_item_id"]] for row in rows])
        self.item_tokens = catalog_token_ids(tokenizer, item_ids)
        self.pad_id, self.batch_users = tokenizer.pad_token_id, batch_users

    def __call__(self, model: torch.nn.Module) -> dict:
        """{valid_hr@10, valid_ndcg@10}; `model` is the unwrapped transformers model (every rank
        calls this with the same users, so under FSDP the forward passes stay collective)."""
        was_training = model.training
        model.eval()
        ranked = np.concatenate([
            rank_by_item_tokens(model, self.prompts[start:start + self.batch_users], self.item_tokens, top_k=10,
                                pad_id=self.pad_id)[0]
            for start in range(0, len(self.prompts), self.batch_users)])
        model.train(was_training)
        metrics = ranking_metrics(ranked, self.targets, ks=(10,))
        return {f"valid_{name}": value for name, value in metrics.items()}
