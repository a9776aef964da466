"""Ranking the catalog for an `item_tokens` model: one forward pass, one softmax over the item tokens.

Each item is written `<item:ID>` title eos, so the catalog trie's first level holds one token per
item and every later node one child. Constrained beam search with `renormalize` would score an item
by log p(<item:ID> | prompt) renormalised over the item tokens (every later step allows one token:
log 1), so with beams covering the catalog its ranking is exactly this, at the cost of one step
instead of a title's worth of steps for every beam (tests/test_item_tokens.py checks the two agree).
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def rank_by_item_tokens(
    model: torch.nn.Module,
    prompts: list[list[int]],
    item_token_ids: list[int] | np.ndarray,
    *,
    top_k: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores), each (len(prompts), top_k): catalog indices, best first, and their
    log-probabilities over the catalog (log-softmax over the item tokens alone)."""
    device = next(model.parameters()).device
    tokens = torch.as_tensor(np.asarray(item_token_ids), dtype=torch.long, device=device)
    if top_k > len(tokens):
        raise ValueError(f"top_k ({top_k}) is more than the {len(tokens)} catalog items")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: every next token sits in the last column
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=1).logits[:, -1]
    scores = torch.log_softmax(logits.float()[:, tokens], dim=-1)
    best, items = scores.topk(top_k, dim=-1)
    return items.cpu().numpy(), best.cpu().numpy()
