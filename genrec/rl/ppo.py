"""PPO math for language models, written so each formula can be checked line by line (CleanRL style).

Imports torch only: no Ray, no transformers. Shapes: a batch of B responses padded to T tokens;
`mask` (B, T) is 1 on response tokens (the EOS token included) and 0 on padding after them.
Per-token quantities are aligned with the response token they belong to: `logp[:, t]` is the
log-probability of response token t, `values[:, t]` the value of the state that token t is sampled
in (prompt plus tokens < t), `rewards[:, t]` the reward for emitting it.

References: Schulman et al. 2017 (clipped objective), Schulman et al. 2016 (GAE), Ziegler et al. 2019
(per-token KL penalty, adaptive KL controller), Schulman 2020 "Approximating KL divergence" (k1, k3).
"""
from __future__ import annotations

import math

import torch


# ------------------------------------------------------------------------------------ basic tools
def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) under logits (B, T, V) -> (B, T), in float32 whatever the logits' dtype."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution (B, T, V) -> (B, T), in nats."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Mean over the masked entries; with `denominator`, their sum divided by it instead (a learner
    holding part of a minibatch divides by the whole minibatch's token count, so the learners'
    summed gradients equal one learner's over the whole minibatch)."""
    total = mask.sum().clamp(min=1) if denominator is None else denominator
    return (x * mask).sum() / total


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (as the whitening in PPO implementations)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (((x - mean) * mask) ** 2).sum() / n.clamp(min=1)
    return var * n / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding comes back as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ---------------------------------------------------------------------------------------- GAE
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation as an explicit backward loop over time.

        delta_t = r_t + gamma * V_{t+1} - V_t        (V_{t+1} = 0 after the last response token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                           (the value target)

    Responses end at different lengths; `mask` zeroes the value and advantage after a row's end, so
    a padded step contributes nothing. Returns (advantages, returns), both 0 on padding.
    """
    rewards, values, mask = rewards.float(), values.float(), mask.float()
    batch, steps = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros(batch, device=rewards.device)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < steps else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


# ------------------------------------------------------------------------------------- losses
def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, weights: torch.Tensor | None = None,
                denominator: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over tokens of max(-A·ratio, -A·clip(ratio, 1-ε, 1+ε)).

    Where the clipped term is the larger one the loss is flat in logp, so those tokens get no
    gradient: the update cannot move the ratio further out of [1-ε, 1+ε] in the advantage's direction.
    `weights` (no gradient) scale each token's term: the importance weight π_old / π_sampler of
    decoupled PPO when the tokens were sampled by an older policy than old_logp's (off-policy).
    Also returns the clip fraction and the update's approximate KL (k3 of old vs new).
    """
    log_ratio = (logp - old_logp) * mask  # padding may hold anything; exp of it must not overflow to inf·0
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = masked_mean(per_token, mask, denominator)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


def importance_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                       cap: float) -> torch.Tensor:
    """Per-token π_old / π_sampler, truncated at `cap` (a token the sampler drew at much lower
    probability than the learner now gives it cannot dominate the update); 0 on padding."""
    return torch.exp((old_logp - sampler_logp) * mask).clamp(max=cap) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, denominator: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 · mean over tokens of max((V - R)², (V_clipped - R)²), V_clipped = V_old + clip(V - V_old, ±ε).
    clip <= 0 turns the clipping off (plain squared error)."""
    unclipped = (values - returns) ** 2
    if clip > 0:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (clipped_values - returns) ** 2
        loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask, denominator)
        frac = masked_mean((clipped > unclipped).float(), mask).detach()
    else:
        loss = 0.5 * masked_mean(unclipped, mask, denominator)
        frac = torch.zeros(())
    return loss, {"value_clip_fraction": frac}


# ------------------------------------------------------------------------------------------ KL
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log p - log q per sampled token: unbiased for KL(p || q), can be negative per token."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(r - 1) - log r with r = q / p: unbiased, never negative, lower variance than k1."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


class FixedKLController:
    """beta stays at its initial value."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, current_kl: float, num_samples: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """Ziegler et al. 2019: beta moves so the measured KL approaches `target`.

        error = clip(KL / target - 1, -0.2, 0.2);   beta <- beta · (1 + error · n / horizon)

    n is the number of samples behind the measurement, so `horizon` samples of a constant error
    change beta by about e^error. KL above target raises beta (a stronger pull to the reference),
    below target lowers it.
    """

    def __init__(self, beta: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.beta, self.target, self.horizon = float(beta), float(target), int(horizon)

    def update(self, current_kl: float, num_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * num_samples / self.horizon

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


def kl_controller(kind: str, beta: float, target: float, horizon: int):
    if kind == "adaptive":
        return AdaptiveKLController(beta, target, horizon)
    if kind == "fixed":
        return FixedKLController(beta)
    raise ValueError(f"unknown KL controller {kind!r}; known: adaptive, fixed")


# -------------------------------------------------------------------------------------- rewards
def per_token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      beta: float, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -beta · KL_t on every response token, plus the sequence's score on its last token.

    Returns (rewards, kl), both (B, T) and 0 on padding. A response with no tokens (mask all 0)
    cannot carry its score; callers always keep at least one token (EOS or the first sampled one).
    """
    kl = KL_ESTIMATORS[estimator](logp, ref_logp) * mask
    rewards = -beta * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards = rewards.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores.to(rewards.dtype)
    return rewards * mask, kl


class RunningMoments:
    """Running mean and std of every score seen (Chan et al.'s parallel update), for normalisation."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        x = x.double().flatten()
        n = x.numel()
        if n == 0:
            return
        batch_mean, batch_var = float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


def normalize_scores(scores: torch.Tensor, moments: RunningMoments | None, clip: float) -> torch.Tensor:
    """Scores standardised by the running moments (after adding this batch to them), then clipped to
    [-clip, clip]; moments None skips the standardisation, clip <= 0 the clipping."""
    out = scores.float()
    if moments is not None:
        moments.update(out)
        out = (out - moments.mean) / moments.std
    if clip > 0:
        out = out.clamp(-clip, clip)
    return out


# ---------------------------------------------------------------------- critic-free advantages
def group_advantages(rewards: torch.Tensor, group_size: int, method: str, eps: float = 1e-6) -> torch.Tensor:
    """One advantage per response from the other responses to the same prompt, no value head.

    rewards (B,) hold the responses of B / group_size prompts, each prompt's group_size responses
    next to each other. grpo (Shao et al. 2024): (r - mean of the group) / (std of the group + eps);
    a group whose responses all score the same gets 0. rloo (Ahmadian et al. 2024): r - mean of the
    group's other responses, i.e. (r - mean) · k / (k - 1).
    """
    if group_size < 2:
        raise ValueError(f"group advantages need at least 2 responses per prompt, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if method == "grpo":
        out = centred / (groups.std(1, unbiased=False, keepdim=True) + eps)
    elif method == "rloo":
        out = centred * group_size / (group_size - 1)
    else:
        raise ValueError(f"unknown group advantage {method!r}; known: grpo, rloo")
    return out.view(-1)
