"""The model side of PPO, without Ray: loading the policy, forward passes over prompt+response
batches, the learner's update and its checkpoint state. genrec/rl/actors.py wraps these classes
as Ray actors; tests and benchmarks can use them directly.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel, get_peft_model

from genrec.config import PPOConfig

from genrec.config_loader import to_dict
from genrec.models.loading import load_checkpoint, lora_config, save_checkpoint
from genrec.rl import ppo
from genrec.rl.rollout import Rollout, RolloutGenerator, UnsupportedModel, hf_generate_rollout
from genrec.train import common

STATE_FILE = "ppo_state.pt"


def load_policy(cfg: PPOConfig, *, trainable: bool, device: torch.device, dtype: torch.dtype | None = None):
    """(model, tokenizer) from cfg.policy_dir, shaped so learner and rollout workers agree on names:
    a LoRA checkpoint keeps its adapter; cfg.lora.enabled adds a fresh adapter to a full checkpoint."""
    model, tokenizer, _ = load_checkpoint(cfg.policy_dir, dtype=dtype, device=device, trainable=trainable)
    if cfg.lora.enabled and not isinstance(model, PeftModel):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the same adapter init in every process
            model = get_peft_model(model, lora_config(cfg.lora))
    if not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def is_adapter(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def sync_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a rollout worker needs to match the learner: the adapter's tensors for LoRA, the whole
    state otherwise; on the CPU so they travel through Ray's object store."""
    if is_adapter(model):
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}


def load_sync_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy in place (the rollout generator's CUDA graphs and fused buffers keep their addresses)."""
    if is_adapter(model):
        params = dict(model.named_parameters())
        missing = sorted(set(weights) - set(params))
        if missing:
            raise KeyError(f"adapter tensors the rollout policy lacks: {missing[:3]}")
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
    else:
        model.load_state_dict(weights, strict=True)


# ------------------------------------------------------------------------------ batches
def sequence_batch(prompts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor, pad_id: int):
    """(input_ids, attention_mask, position_ids) of left-padded prompts followed by right-padded
    responses; the logits that predict response token t sit at column P - 1 + t."""
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    valid = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt):] = 1
    input_ids = torch.cat([ids, tokens.long()], dim=1)
    attention = torch.cat([valid, mask.long()], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention, positions


def response_forward(model, prompts, tokens, mask, pad_id, temperature, value_head=None):
    """(logits / T, values or None) at the response positions, each (B, R, ...)."""
    device = next(model.parameters()).device
    input_ids, attention, positions = sequence_batch(prompts, tokens, mask, pad_id)
    r = tokens.shape[1]
    out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                position_ids=positions.to(device), use_cache=False, logits_to_keep=r + 1,
                output_hidden_states=value_head is not None)
    logits = out.logits[:, :-1].float() / temperature
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, -(r + 1):-1]
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logits, values


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _subset(prompts, tensors, index):
    return [prompts[i] for i in index.tolist()], [t[index] for t in tensors]


# ------------------------------------------------------------------------------ roles
class RolloutPolicy:
    """A policy copy that samples responses (RolloutGenerator; `generate` for other architectures)."""

    def __init__(self, cfg: PPOConfig, device: torch.device):
        self.cfg = cfg
        self.model, self.tokenizer = load_policy(cfg, trainable=False, device=device)
        self.model.eval()
        self.pad_id, self.eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        try:
            self.generator = RolloutGenerator(self.model, pad_id=self.pad_id, eos_id=self.eos_id,
                                              cuda_graph=cfg.cuda_graph, compile_cpu=cfg.compile_cpu)
        except UnsupportedModel:
            self.generator = None

    def set_weights(self, weights: dict) -> None:
        load_sync_weights(self.model, weights)

    def generate(self, prompts: list[list[int]], seed: int) -> Rollout:
        c = self.cfg
        if self.generator is None:
            return hf_generate_rollout(self.model, prompts, pad_id=self.pad_id, eos_id=self.eos_id,
                                       max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                                       seed=seed)
        return self.generator.generate(prompts, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                                       top_p=c.top_p, seed=seed)


class ReferenceModel:
    """The frozen SFT policy (for a LoRA policy: the checkpoint without PPO's adapter, i.e. the base
    with adapters disabled); gives the reference log-probs of sampled responses."""

    def __init__(self, cfg: PPOConfig, device: torch.device):
        self.cfg = cfg
        self.model, tokenizer, _ = load_checkpoint(cfg.policy_dir, device=device)
        self.model.requires_grad_(False).eval()
        self.pad_id = tokenizer.pad_token_id

    @torch.no_grad()
    def log_probs(self, rollout: Rollout) -> torch.Tensor:
        out = torch.zeros_like(rollout.logp)
        for part in _chunks(len(rollout.prompts), self.cfg.minibatch_size):
            logits, _ = response_forward(self.model, rollout.prompts[part], rollout.tokens[part], rollout.mask[part],
                                         self.pad_id, self.cfg.temperature)
            out[part] = ppo.token_log_probs(logits, rollout.tokens[part].to(logits.device)).cpu() * rollout.mask[part]
        return out


class Learner:
    """Policy + value head (a linear layer on the policy's last hidden state), AdamW, KL controller,
    score statistics; `step` runs PPO epochs over minibatches of one iteration's rollouts. The
    advantages come from the value head (advantage=gae) or from the other responses to the same
    prompt (grpo, rloo: the value head is kept but not trained).

    With `world` > 1 learners (a torch.distributed group, `join`), every learner receives the whole
    rollout, computes the pre-update pass for its share of the rows (gathered by an all-reduce), and
    in each minibatch takes its share of the rows; gradients are summed across learners, each
    learner's loss divided by the whole minibatch's token count, so that every learner takes the
    step one learner would take on the whole minibatch, and their weights stay equal."""

    def __init__(self, cfg: PPOConfig, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        # fp32 master weights; bf16 autocast on CUDA
        self.model, self.tokenizer = load_policy(cfg, trainable=True, device=device, dtype=torch.float32)
        if not is_adapter(self.model):
            self.model.requires_grad_(True)
        self.model.train()
        self.pad_id = self.tokenizer.pad_token_id
        hidden = self.model.config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.value_head = torch.nn.Linear(hidden, 1).to(device)
            torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1))
            torch.nn.init.zeros_(self.value_head.bias)
        # Two groups by learning rate, each decaying every tensor: the layout of earlier checkpoints.
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = common.adamw([
            {"params": params, "lr": cfg.lr},
            {"params": list(self.value_head.parameters()), "lr": cfg.value_lr},
        ], cfg.lr, device, weight_decay=cfg.weight_decay)
        self.kl_ctl = ppo.kl_controller(cfg.kl_controller, cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.moments = ppo.RunningMoments()
        self.iteration = 0

    def weights(self) -> dict:
        return sync_weights(self.model)

    def join(self, init_method: str) -> None:
        """Join the learners' process group (gloo on CPUs, nccl on GPUs)."""
        import torch.distributed as dist

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world)

    def _all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors across learners in place, as one flat buffer (one collective, not one per tensor)."""
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(self.device, torch.float32) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.device, t.dtype))
            offset += t.numel()

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)

    @torch.no_grad()
    def _evaluate(self, rollout: Rollout):
        """Log-probs, values and entropy of the rollouts under the current (pre-update) weights; each
        learner computes its share of the rows, and an all-reduce gives every learner all of them."""
        logp, values, entropy = (torch.zeros_like(rollout.logp) for _ in range(3))
        mine = torch.arange(len(rollout.prompts))[self.rank::self.world]
        self.model.eval()
        for part in _chunks(len(mine), self.cfg.minibatch_size):
            rows = mine[part]
            prompts, (tokens, m) = _subset(rollout.prompts, (rollout.tokens, rollout.mask), rows)
            with self._autocast():
                logits, v = response_forward(self.model, prompts, tokens, m, self.pad_id, self.cfg.temperature,
                                             self.value_head)
            logp[rows] = ppo.token_log_probs(logits, tokens.to(logits.device)).cpu()
            values[rows] = v.cpu()
            entropy[rows] = ppo.entropy_from_logits(logits).cpu()
        self.model.train()
        m = rollout.mask
        logp, values, entropy = logp * m, values * m, entropy * m
        self._all_reduce([logp, values, entropy])
        return logp, values, entropy

    def _minibatch_backward(self, rollout, index, denominator, old_logp, old_values, advantages, returns,
                            is_weights, stats) -> None:
        """Forward and backward over the rows `index` of the rollout; each loss term is summed over
        their tokens and divided by `denominator` (the whole minibatch's token count)."""
        c, mask = self.cfg, rollout.mask
        prompts, (tokens, m, lp_old, v_old, adv, ret, w) = _subset(
            rollout.prompts, (rollout.tokens, mask, old_logp, old_values, advantages, returns,
                              is_weights if is_weights is not None else mask), index)
        m, lp_old, v_old, adv, ret, w = (t.to(self.device) for t in (m, lp_old, v_old, adv, ret, w))
        with self._autocast():
            logits, values = response_forward(self.model, prompts, tokens, m, self.pad_id, c.temperature,
                                              self.value_head)
        logp = ppo.token_log_probs(logits, tokens.to(self.device))
        pg_loss, pg_stats = ppo.policy_loss(logp, lp_old, adv, m, c.clip_range,
                                            w if is_weights is not None else None, denominator)
        if c.advantage == "gae":
            vf_loss, vf_stats = ppo.value_loss(values, v_old, ret, m, c.value_clip, denominator)
        else:  # grpo, rloo: no critic to train
            vf_loss, vf_stats = torch.zeros((), device=self.device), {"value_clip_fraction": 0.0}
        ent = ppo.masked_mean(ppo.entropy_from_logits(logits), m, denominator)
        (pg_loss + c.vf_coef * vf_loss - c.ent_coef * ent).backward()
        for key, value in (("loss/policy", pg_loss), ("loss/value", vf_loss), ("entropy_update", ent),
                           *pg_stats.items(), *vf_stats.items()):
            stats[key].append(float(value.detach()) if torch.is_tensor(value) else float(value))

    def step(self, rollout: Rollout, scores: torch.Tensor, ref_logp: torch.Tensor, iteration: int) -> dict:
        """One PPO update from one iteration's rollouts, scores (B,) and reference log-probs (B, R)."""
        c, mask = self.cfg, rollout.mask
        old_logp, old_values, entropy = self._evaluate(rollout)
        scores_used = ppo.normalize_scores(scores.float(), self.moments if c.score_norm else None, c.score_clip)
        beta = self.kl_ctl.beta
        rewards, kl = ppo.per_token_rewards(scores_used, old_logp, ref_logp, mask, beta, c.kl_estimator)
        if c.advantage == "gae":
            advantages, returns = ppo.gae(rewards, old_values, mask, c.gamma, c.lam)
        else:  # critic-free: the sequence's reward (score - beta * its KL) against its prompt's group, on every token
            per_response = ppo.group_advantages(rewards.sum(1), c.samples_per_prompt, c.advantage)
            advantages, returns = per_response[:, None] * mask, old_values  # (returns: unused without a critic)
        if c.whiten_advantages:
            advantages = ppo.whiten(advantages, mask)

        # Off-policy rollouts were sampled by the weights before the previous update: old_logp (the
        # learner's weights now) anchors the clip, and each token is reweighted by old / sampler.
        is_weights = ppo.importance_weights(old_logp, rollout.logp, mask, c.is_cap) if c.off_policy else None

        generator = torch.Generator().manual_seed(c.seed * 1_000_003 + iteration)
        stats: dict[str, list[float]] = {k: [] for k in ("loss/policy", "loss/value", "clip_fraction", "approx_kl",
                                                          "value_clip_fraction", "entropy_update", "grad_norm")}
        n = len(rollout.prompts)
        for _ in range(c.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for part in _chunks(n, c.minibatch_size):
                tokens_in_minibatch = float(mask[order[part]].sum().clamp(min=1))
                index = order[part][self.rank::self.world]  # this learner's rows of the minibatch
                self.optimizer.zero_grad(set_to_none=True)
                if len(index):  # (a minibatch smaller than the learner group leaves some learners none)
                    self._minibatch_backward(rollout, index, tokens_in_minibatch, old_logp, old_values, advantages,
                                             returns, is_weights, stats)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                if self.world > 1:
                    for param in params:  # a parameter this learner's rows did not reach still takes part
                        if param.grad is None:
                            param.grad = torch.zeros_like(param)
                    self._all_reduce([param.grad for param in params])
                norm = torch.nn.utils.clip_grad_norm_(params, c.clip_grad if c.clip_grad > 0 else float("inf"))
                self.optimizer.step()
                stats["grad_norm"].append(float(norm))

        seq_kl = (kl * mask).sum(1)
        self.kl_ctl.update(float(seq_kl.mean()), n)
        self.iteration = iteration + 1
        lengths = mask.sum(1)
        metrics = {k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()}
        if self.world > 1:  # losses add up across learners; the per-token fractions are averaged
            keys = sorted(metrics)
            combined = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
            self._all_reduce([combined])
            summed = ("loss/policy", "loss/value", "entropy_update")
            metrics = {k: float(v) if k in summed else float(v) / self.world for k, v in zip(keys, combined.tolist())}
        metrics.update({
            "kl": float(seq_kl.mean()),  # to the reference, summed over a response's tokens
            "kl_per_token": float(ppo.masked_mean(kl, mask)),
            "kl_coef": beta,
            "kl_coef_next": self.kl_ctl.beta,
            "entropy": float(ppo.masked_mean(entropy, mask)),
            "value_mean": float(ppo.masked_mean(old_values, mask)),
            "return_mean": float(ppo.masked_mean(returns, mask)),
            "score_used_mean": float(scores_used.mean()),
            # rollout log-probs against the learner's: ~0 on-policy unless generation is off; off-policy
            # also the policy's move in one update
            "rollout_logp_gap": float(ppo.masked_mean((rollout.logp - old_logp).abs(), mask)),
            "response_length": float(lengths.mean()),
        })
        if is_weights is not None:
            metrics["is_weight_mean"] = float(ppo.masked_mean(is_weights, mask))
            metrics["is_weight_capped"] = float(ppo.masked_mean((is_weights >= c.is_cap).float(), mask))
        return metrics

    # ------------------------------------------------------------------------------ state
    def save(self, directory: str | Path, iteration: int, extra: dict) -> Path:
        """An HF-format policy folder plus ppo_state.pt (trainable weights, value head, optimizer,
        KL controller, score moments, RNG, iteration, driver extras)."""
        directory = Path(directory)
        save_checkpoint(directory, self.model, self.tokenizer, "ppo", to_dict(self.cfg), extra.get("metrics", {}))
        trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        state = common.training_state(
            self.optimizer.state_dict(),
            iteration=iteration,
            policy=trainable,
            value_head=self.value_head.state_dict(),
            kl_ctl=self.kl_ctl.state_dict(),
            moments=self.moments.state_dict(),
            extra=extra,
        )
        # The loop counts a checkpoint as done once this file exists: it is written last, atomically.
        common.save_state(state, directory / STATE_FILE)
        return directory

    def load(self, directory: str | Path) -> dict:
        state = common.load_state(Path(directory) / STATE_FILE)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in state["policy"].items():
                params[name].copy_(tensor)
        self.value_head.load_state_dict(state["value_head"])
        common.restore_training_state(state, self.optimizer)
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.moments.load_state_dict(state["moments"])
        self.iteration = int(state["iteration"])
        return state


def config_dict(cfg: PPOConfig) -> dict:
    return dataclasses.asdict(cfg)
