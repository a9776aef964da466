"""`trainer: trl`: TRL's SFTTrainer inside each Ray Train worker of `genrec train-sft`.

For people whose recipes are TRL's: the same prepared rows, tokenizer and token shards as genrec's
own loop (completion-only labels, -100 over the prompt), the same model build, and the same
learning rate, warmup, schedule, weight decay, gradient clipping, accumulation and seed. TRL pads
each batch of micro_batch_tokens // max_len rows to its longest row; genrec's packing and FSDP are
genrec's loop's own (TRL's padding_free needs flash attention, which CPUs lack).

Ray Train does for it what it does for genrec's loop: the process group (the HF Trainer runs DDP in
it), metrics and checkpoints through ray.train.report (Ray's RayTrainReportCallback, at every
save), and a worker restarted after a failure resumes from the last reported checkpoint. Rank 0
writes the plain log (out_dir/metrics.jsonl: step, loss, lr, valid_loss) and out_dir/final in
genrec's format, which `genrec evaluate` and `genrec serve` load like any SFT output.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import torch

from genrec.config import SFTConfig
from genrec.models.loading import save_checkpoint
from genrec.storage import Mirror
from genrec.train.batching import TokenRows

METRICS_FILE, FINAL = "metrics.jsonl", "final"  # the names genrec/train/launch.py gives them
WORK = "trl"  # TRL's own checkpoints, in this node's copy of out_dir


def as_dataset(rows: TokenRows):
    """A datasets.Dataset of input_ids and labels; TRL takes pre-tokenized rows and their labels as they are."""
    from datasets import Dataset

    bounds = list(zip(rows.offsets[:-1], rows.offsets[1:]))
    return Dataset.from_dict({"input_ids": [rows.ids[a:b].tolist() for a, b in bounds],
                              "labels": [rows.labels[a:b].tolist() for a, b in bounds]})


def trl_arguments(cfg: SFTConfig, output_dir: str, evaluates: bool):
    """TRL's SFTConfig for genrec's settings."""
    from trl import SFTConfig as TRLConfig

    rows = max(1, cfg.micro_batch_tokens // cfg.max_len)
    on_gpu = torch.cuda.is_available()
    return TRLConfig(
        output_dir=output_dir, per_device_train_batch_size=rows, per_device_eval_batch_size=rows,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.schedule, max_grad_norm=cfg.clip_grad,
        max_steps=cfg.max_steps or -1, num_train_epochs=cfg.epochs, seed=cfg.seed, data_seed=cfg.seed,
        label_smoothing_factor=cfg.label_smoothing, gradient_checkpointing=cfg.grad_checkpointing,
        max_length=cfg.max_len, logging_steps=cfg.log_every,
        eval_strategy="steps" if evaluates else "no", eval_steps=cfg.eval_every or None, eval_on_start=evaluates,
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 500, save_total_limit=2,
        bf16=on_gpu, use_cpu=not on_gpu, report_to="none", disable_tqdm=True,
    )


def train_with_trl(cfg: SFTConfig, model: torch.nn.Module, tokenizer, train_rows: TokenRows,
                   valid_rows: TokenRows | None, out_dir: Mirror, rank: int) -> dict:
    """Train `model` with SFTTrainer in this Ray Train worker; returns the last metrics (rank 0 also
    writes out_dir/final)."""
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from transformers import TrainerCallback
    from trl import SFTTrainer

    out = out_dir.local
    evaluates = valid_rows is not None and cfg.eval_every > 0
    last: dict = {}

    class PlainLog(TrainerCallback):
        """genrec's metrics.jsonl, one line per log, on rank 0 (what `genrec report` reads)."""

        def on_log(self, _args, state, control, logs=None, **kwargs):
            names = {"loss": "loss", "learning_rate": "lr", "eval_loss": "valid_loss", "grad_norm": "grad_norm"}
            line = {"step": state.global_step, **{ours: float(logs[theirs]) for theirs, ours in names.items()
                                                   if theirs in (logs or {})}}
            if len(line) > 1:
                last.update(line)
                if rank == 0:
                    with open(out / METRICS_FILE, "a") as f:
                        f.write(json.dumps(line) + "\n")
                    out_dir.push(METRICS_FILE)

    trainer = SFTTrainer(model=model, args=trl_arguments(cfg, str(out / WORK), evaluates), processing_class=tokenizer,
                         train_dataset=as_dataset(train_rows), eval_dataset=as_dataset(valid_rows) if evaluates else None,
                         callbacks=[PlainLog(), RayTrainReportCallback()])
    trainer.train(resume_from_checkpoint=_reported_checkpoint(out))
    if rank == 0:
        save_checkpoint(out / FINAL, trainer.model, tokenizer, "sft", dataclasses.asdict(cfg),
                        dict(last, step=trainer.state.global_step))
        out_dir.push(FINAL)
    return last


def _reported_checkpoint(out) -> str | None:
    """The HF checkpoint in the Ray Train checkpoint this worker restarts from, copied to this node."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    target = out / WORK / "resume"
    shutil.rmtree(target, ignore_errors=True)
    with checkpoint.as_directory() as path:
        shutil.copytree(f"{path}/{RayTrainReportCallback.CHECKPOINT_NAME}", target)
    return str(target)
