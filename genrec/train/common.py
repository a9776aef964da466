"""What every trainer of genrec shares: SFT (genrec/train/sft.py, launch.py), the reward model
(genrec/train/reward.py) and PPO's learner (genrec/rl/policy.py).

    decay_groups, adamw          AdamW; weight decay on matrices only
    warmup_schedule              linear warmup, then cosine, linear or constant
    rng_state, set_rng_state     python, numpy, torch and CUDA generators
    training_state,              a checkpoint's optimizer, schedule and RNG states beside the
    restore_training_state       trainer's own entries (weights, data position, ...)
    save_state, load_state       one state file, written atomically
    start_run, torch_trainer     the driver's side of an SFT or reward run on Ray Train
    worker_logging, report_to_ray, reported_state, crash_if_planned
                                 the worker's side of it: its log lines, report metrics and
                                 checkpoints, find the checkpoint to resume from, the crash a test
                                 plans (genrec/faults.py)

The module imports Ray only inside the functions that need it, so the loops that use it still run
where Ray is absent (unit tests, benchmarks).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genrec.faults import FAILED_ONCE, crash_once, crash_planned, hold_once

# Ray Train's controller polls workers this often; genrec.runtime lowers it for local sessions.
HEALTH_CHECK_INTERVAL_S = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0))


# ------------------------------------------------------------------------------------ optimizer
def decay_groups(params, weight_decay: float) -> list[dict]:
    """The trainable `params` in two AdamW groups: matrices with `weight_decay`, vectors (biases,
    norm gains) without, as is usual for transformers. Parameter order is kept within each group,
    so optimizer state dicts of earlier runs still line up."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], lr: float, device: torch.device, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over parameter groups (each may set its own lr and weight_decay); the fused kernel on
    CUDA, one launch for every parameter instead of several per tensor."""
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


# ------------------------------------------------------------------------------------- schedule
def lr_factor(step: int, *, decay: str, warmup_steps: int, total_steps: int, warmup_offset: int) -> float:
    """The learning rate at `step` as a fraction of the base rate. The formulas are transformers'
    (get_scheduler), term for term, so that SFT runs keep their exact learning rates."""
    if step < warmup_steps:
        return float(step + warmup_offset) / float(max(1, warmup_steps + warmup_offset))
    if decay == "constant":
        return 1.0
    if decay == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    if decay == "cosine":
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate decay {decay!r}: cosine, linear or constant")


def warmup_schedule(optimizer: torch.optim.Optimizer, decay: str, warmup_steps: int, total_steps: int,
                    warmup_starts_at_zero: bool = True) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then `decay` ("cosine", "linear": to 0 at `total_steps`;
    "constant"). The warmup starts at lr 0 as transformers' does (SFT); with
    `warmup_starts_at_zero=False` at lr / (warmup_steps + 1), so the first step already learns
    (the reward model's schedule, kept as it was)."""
    factor = functools.partial(lr_factor, decay=decay, warmup_steps=warmup_steps, total_steps=total_steps,
                               warmup_offset=0 if warmup_starts_at_zero else 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore an `rng_state`; one saved without CUDA (a CPU run) leaves the CUDA generator as it is."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- state
def training_state(optimizer_state: dict, scheduler=None, **entries) -> dict:
    """A checkpoint's state: the trainer's own `entries` (weights, data position, ...), the
    optimizer state dict, the schedule's state when there is one, and every RNG's."""
    state = {**entries, "optimizer": optimizer_state, "rng": rng_state()}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    return state


def restore_training_state(state: dict, optimizer: torch.optim.Optimizer | None, scheduler=None) -> None:
    """Load the optimizer, schedule and RNG states of a `training_state`. With `optimizer` None the
    caller has loaded state["optimizer"] itself (FSDP's full state dicts, genrec/train/sft.py).
    Reward checkpoints written before they held RNG state resume with the current generators."""
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if "rng" in state:
        set_rng_state(state["rng"])


def save_state(state: dict, path: str | Path) -> Path:
    """Write atomically (a temporary file, then a rename), so a run killed mid-save leaves the
    previous state readable and never a truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(path: str | Path) -> dict:
    # Our own file: it holds numpy and python RNG states, which weights_only loading refuses.
    return torch.load(Path(path), map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------ Ray Train
def start_run(cfg):
    """(cfg, out_dir) of an SFT or reward run: Ray started or joined, out_dir created (a
    genrec.storage.Mirror: a local folder, or an object-store URI and this node's copy of it), the
    input paths made absolute for the workers (genrec.runtime.for_train_workers) and the config
    saved in out_dir/config.yaml."""
    from genrec.config_loader import save_config
    from genrec.runtime import for_train_workers, init_ray
    from genrec.storage import Mirror, is_uri

    init_ray()
    out_dir = Mirror(cfg.out_dir if is_uri(cfg.out_dir) else Path(cfg.out_dir).resolve())
    out_dir.local.mkdir(parents=True, exist_ok=True)
    cfg = for_train_workers(cfg)
    save_config(cfg, out_dir.local / "config.yaml")
    out_dir.push("config.yaml")
    return cfg, out_dir


def torch_trainer(train_loop_per_worker, loop_config: dict, workers, run_name: str, storage_path: str | Path,
                  callbacks: list | None = None, keep_checkpoints: int = 2):
    """The TorchTrainer of an SFT or a reward run. `workers` is the stage's config.RayTrain section
    (num_workers, cpus_per_worker, use_gpu, max_failures). Ray Train V2 restores a run by its
    storage path and name, so a rerun with both the same resumes from the last checkpoint kept
    (`keep_checkpoints` of them). `callbacks` go on the RunConfig (Tune's TuneReportCallback:
    genrec/tune.py)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from genrec.runtime import worker_resources

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker=worker_resources(workers)),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=workers.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=callbacks,
        ),
    )


def worker_logging() -> None:
    """genrec's INFO lines (the checkpoint a worker resumes from, ...) on this worker's stderr, which Ray
    forwards to the driver and the job log. Ray Train workers start with Python's default logging:
    warnings only."""
    logger = logging.getLogger("genrec")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def report_to_ray(metrics: dict, state: dict | None, state_file: str, rank: int,
                  extra_files: dict[str, str] | None = None) -> None:
    """ray.train.report of `metrics`; with a `state`, also a checkpoint folder holding it as
    `state_file` (and `extra_files`, name -> text). Rank 0 alone writes the folder: every rank
    calls this together (a report is a barrier), and under FSDP only rank 0 holds the full state."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_state(state, Path(tmp) / state_file)
            for name, text in (extra_files or {}).items():
                Path(tmp, name).write_text(text)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def reported_state(state_file: str) -> tuple[dict | None, str | None]:
    """(state, checkpoint path) of the checkpoint Ray Train restarts this worker from, else (None, None)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as path:
        return load_state(Path(path) / state_file), checkpoint.path


def crash_if_planned(out_dir, step: int) -> None:
    """Exit this Ray Train worker at `step` when a test planned a crash there (genrec/faults.py
    crash_at_step), as a crash would; or wait there (hold_at_step) while the test kills a node.
    `out_dir` is the run's folder or its genrec.storage.Mirror.

    It first waits for Ray Train's controller to collect the reports made so far (it polls
    workers every HEALTH_CHECK_INTERVAL_S): a worker that dies sooner loses its last report,
    checkpoint included, and the run restarts from the one before, which would test nothing.
    """
    out = getattr(out_dir, "local", out_dir)
    if crash_planned(out, "crash_at_step", step):
        time.sleep(3 * HEALTH_CHECK_INTERVAL_S)
        crash_once(out, "crash_at_step", step)
    push = getattr(out_dir, "push", lambda name: None)
    hold_once(out, "hold_at_step", step, marked=lambda: push(FAILED_ONCE))
