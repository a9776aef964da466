"""Token sampling and the rotary embedding, shared by the rollout generator's eager, CUDA-graph and
compiled CPU decode steps."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) with cos/sin (B, T, D): the same rotation as transformers' apply_rotary_pos_emb."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, log-prob) per row of logits (B, V): temperature, then nucleus filtering, then an
    inverse-CDF draw: one uniform number per row against the cumulative probabilities. It needs
    no host sync (it can live in a CUDA graph, unlike torch.multinomial) and draws B random
    numbers instead of B x V (an exponential race over a 4k vocabulary costs 9 ms a step on a CPU)."""
    u = torch.rand((logits.shape[0], 1), device=logits.device, generator=generator)
    return _sample_with_uniform(logits, temperature, top_p, u)


def _sample_with_uniform(logits: torch.Tensor, temperature: float, top_p: float,
                         u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_tokens` given its uniform numbers u (B, 1)."""
    scaled = logits.float() / temperature
    logp_all = torch.log_softmax(scaled, dim=-1)
    probs = logp_all.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        probs = probs.masked_fill(before > top_p, 0.0)  # the top token always stays
    cdf = probs.cumsum(-1)
    # side=right: the first index whose cdf exceeds u, never a zero-probability token
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=probs.shape[-1] - 1)
    token = (order.gather(-1, index) if order is not None else index).squeeze(-1)
    return token, logp_all.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def _sample_blocked(logits: torch.Tensor, temperature: float, u: torch.Tensor,
                    block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`_sample_with_uniform` at top_p = 1 without a cumulative sum over the vocabulary: the draw
    first picks a block of `block` tokens from the blocks' masses, then a token inside it. Same
    distribution and the same token but where u falls within rounding error of a boundary; in a
    compiled graph it is two passes over the logits instead of a full-vocabulary scan (on a CPU
    inductor leaves that scan to aten, ~0.3 ms a step at 32 x 4096)."""
    scaled = logits.float() / temperature
    rows, vocab = scaled.shape
    pad = -vocab % block  # padded tokens get probability 0
    padded = F.pad(scaled, (0, pad), value=float("-inf")) if pad else scaled
    top = scaled.amax(-1, keepdim=True)
    blocks = (padded - top).exp().view(rows, -1, block)
    mass = blocks.sum(-1)  # (B, blocks)
    cdf = mass.cumsum(-1)
    total = cdf[:, -1:]
    target = u * total
    b = torch.searchsorted(cdf, target, right=True).clamp(max=mass.shape[-1] - 1)  # (B, 1)
    inside = blocks.gather(1, b.unsqueeze(-1).expand(rows, 1, block)).squeeze(1).cumsum(-1)
    inside = inside + (cdf.gather(-1, b) - mass.gather(-1, b))  # mass before the block
    j = torch.searchsorted(inside, target, right=True).clamp(max=block - 1)
    token = (b * block + j).clamp(max=vocab - 1)  # rounding at the very end never picks padding
    logp = scaled.gather(-1, token) - top - total.log()
    return token.squeeze(-1), logp.squeeze(-1)
