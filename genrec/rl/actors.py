"""Ray actors of the PPO loop, one per role (as OpenRLHF groups them): RolloutWorker x N,
ReferencePolicy, RewardScorer, Learner. Each is a thin shell around a class of genrec/rl/policy.py
or genrec/rl/rewards.py, which hold the logic and run without Ray. Each reads its own node's copy of
input paths that are object-store URIs (genrec.storage.local_inputs).
"""
from __future__ import annotations

import time

import ray
import torch

from genrec.config import PPOConfig
from genrec.faults import FAILED_ONCE, FAULTS_FILE, crash_once, hold_once
from genrec.rl.policy import STATE_FILE
from genrec.rl.rollout import Rollout
from genrec.storage import Mirror, local_inputs


def resources(cfg: PPOConfig) -> dict[str, dict]:
    """Ray resources of each role's actor. With use_gpu the learner and every rollout worker hold a
    GPU each; the reference and the scorer, which only run forward passes, take support_gpus each
    (0.5: one GPU for the two)."""
    gpu = 1 if cfg.use_gpu else 0
    support = cfg.support_gpus if cfg.use_gpu else 0
    return {"learner": dict(num_cpus=cfg.learner_cpus, num_gpus=gpu),
            "rollout": dict(num_cpus=cfg.worker_cpus, num_gpus=gpu, resources=dict(cfg.rollout_resources)),
            "reference": dict(num_cpus=cfg.worker_cpus, num_gpus=support),
            "scorer": dict(num_cpus=cfg.worker_cpus, num_gpus=support)}


def _setup(cfg: PPOConfig, role: str) -> torch.device:
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    on_gpu = resources(cfg)[role]["num_gpus"] > 0
    return torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")


@ray.remote
class RolloutWorker:
    def __init__(self, cfg: PPOConfig, index: int):
        from genrec.rl.policy import RolloutPolicy

        self.cfg, self.index = cfg, index
        self.out_dir = Mirror(cfg.out_dir)
        self.out_dir.pull(FAULTS_FILE, FAILED_ONCE)  # tests only (genrec/faults.py)
        self.policy = RolloutPolicy(local_inputs(cfg), _setup(cfg, "rollout"))

    def set_weights(self, weights: dict) -> int:
        self.policy.set_weights(weights)
        return self.index

    def generate(self, prompts: list[list[int]], seed: int, iteration: int) -> Rollout:
        if self.index == 0:  # tests only (genrec/faults.py)
            crash_once(self.out_dir.local, "crash_at_iteration", iteration)
            hold_once(self.out_dir.local, "hold_at_iteration", iteration, marked=lambda: self.out_dir.push(FAILED_ONCE))
        started = time.perf_counter()
        rollout = self.policy.generate(prompts, seed)
        rollout.seconds = time.perf_counter() - started
        return rollout


@ray.remote
class ReferencePolicy:
    def __init__(self, cfg: PPOConfig):
        from genrec.rl.policy import ReferenceModel

        self.ref = ReferenceModel(local_inputs(cfg), _setup(cfg, "reference"))

    def log_probs(self, rollout: Rollout) -> torch.Tensor:
        return self.ref.log_probs(rollout)


@ray.remote
class RewardScorer:
    """Wraps any object with .score(source_texts, response_texts)."""

    def __init__(self, cfg: PPOConfig, rows_by_text: dict | None):
        from genrec.rl.rewards import build_reward

        device = _setup(cfg, "scorer")
        self.reward = build_reward(local_inputs(cfg), rows_by_text, device=device)

    def score(self, source_texts: list[str], response_texts: list[str]):
        return self.reward.score(source_texts, response_texts)

    def info(self) -> dict:
        return dict(getattr(self.reward, "info", {}) or {})


@ray.remote
class Learner:
    def __init__(self, cfg: PPOConfig, rank: int = 0, world: int = 1):
        from genrec.rl.policy import Learner as PolicyLearner

        self.learner = PolicyLearner(local_inputs(cfg), _setup(cfg, "learner"), rank, world)

    def address(self) -> str:
        """rank 0: a tcp:// address (this node, a free port) for the learners' process group."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, init_method: str) -> int:
        self.learner.join(init_method)
        return self.learner.rank

    def weights(self) -> dict:
        return self.learner.weights()

    def step(self, rollout: Rollout, scores, ref_logp, iteration: int) -> dict:
        return self.learner.step(rollout, torch.as_tensor(scores), ref_logp, iteration)

    def save(self, out_dir: str, name: str, iteration: int, extra: dict) -> str:
        """Write checkpoint `name` into out_dir (a path or URI), its state file last."""
        mirror = Mirror(out_dir)
        self.learner.save(mirror.local / name, iteration, extra)
        mirror.push(name, last=STATE_FILE)
        return name

    def load(self, out_dir: str, name: str) -> dict:
        mirror = Mirror(out_dir)
        mirror.pull(name)
        state = self.learner.load(mirror.local / name)
        return {"iteration": state["iteration"], "extra": state["extra"]}

    def trainable_state(self) -> dict:
        """Testing and checks: the trainable weights and value head, on the CPU."""
        model = self.learner.model
        state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        state.update({f"value_head.{k}": v.cpu() for k, v in self.learner.value_head.state_dict().items()})
        return state
