"""SFT per-worker loop: a plain function of (config, model, token rows) that runs without Ray.

The Ray Train launcher wraps `train_loop` and turns `report` into `ray.train.report`; nothing in
this module imports Ray, so benchmarks and unit tests call the loop directly where Ray is absent.
The loss is next-token cross-entropy on response tokens only, summed over every micro-batch of an
optimizer step on every worker and divided by their response-token count, so neither gradient
accumulation, packing nor the number of workers changes it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from genrec.config import SFTConfig
from genrec.train import common
from genrec.train.batching import IGNORE_INDEX, Batch, Layout, TokenRows, collate, plan_micro_batches, usable_rows

log = logging.getLogger("genrec.train.sft")

Report = Callable[[dict, "dict | None"], None]
STATE_FILE = "train_state.pt"
# Full (unsharded) tensors on CPU, trainable ones only: with LoRA the frozen base is not state.
STATE_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


# ------------------------------------------------------------------------------------------ loss
def _selects_logits() -> bool:
    """Whether this transformers takes `logits_to_keep` as a 2D boolean mask (5.2x) and so computes
    logits at the masked positions only; older versions compute them all and we pick afterwards."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    try:
        return slice_logits_to_keep(torch.zeros(1, 2, 1), torch.tensor([[True, False]])).shape == (1, 1)
    except (IndexError, RuntimeError, TypeError):
        return False


def _separates_packed_sequences() -> bool:
    """Whether transformers builds a block-diagonal mask from restarting position_ids (4.53+)."""
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    return hasattr(masking_utils, "find_packed_sequence_indices")


SELECTS_LOGITS = _selects_logits()


def token_losses(model: torch.nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of every target token, in (row, position) order (with `label_smoothing` ε:
    (1 - ε) times it plus ε times the mean over the vocabulary of -log p).

    Logits are computed at target positions only where transformers allows it: responses are a
    small share of the tokens, and a 150k-word LM head over every token would cost a third of the
    model's compute and gigabytes of logits.
    """
    keep = batch.targets != IGNORE_INDEX
    inputs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    if SELECTS_LOGITS:
        logits = model(**inputs, logits_to_keep=keep).logits
    else:
        logits = model(**inputs).logits[keep]
    return F.cross_entropy(logits.float(), batch.targets[keep], reduction="none", label_smoothing=label_smoothing)


# ------------------------------------------------------------------------------------------ data
class DataPlan:
    """Which micro-batches this worker runs at each optimizer step of an epoch.

    Every worker plans the whole epoch from (seed, epoch) and takes its own slice of each step, so
    workers agree without talking. An epoch's last step is filled up with micro-batches from the
    epoch's start (as DistributedSampler pads), so every worker runs every step in full.
    """

    def __init__(self, cfg: SFTConfig, rows: TokenRows, world_size: int, rank: int):
        self.cfg, self.rows, self.world_size, self.rank = cfg, rows, world_size, rank
        if cfg.batching == "packed" and not _separates_packed_sequences():
            raise ValueError("batching=packed needs transformers >= 4.53 to keep packed sequences apart; "
                             "upgrade it or use batching=length_grouped")
        self.indices, self.skipped = usable_rows(rows, cfg.max_len)
        if len(self.indices) == 0:
            raise ValueError(f"no usable training rows out of {len(rows)}: skipped {self.skipped}")
        self.width = cfg.row_len if cfg.batching == "packed" else None  # packed rows keep one shape

    def micro_batches(self, epoch: int) -> list[Layout]:
        rng = np.random.default_rng([self.cfg.seed, epoch])
        return plan_micro_batches(
            self.cfg.batching, self.rows.lengths, self.indices, self.cfg.row_len, self.cfg.micro_batch_tokens, rng
        )

    def steps(self, epoch: int) -> list[list[Layout]]:
        per_step = self.cfg.grad_accum * self.world_size
        layouts = self.micro_batches(epoch)
        num_steps = math.ceil(len(layouts) / per_step)
        full = [layouts[i % len(layouts)] for i in range(num_steps * per_step)]
        first = self.rank * self.cfg.grad_accum
        return [full[s * per_step + first:s * per_step + first + self.cfg.grad_accum] for s in range(num_steps)]

    def stream(self, epoch: int, index: int) -> Iterator[tuple[int, int, list[Batch]]]:
        """(epoch, step index in the epoch, this worker's micro-batches), from a position on."""
        while True:
            steps = self.steps(epoch)
            for i in range(index, len(steps)):
                yield epoch, i, [collate(self.rows, layout, self.width) for layout in steps[i]]
            epoch, index = epoch + 1, 0


def valid_share(cfg: SFTConfig, rows: TokenRows, world_size: int, rank: int) -> list[tuple[Layout, bool]]:
    """This worker's validation micro-batches, each with whether it counts.

    Workers take every world_size-th micro-batch; the short ones repeat a batch that does not count,
    because FSDP needs every worker in every forward.
    """
    indices, _ = usable_rows(rows, cfg.max_len)
    layouts = plan_micro_batches(cfg.batching, rows.lengths, indices, cfg.row_len, cfg.micro_batch_tokens, rng=None)
    padded = math.ceil(len(layouts) / world_size) * world_size
    return [(layouts[i % len(layouts)], i < len(layouts)) for i in range(rank, padded, world_size)]


# ----------------------------------------------------------------------------------------- model
def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP and peft wrappers (FSDP2 shards in place, no wrapper)."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prepare_model(model: torch.nn.Module, cfg: SFTConfig) -> None:
    hf = _hf_model(model)
    if cfg.grad_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and with DDP without extra hooks.
        kwargs = {"use_reentrant": False}
        if hasattr(hf, "activation_checkpointing_enable"):  # the name since transformers 5.2x
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.compile:
        compile_layers(hf)
    model.train()


def compile_layers(hf: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place rather than the whole model.

    The packed-attention mask and the response-token selection depend on the data and would break
    one whole-model graph; the layers see fixed shapes under packing, and in-place compilation
    keeps parameter names, so checkpoints stay the same.
    """
    layer_types = set(getattr(hf, "_no_split_modules", None) or [])
    layers = [m for m in hf.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(f"compile: found no decoder layers in {type(hf).__name__} (_no_split_modules={layer_types})")
    for layer in layers:
        layer.compile()


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _grad_sync(model: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but a step's last micro-batch (DDP/FSDP1 no_sync, FSDP2 flag)."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp2_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp2_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _all_reduce(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(t)
    return t


# ------------------------------------------------------------------------------------------ step
def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batches: list[Batch],
    cfg: SFTConfig,
    device: torch.device,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step over this worker's micro-batches: (local loss sum, all targets, grad norm)."""
    num_targets = torch.tensor(float(sum(b.num_targets for b in batches)), device=device)
    num_targets = _all_reduce(num_targets, world_size)
    # DDP and FSDP average gradients over workers; world_size / all targets turns that average
    # into (sum of token losses on every worker) / (response tokens on every worker).
    scale = world_size / num_targets
    loss_sum = torch.zeros((), device=device)
    for j, batch in enumerate(batches):
        with _grad_sync(model, sync=j == len(batches) - 1):
            with _autocast(device):
                losses = token_losses(model, batch.to(device), cfg.label_smoothing)
            (losses.sum() * scale).backward()
        loss_sum += losses.detach().sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, num_targets, grad_norm


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[Batch, bool]], device: torch.device, world_size: int) -> float:
    """Mean response-token loss over the validation set (every worker's share)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    for batch, counts in batches:
        with _autocast(device):
            losses = token_losses(model, batch.to(device))
        if counts:
            totals[0] += losses.sum()
            totals[1] += losses.numel()
    _all_reduce(totals, world_size)
    model.train(was_training)
    return (totals[0] / totals[1]).item() if totals[1] > 0 else math.nan


# ----------------------------------------------------------------------------------------- state
def _cpu_copy(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _cpu_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu_copy(v) for v in tree)
    return tree


def training_state(model, optimizer, scheduler, position: dict) -> dict:
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule, RNGs, data position.

    Under FSDP the full tensors gather on rank 0; other ranks get empty model and optimizer entries.
    """
    weights = get_model_state_dict(model, options=STATE_OPTIONS)
    moments = get_optimizer_state_dict(model, optimizer, options=STATE_OPTIONS)
    if next(model.parameters()).device.type == "cpu":
        # cpu_offload copies device tensors, but hands back a CPU model's live ones: copy those.
        weights, moments = _cpu_copy(weights), _cpu_copy(moments)
    return common.training_state(moments, scheduler, model=weights, position=dict(position))


def restore_training_state(state: dict, model, optimizer, scheduler) -> dict:
    """Load a `training_state` (the full one, on every worker); returns the data position."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    missing = {n for n, p in inner.named_parameters() if p.requires_grad} - set(state["model"])
    if missing:
        raise ValueError(f"resume state lacks trainable parameters, e.g. {sorted(missing)[:3]}")
    set_model_state_dict(model, state["model"], options=StateDictOptions(full_state_dict=True, strict=False))
    # FSDP scatters the full optimizer state itself; the schedule and RNGs load as anywhere else.
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    common.restore_training_state(state, optimizer=None, scheduler=scheduler)
    return dict(state["position"])


def save_state(state: dict, checkpoint_dir: str | Path) -> Path:
    """checkpoint_dir/train_state.pt, written atomically."""
    return common.save_state(state, Path(checkpoint_dir) / STATE_FILE)


load_state = common.load_state  # the launcher and tests read SFT states through this module


# ------------------------------------------------------------------------------------------ meter
class Window:
    """Sums since the last log line; turned into loss, tokens/s, real-token share and ETA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.targets = torch.zeros((), device=self.device, dtype=torch.float64)
        self.computed = self.real = self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss_sum: torch.Tensor, targets: torch.Tensor, batches: list[Batch]) -> None:
        self.loss_sum += loss_sum
        self.targets += targets
        self.computed += sum(b.computed_tokens for b in batches)
        self.real += sum(b.real_tokens for b in batches)
        self.steps += 1

    def flush(self, world_size: int) -> dict:
        sums = torch.stack([self.loss_sum, torch.tensor(float(self.computed), device=self.device, dtype=torch.float64),
                            torch.tensor(float(self.real), device=self.device, dtype=torch.float64)])
        loss_sum, computed, real = _all_reduce(sums, world_size).tolist()  # .tolist() waits for the device
        seconds = time.perf_counter() - self.start
        metrics = {
            "loss": loss_sum / self.targets.item(),
            "tokens_per_s": computed / seconds,
            "real_tokens_per_s": real / seconds,
            "real_fraction": real / computed,
            "step_s": seconds / self.steps,
            "torch_threads": torch.get_num_threads(),  # a CPU worker's: its cpus_per_worker under Ray Train
        }
        self.reset()
        return metrics


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _log_line(m: dict, total_steps: int) -> str:
    return (
        f"step {m['step']}/{total_steps} | epoch {m['epoch']} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | "
        f"grad_norm {m['grad_norm']:.3f} | tok/s {m['tokens_per_s']:,.0f} (real {m['real_tokens_per_s']:,.0f}, "
        f"{m['real_fraction']:.1%}) | eta {_duration(m['eta_s'])}"
    )


# ------------------------------------------------------------------------------------------- loop
def train_loop(
    cfg: SFTConfig,
    model: torch.nn.Module,
    train_rows: TokenRows,
    valid_rows: TokenRows | None = None,
    *,
    world_size: int = 1,
    rank: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume_state: dict | None = None,
    report: Report | None = None,
) -> dict:
    """Train `model` (plain, peft, DDP- or FSDP-wrapped, already on its device) on token rows.

    `train_rows` and `valid_rows` are the whole sets, the same on every worker; each worker plans
    them alike and runs its own share. Every `log_every` steps the loop logs and calls
    `report(metrics, None)`; every `save_every` steps and at the end it builds the resumable
    state, writes it to `checkpoint_dir/train_state.pt` from rank 0 when a folder is given, and
    calls `report(metrics, state)` on every worker. Returns the last metrics, the skipped-row
    counts and the history of logged metrics.
    """
    device = next(model.parameters()).device
    plan = DataPlan(cfg, train_rows, world_size, rank)
    share = valid_share(cfg, valid_rows, world_size, rank) if valid_rows is not None else []
    prepare_model(model, cfg)
    optimizer = common.adamw(common.decay_groups(model.parameters(), cfg.weight_decay), cfg.lr, device)
    total_steps = cfg.max_steps or sum(len(plan.steps(e)) for e in range(cfg.epochs))
    scheduler = common.warmup_schedule(optimizer, cfg.schedule, cfg.warmup_steps, total_steps)
    plan_key = plan_fingerprint(cfg, world_size)
    if resume_state is not None:
        if resume_state.get("plan", plan_key) != plan_key:
            raise ValueError(f"cannot resume: the checkpoint's data plan {resume_state['plan']} differs from this "
                             f"run's {plan_key}; resume with the same settings or use a new out_dir")
        position = restore_training_state(resume_state, model, optimizer, scheduler)
    else:
        common.seed_everything(cfg.seed + rank)
        position = {"epoch": 0, "index": 0, "step": 0}
    if rank == 0:
        log.info("train: %d rows usable, skipped %s; %d steps of %d micro-batches x %d workers, from step %d",
                 len(plan.indices), plan.skipped, total_steps, cfg.grad_accum, world_size, position["step"])

    wants_state = checkpoint_dir is not None or report is not None  # else nobody would take it
    window, history = Window(device), []
    if share and position["step"] == 0:
        # Where validation starts, so a run shows how far it moved.
        valid_batches = ((collate(valid_rows, layout, plan.width), counts) for layout, counts in share)
        history.append({"step": 0, "valid_loss": evaluate(model, valid_batches, device, world_size)})
        if rank == 0:
            log.info("step 0/%d | valid_loss %.4f", total_steps, history[0]["valid_loss"])
        if report is not None:
            report(dict(history[0]), None)
    run_start, start_step = time.perf_counter(), position["step"]
    stream = plan.stream(position["epoch"], position["index"])
    while position["step"] < total_steps:
        epoch, index, batches = next(stream)
        loss_sum, num_targets, grad_norm = train_step(model, optimizer, scheduler, batches, cfg, device, world_size)
        window.add(loss_sum, num_targets, batches)
        position = {"epoch": epoch, "index": index + 1, "step": position["step"] + 1}
        step, last = position["step"], position["step"] == total_steps
        metrics, state = {}, None
        if step % cfg.log_every == 0 or last:
            metrics = window.flush(world_size)
            rate = (time.perf_counter() - run_start) / (step - start_step)
            metrics.update(step=step, epoch=epoch, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm.item(),
                           eta_s=rate * (total_steps - step))
            if device.type == "cuda":
                metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            if rank == 0:
                log.info(_log_line(metrics, total_steps))
        if share and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
            valid_batches = ((collate(valid_rows, layout, plan.width), counts) for layout, counts in share)
            metrics.update(step=step, valid_loss=evaluate(model, valid_batches, device, world_size))
            if rank == 0:
                log.info("step %d/%d | valid_loss %.4f", step, total_steps, metrics["valid_loss"])
        if wants_state and ((cfg.save_every and step % cfg.save_every == 0) or last):
            state = dict(training_state(model, optimizer, scheduler, position), plan=plan_key)
            if checkpoint_dir is not None and rank == 0:
                save_state(state, checkpoint_dir)
        if metrics:
            history.append(metrics)
        if report is not None and (metrics or state is not None):
            report(dict(metrics, step=step), state)
    return {**_last_values(history), "skipped": plan.skipped, "history": history}


def plan_fingerprint(cfg: SFTConfig, world_size: int) -> dict:
    """The settings that decide which rows each step sees: a resumed run must match them, or its
    saved data position would point into a different plan."""
    keys = ("seed", "batching", "max_len", "pack_len", "micro_batch_tokens", "grad_accum", "max_steps", "epochs")
    return {"world_size": world_size, **{k: getattr(cfg, k) for k in keys}}


def _last_values(history: list[dict]) -> dict:
    """The latest value of every metric over the history (validation and training log apart)."""
    last: dict = {}
    for metrics in history:
        last.update(metrics)
    return last
