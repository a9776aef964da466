"""Catalog-constrained beam search: top-K distinct catalog items per user, batched, KV cache reused.

Written by hand rather than through `generate(prefix_allowed_tokens_fn=...)` because that calls a
Python function per beam per step and cannot tell when K items are certain; here the trie answers
for every beam of every user in one vectorised call, and a user stops once no open beam can beat
its K-th finished item.

Scores are summed log-probabilities of the title tokens and EOS; `length_penalty` a > 0 divides a
finished item's score by its length ** a (then the early stop is off, since a longer title may
overtake). `renormalize` spreads, at every step, the probability the model puts on tokens the trie
forbids over the tokens it allows (log-softmax over the allowed tokens alone): scores are then the
log-probabilities of a distribution over the catalog, summing to 1, rather than of the model's
distribution over all strings, part of which names no item.

As in transformers' beam search, a finished hypothesis (an EOS step) is kept only when it ranks
among the best `num_beams` candidates of its step, which makes num_beams = 1 exactly greedy
constrained decoding. With num_beams at least the catalog size no prefix is ever dropped, and the
top K equal scoring every item one by one.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from genrec.rec.trie import CatalogTrie

# Newer transformers name the KV cache `cache`, as forward's argument and the output's field; the
# old name, `past_key_values`, warns there and goes away in 5.40. Use whichever this version has.
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@torch.no_grad()
def constrained_beam_search(
    model: torch.nn.Module,
    prompts: list[list[int]],
    trie: CatalogTrie,
    *,
    num_beams: int,
    top_k: int,
    pad_id: int,
    length_penalty: float = 0.0,
    renormalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores), each (len(prompts), top_k): catalog item indices (-1 where fewer were found)
    and their scores, best first, for one batch of tokenized prompts."""
    if num_beams < top_k:
        raise ValueError(f"num_beams ({num_beams}) must be at least top_k ({top_k})")
    n, beams = len(prompts), num_beams
    device = next(model.parameters()).device

    # Left-pad the prompts so every user's next token sits in the last column.
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: only the last position's logits (a [users, width, vocab] tensor otherwise).
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = getattr(out, CACHE)
    cache.batch_repeat_interleave(beams)
    log_probs = torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(beams, dim=0)
    attention = attention.repeat_interleave(beams, dim=0)
    next_position = positions[:, -1:].repeat_interleave(beams, dim=0) + 1
    vocab = log_probs.shape[-1]

    # Every user starts from one open beam (the others at -inf so the first step does not repeat it).
    beam_scores = torch.full((n, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    nodes = np.zeros(n * beams, dtype=np.int64)  # trie node of each beam
    done_scores = torch.full((n, top_k), float("-inf"), device=device)
    done_items = torch.full((n, top_k), -1, dtype=torch.long, device=device)
    result_scores, result_items = done_scores.clone(), done_items.clone()
    active = torch.arange(n, device=device)  # the users still searching, in cache order

    for depth in range(trie.max_depth):
        a = len(active)
        rank = torch.arange(2 * beams, device=device).expand(a, -1)
        step = log_probs.masked_fill(~_allowed_mask(trie, nodes, vocab, device), float("-inf"))
        if renormalize:
            step = step - _finite_or_zero(torch.logsumexp(step, dim=-1, keepdim=True))
        scores = (step + beam_scores.view(-1, 1)).view(a, beams * vocab)
        cand_scores, cand_index = scores.topk(min(2 * beams, beams * vocab), dim=1)
        rank = rank[:, : cand_scores.shape[1]]
        source = cand_index // vocab + torch.arange(a, device=device).view(-1, 1) * beams  # beam row in the cache
        token = cand_index % vocab
        alive = torch.isfinite(cand_scores)
        ends = alive & (token == trie.eos_id)

        # Finished items: EOS candidates among the step's best `beams`.
        finished = ends & (rank < beams)
        if finished.any():
            leaf = trie.step(nodes[source.cpu().numpy()], token.cpu().numpy())
            items = torch.from_numpy(trie.item_of(leaf)).to(device)
            final = cand_scores / float(depth + 1) ** length_penalty if length_penalty else cand_scores
            final = final.masked_fill(~finished, float("-inf"))
            done_scores, keep = torch.cat([done_scores, final], 1).topk(top_k, dim=1)
            done_items = torch.cat([done_items, items.masked_fill(~finished, -1)], 1).gather(1, keep)

        # Open beams: the best `beams` candidates that do not end; missing ones stay dead (-inf).
        opens = alive & ~ends
        pick = torch.where(opens, rank, rank + 2 * beams).argsort(dim=1)[:, :beams]
        picked_open = opens.gather(1, pick)
        beam_scores = cand_scores.gather(1, pick).masked_fill(~picked_open, float("-inf"))
        source, token = source.gather(1, pick), token.gather(1, pick).masked_fill(~picked_open, pad_id)

        # A user is done when no beam is open, or (scores only fall) none can beat its K-th item.
        # Done users leave the batch, so a batch costs its users' own depths, not its deepest title.
        searching = picked_open.any(1)
        if not length_penalty:
            searching &= done_scores[:, -1] < beam_scores.max(1).values
        if not bool(searching.all()):
            gone = ~searching
            result_scores[active[gone]], result_items[active[gone]] = done_scores[gone], done_items[gone]
            active, beam_scores, source, token, picked_open = (
                t[searching] for t in (active, beam_scores, source, token, picked_open))
            done_scores, done_items = done_scores[searching], done_items[searching]
            if not len(active):
                break
        source, token = source.view(-1), token.view(-1)
        nodes = np.where(picked_open.view(-1).cpu().numpy(), trie.step(nodes[source.cpu().numpy()], token.cpu().numpy()), -1)
        cache.reorder_cache(source)  # also drops the done users' rows
        attention = attention[source]
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        next_position = next_position[source]
        out = model(input_ids=token.view(-1, 1), attention_mask=attention, position_ids=next_position,
                    use_cache=True, **{CACHE: cache})
        cache = getattr(out, CACHE)
        log_probs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        next_position = next_position + 1

    result_scores[active], result_items[active] = done_scores, done_items
    return result_items.cpu().numpy(), result_scores.cpu().numpy()


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """A dead beam allows no token: its log-normaliser is -inf, and -inf - -inf would be NaN."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _allowed_mask(trie: CatalogTrie, nodes: np.ndarray, vocab: int, device: torch.device) -> torch.Tensor:
    """(beams, vocab) mask built on the model's device from the trie's (few) allowed tokens, so only
    index arrays cross to a GPU, not a beams x vocab array (97 MB a step at a 152k vocabulary)."""
    tokens, offsets = trie.allowed_tokens(nodes)
    rows = np.repeat(np.arange(len(nodes)), np.diff(offsets))
    mask = torch.zeros((len(nodes), vocab), dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(tokens).to(device)] = True
    return mask
