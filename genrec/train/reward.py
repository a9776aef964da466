"""`genrec train-reward`: the reward model on preference rows, on Ray Train, with the SFT stage's patterns.

    prepare-jobs output (pairs/{train,valid,test}.parquet, interactions/test.parquet)
      -> tokenizer (tiny: a BPE trained on the training pairs' text; else the backbone's)  out_dir/tokenizer
      -> TorchTrainer(N workers, DDP) running reward_train_loop
      -> resumable checkpoints through ray.train.report                  out_dir/ray/<run>/checkpoint_*
      -> the final reward model                                          out_dir/final
      -> held-out metrics on the test split (pairwise accuracy, AUC, calibration) out_dir/metrics.json,
         calibration.md (+ .png with matplotlib), also recorded in final/genrec.json

Rerunning with the same out_dir resumes from the last checkpoint (Ray Train V2 restores a run by
its storage path and name); a worker that dies is restarted from it (FailureConfig).

Why not TRL's RewardTrainer inside the worker: it is a transformers Trainer that owns the loop,
the optimizer, the checkpoints (its own output_dir layout, not ray.train.report) and the data
collation of one prompt with chosen/rejected completions for an AutoModelForSequenceClassification.
Our rows compare two (CV, JD) pairs that may differ in the CV (other_cv negatives), the backbone
may be a sentence encoder read by mean pooling, and resume must go through Ray Train's checkpoint.
Bridging all that would cost more code than the 40-line loop below, whose loss is the same
-log sigmoid(r+ - r- - margin) that RewardTrainer computes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from genrec.config import RewardConfig

from genrec.config_loader import from_dict
from genrec.girl import metrics as M
from genrec.girl import prompts
from genrec.girl import reward as R
from genrec.girl.reward_checkpoint import META_FILE
from genrec.models.embedders import resolve_backbone
from genrec.storage import is_uri
from genrec.train import common

log = logging.getLogger("genrec.reward")

STATE_FILE = "reward_state.pt"
METRICS_FILE = "metrics.jsonl"
SOURCE_FILE = "genrec_source.json"
FINAL = "final"
PAIR_COLUMNS = ["cv_text", "pos_text", "neg_cv_text", "neg_text", "margin", "neg_kind"]


# ------------------------------------------------------------------------------------ the driver
def train_reward(cfg: RewardConfig, callbacks: list | None = None, keep_checkpoints: int = 2) -> dict:
    """Run the reward stage; returns the held-out metrics (also in out_dir/metrics.json).
    `callbacks` go on the Ray Train RunConfig (Tune's TuneReportCallback: genrec/tune.py)."""
    if is_uri(cfg.data_dir) or is_uri(cfg.out_dir):
        raise ValueError("train-reward: data_dir and out_dir must be folders every node reads (local or a shared "
                         "file system); object-store URIs are read and written by train-sft and evaluate")
    cfg, out_dir = common.start_run(cfg)
    out, data = out_dir.local, Path(cfg.data_dir).resolve()
    if not (data / "pairs" / "train.parquet").exists():
        raise FileNotFoundError(f"data_dir: {data / 'pairs' / 'train.parquet'} is missing; run `genrec prepare-jobs` first")
    if cfg.backbone == "tfidf":
        return fit_tfidf_reward(cfg, data, out)
    tokenizer_dir = build_tokenizer(cfg, out, data)
    trainer = common.torch_trainer(
        reward_worker,
        {"cfg": dataclasses.asdict(cfg), "out": str(out), "data": str(data), "tokenizer_dir": str(tokenizer_dir)},
        cfg.ray_train, cfg.run_name or out.name, out / "ray", callbacks, keep_checkpoints,
    )
    trainer.fit()
    return evaluate_checkpoint(out / FINAL, data, out, cfg.calibration_bins)


def fit_tfidf_reward(cfg: RewardConfig, data: Path, out: Path) -> dict:
    """backbone=tfidf: a linear model fitted in the driver in seconds; Ray Train, steps and
    checkpoints have nothing to add to it. Same final/ folder and held-out metrics as the others."""
    from genrec.girl.tfidf_reward import TfidfPairModel, save_tfidf_reward

    pairs = load_pairs(data / "pairs" / "train.parquet", cfg.max_train_pairs)
    texts = pd.concat([pairs["cv_text"], pairs["pos_text"]]).head(1000)
    chinese = float(texts.str.count(" ").sum()) < 0.02 * float(texts.str.len().sum())  # no spaces between words
    started = time.time()
    model = TfidfPairModel(chinese=chinese, C=cfg.tfidf.C, ngram_max=cfg.tfidf.ngram_max, jd_words=cfg.tfidf.jd_words,
                           word_pairs=cfg.tfidf.word_pairs).fit(pairs)
    train = {"pairs": len(pairs), "fit_s": round(time.time() - started, 2), "chinese": chinese}
    valid = load_pairs(data / "pairs" / "valid.parquet", 2000)
    if len(valid):
        r_pos, r_neg = model.score(valid["cv_text"], valid["pos_text"]), model.score(valid["neg_cv_text"], valid["neg_text"])
        train["valid_pairwise_acc"] = M.pairwise_accuracy(r_pos, r_neg)
    (out / METRICS_FILE).write_text(json.dumps({"step": 0, **train}) + "\n")  # a rerun fits again
    save_tfidf_reward(out / FINAL, model, {"config": dataclasses.asdict(cfg), "train": train, **word_budgets(data)})
    return evaluate_checkpoint(out / FINAL, data, out, cfg.calibration_bins)


def word_budgets(data: Path) -> dict:
    stats = json.loads((data / "stats.json").read_text()) if (data / "stats.json").exists() else {}
    return {k: stats.get(k, default) for k, default in (("max_cv_words", prompts.MAX_CV_WORDS),
                                                        ("max_jd_words", prompts.MAX_JD_WORDS))}


def build_tokenizer(cfg: RewardConfig, out: Path, data: Path) -> Path:
    """The tokenizer every worker loads, saved once in out_dir/tokenizer (a resumed run keeps its ids)."""
    path = out / "tokenizer"
    source = {"backbone": cfg.backbone, "vocab_size": cfg.tiny.vocab_size, "data_dir": str(data)}
    if (path / SOURCE_FILE).exists():
        built = json.loads((path / SOURCE_FILE).read_text())
        if built != source:
            raise ValueError(f"{out} holds a tokenizer built from {built}, not {source}; use a new out_dir")
        return path
    if cfg.backbone == "tiny":
        pairs = pd.read_parquet(data / "pairs" / "train.parquet", columns=["cv_text", "pos_text", "neg_text"])
        texts = pd.unique(pd.concat([pairs[c] for c in pairs.columns]))
        tokenizer = R.build_tiny_tokenizer(texts.tolist(), cfg.tiny.vocab_size)
    else:
        from genrec.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(resolve_backbone(cfg.backbone))
    tokenizer.save_pretrained(path)
    (path / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return path


def load_pairs(path: Path, limit: int = 0) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=PAIR_COLUMNS)
    pairs = pd.read_parquet(path)
    return pairs.head(limit) if limit else pairs


def evaluate_checkpoint(checkpoint: Path, data: Path, out: Path, bins: int = 10, split: str = "test") -> dict:
    """Held-out metrics of a saved reward model on a split; written to out/metrics.json, the
    calibration table to out/calibration.md (+ .png), and into the checkpoint's genrec.json."""
    scorer = R.load_reward(checkpoint)
    pairs = load_pairs(data / "pairs" / f"{split}.parquet")
    inter_path = data / "interactions" / f"{split}.parquet"
    interactions = pd.read_parquet(inter_path) if inter_path.exists() else None
    metrics = M.heldout_metrics(scorer.score, pairs, interactions, bins)
    metrics["split"] = split
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = [f"# reward calibration ({split} pairs, both orders)", "",
             "| predicted P(JD+ above JD-) | pairs | mean predicted | observed |", "|---|---|---|---|"]
    lines += [f"| {r['lo']:.1f}-{r['hi']:.1f} | {r['n']} | {r['mean_predicted']} | {r['observed']} |"
              for r in metrics["calibration"]]
    lines += ["", f"pairwise accuracy {metrics['pairwise_acc']:.4f}, AUC {metrics['auc']:.4f}, "
              f"ECE {metrics['ece']:.4f}"]
    (out / "calibration.md").write_text("\n".join(lines) + "\n")
    M.plot_calibration(metrics["calibration"], out / "calibration.png")
    meta_path = checkpoint / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["metrics"] = {k: v for k, v in metrics.items() if k != "calibration"}
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    log.info("reward held-out (%s): pairwise_acc %.4f auc %.4f", split, metrics["pairwise_acc"], metrics["auc"])
    return metrics


# ------------------------------------------------------------------------------------ the worker
def reward_worker(ctx: dict) -> None:
    """Ray Train worker: build the model, read the pairs, run reward_train_loop with checkpoints
    reported through ray.train.report, save out_dir/final on rank 0."""
    import ray.train
    import ray.train.torch

    from genrec.models.tokenizer import load_tokenizer

    cfg = from_dict(RewardConfig, ctx["cfg"])
    out, data = Path(ctx["out"]), Path(ctx["data"])
    context = ray.train.get_context()
    world_size, rank = context.get_world_size(), context.get_world_rank()
    device = ray.train.torch.get_device()
    tokenizer = load_tokenizer(ctx["tokenizer_dir"])
    model = R.build_reward_model(cfg.backbone, tokenizer, cfg.pooling, cfg.tiny, cfg.max_len, cfg.seed).to(device)
    wrapped = ray.train.torch.prepare_model(model, move_to_device=False) if world_size > 1 else model
    resume, checkpoint_path = common.reported_state(STATE_FILE)
    if resume is not None and rank == 0:
        log.info("resuming from %s at step %d", checkpoint_path, resume["step"])

    def report(metrics: dict, state: dict | None) -> None:
        common.crash_if_planned(out, metrics.get("step", 0))  # tests only (genrec/faults.py)
        if rank == 0:
            with open(out / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if state is not None or "valid_pairwise_acc" in metrics:  # not every training-loss line: a barrier
            common.report_to_ray(metrics, state, STATE_FILE, rank)

    train = load_pairs(data / "pairs" / "train.parquet", cfg.max_train_pairs)
    valid = load_pairs(data / "pairs" / "valid.parquet", 2000)
    result = reward_train_loop(cfg, wrapped, tokenizer, train, valid, world_size=world_size, rank=rank,
                               resume_state=resume, report=report, device=device)
    if rank == 0:
        meta = {"backbone": cfg.backbone, "max_len": cfg.max_len, "config": dataclasses.asdict(cfg),
                "train": result, **word_budgets(data)}
        R.save_reward(out / FINAL, model, tokenizer, meta)


# ------------------------------------------------------------------------------------ the loop
def batch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def pair_scores(model, tokenizer, rows: pd.DataFrame, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(r+, r-) of preference rows in one forward pass over both sides."""
    cvs = rows["cv_text"].tolist() + rows["neg_cv_text"].tolist()
    jds = rows["pos_text"].tolist() + rows["neg_text"].tolist()
    scores = model(**R.encode_pairs(tokenizer, cvs, jds, max_len, device))
    return scores[: len(rows)], scores[len(rows):]


@torch.no_grad()
def valid_accuracy(model, tokenizer, rows: pd.DataFrame, max_len: int, device, batch_size: int = 64) -> float:
    model.eval()
    pos, neg = [], []
    for start in range(0, len(rows), batch_size):
        p, n = pair_scores(model, tokenizer, rows.iloc[start:start + batch_size], max_len, device)
        pos.append(p.float().cpu().numpy())
        neg.append(n.float().cpu().numpy())
    model.train()
    return M.pairwise_accuracy(np.concatenate(pos), np.concatenate(neg)) if pos else float("nan")


def reward_train_loop(cfg: RewardConfig, model, tokenizer, train: pd.DataFrame, valid: pd.DataFrame | None,
                      world_size: int = 1, rank: int = 0, resume_state: dict | None = None,
                      report: Callable[[dict, dict | None], None] | None = None, device=None) -> dict:
    """Pairwise training; runs without Ray at world size 1. Each step takes batch_size rows per
    worker from a permutation fixed by (seed, epoch), so a resumed run sees the batches it would
    have seen. Returns the last logged metrics."""
    device = device or next(model.parameters()).device
    if len(train) == 0:
        raise ValueError("no training pairs: prepare-jobs wrote an empty pairs/train.parquet")
    global_batch = cfg.batch_size * world_size
    steps_per_epoch = max(1, math.ceil(len(train) / global_batch))
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = common.adamw(common.decay_groups(model.parameters(), cfg.weight_decay), cfg.lr, device)
    scheduler = common.warmup_schedule(optimizer, "linear", cfg.warmup_steps, total, warmup_starts_at_zero=False)
    step = 0
    if resume_state is not None:
        inner = model.module if hasattr(model, "module") else model
        inner.load_state_dict(resume_state["model"])
        common.restore_training_state(resume_state, optimizer, scheduler)
        step = resume_state["step"]
    model.train()
    last: dict = {"step": step}  # a rerun of a finished run resumes at the end and trains nothing
    window_loss, window_acc, window_n, started = 0.0, 0.0, 0, time.time()
    while step < total:
        epoch, index = divmod(step, steps_per_epoch)
        order = batch_order(len(train), epoch, cfg.seed)
        chunk = order[index * global_batch:(index + 1) * global_batch][rank::world_size]
        if len(chunk) == 0:  # the last global batch may leave a worker nothing: take from the start
            chunk = order[:cfg.batch_size]
        rows = train.iloc[chunk]
        r_pos, r_neg = pair_scores(model, tokenizer, rows, cfg.max_len, device)
        margin = torch.tensor(rows["margin"].to_numpy(np.float32), device=device) if cfg.use_margin else None
        loss = R.pairwise_loss(r_pos, r_neg, margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        scheduler.step()
        step += 1
        window_loss += float(loss.detach()) * len(rows)
        window_acc += float((r_pos > r_neg).float().sum())
        window_n += len(rows)
        metrics = {"step": step, "epoch": epoch}
        if step % cfg.log_every == 0 or step == total:
            elapsed = time.time() - started
            metrics.update(loss=window_loss / window_n, train_pairwise_acc=window_acc / window_n,
                           lr=scheduler.get_last_lr()[0], pairs_per_s=window_n * world_size / max(elapsed, 1e-9),
                           torch_threads=torch.get_num_threads())
            if rank == 0:
                log.info("step %d/%d loss %.4f acc %.3f lr %.2e %.0f pairs/s", step, total, metrics["loss"],
                         metrics["train_pairwise_acc"], metrics["lr"], metrics["pairs_per_s"])
            window_loss, window_acc, window_n, started = 0.0, 0.0, 0, time.time()
        if valid is not None and len(valid) and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            metrics["valid_pairwise_acc"] = valid_accuracy(model, tokenizer, valid, cfg.max_len, device)
        save = (cfg.save_every and step % cfg.save_every == 0) or step == total
        state = None
        if save:
            inner = model.module if hasattr(model, "module") else model
            state = common.training_state(optimizer.state_dict(), scheduler, step=step,
                                          model={k: v.detach().cpu() for k, v in inner.state_dict().items()})
        if len(metrics) > 2 or state is not None:
            last.update(metrics)
            if report is not None:
                report(metrics, state)
    return last
