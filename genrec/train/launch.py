"""`genrec train-sft`: tokenizer and token shards on Ray Data, then the per-worker loop on Ray Train.

    prepared prompts (train/ valid/ catalog.parquet)
      -> tokenizer (tiny: a BPE trained on the catalog's own text; else the base model's)
      -> token shards (Ray Data, completion-only labels)              out_dir/tokens/{train,valid}
      -> TorchTrainer(N workers, DDP or FSDP) running train.sft.train_loop
      -> resumable checkpoints through ray.train.report               out_dir/ray/<run>/checkpoint_*
      -> the best (lowest validation loss) and final models, HF format out_dir/best, out_dir/final

Rerunning with the same out_dir resumes from the last checkpoint (Ray Train V2 restores a run by
its storage path and name); a worker that dies is restarted from it (FailureConfig).

data_dir and out_dir may be object-store URIs (genrec/storage.py): the driver and each worker work
on their node's mirror of both, and push the tokenizer, the token shards, the metrics log and the
best and final models as each is written; Ray Train keeps its checkpoints under <out_dir>/ray there.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.train
import ray.train.torch
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from genrec import storage
from genrec.config import SFTConfig

from genrec.config_loader import from_dict
from genrec.data.templates import get_template
from genrec.data.tokenize import tokenize_split
from genrec.faults import FAILED_ONCE, FAULTS_FILE
from genrec.models import loading
from genrec.models.loading import save_checkpoint
from genrec.train import common
from genrec.train.batching import TokenRows
from genrec.train.rank_validation import KEY as RANK_KEY
from genrec.train.rank_validation import RankValidation
from genrec.train.sft import STATE_FILE, train_loop

log = logging.getLogger("genrec.train")

TEMPLATE = "genrec"
METRICS_FILE = "metrics.jsonl"
FINAL, BEST = "final", "best"
SOURCE_FILE = "genrec_source.json"  # what the tokenizer and token shards were built from
ITEM_VECTORS = "item_text_vectors.parquet"  # item_init's title vectors, copied into a remote out_dir


# ------------------------------------------------------------------------------------ the driver
def train_sft(cfg: SFTConfig, callbacks: list | None = None, keep_checkpoints: int = 2) -> dict:
    """Run the SFT stage; returns the final metrics (also in out_dir/final/genrec.json).

    `callbacks` go on the Ray Train RunConfig (Tune's TuneReportCallback: genrec/tune.py)."""
    cfg, out_dir = common.start_run(cfg)
    out, data = out_dir.local, storage.fetch(cfg.data_dir)
    out_dir.pull("tokenizer", "tokens")  # a resumed run's
    tokenizer_dir = build_tokenizer(cfg, out, data)
    token_dirs = tokenize_splits(cfg, out, tokenizer_dir, data)
    out_dir.push("tokenizer", "tokens")
    item_vectors = None
    if cfg.item_init != "random":
        from genrec.models.item_init import title_vectors

        item_vectors = title_vectors(data, cfg.item_init)
        if out_dir.remote:  # the workers' nodes cannot read this node's data mirror
            shutil.copy2(item_vectors, out / ITEM_VECTORS)
            out_dir.push(ITEM_VECTORS)
            item_vectors = ITEM_VECTORS

    trainer = common.torch_trainer(
        sft_worker,
        {"cfg": dataclasses.asdict(cfg), "out": out_dir.location, "tokenizer_dir": "tokenizer",
         "tokens": {k: str(v.relative_to(out)) for k, v in token_dirs.items()},
         "item_vectors": str(item_vectors) if item_vectors else None},
        cfg.ray_train, cfg.run_name or Path(out_dir.location).name, storage.join(out_dir.location, "ray"), callbacks,
        keep_checkpoints,
    )
    result = trainer.fit()
    out_dir.pull(FINAL)
    final = json.loads((out / FINAL / "genrec.json").read_text())["metrics"]
    log.info("sft done: %s (checkpoint %s)", {k: final.get(k) for k in ("step", "loss", "valid_loss")}, result.checkpoint)
    return final


def build_tokenizer(cfg: SFTConfig, out: Path, data: Path | None = None) -> Path:
    """The tokenizer every worker and the tokenization step load: saved once in out_dir/tokenizer.
    `data` is this node's copy of cfg.data_dir (default: cfg.data_dir, a local folder)."""
    path, data = out / "tokenizer", data or Path(cfg.data_dir)
    data_dir = cfg.data_dir if storage.is_uri(cfg.data_dir) else str(Path(cfg.data_dir).resolve())
    source = {"model": cfg.model, "vocab_size": cfg.tiny.vocab_size, "max_len": cfg.max_len,
              "data_dir": data_dir, "format": cfg.format, "item_tokens": cfg.item_tokens}
    if (path / SOURCE_FILE).exists():
        built = {"item_tokens": False, **json.loads((path / SOURCE_FILE).read_text())}  # older runs lack the key
        if built != source:
            raise ValueError(f"{out} holds a tokenizer and token shards built from {built}, not {source}; "
                             "use a new out_dir (a resumed run must keep the token ids it was trained with)")
        return path
    shutil.rmtree(out / "tokens", ignore_errors=True)  # shards of an interrupted first run
    if cfg.model == "tiny":
        from genrec.models.tiny import train_tokenizer

        tokenizer = train_tokenizer(tokenizer_texts(data), vocab_size=cfg.tiny.vocab_size)
    else:
        from genrec.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    if cfg.item_tokens:
        from genrec.data.item_tokens import add_item_tokens

        catalog = pq.read_table(data / "catalog.parquet", columns=["item_id"])
        log.info("item_tokens: %d added", add_item_tokens(tokenizer, catalog.column("item_id").to_pylist()))
    tokenizer.save_pretrained(path)
    (path / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return path


def tokenizer_texts(data_dir: Path):
    """The text a tiny model reads: every catalog title, and the template with each instruction."""
    template = get_template(data_template(data_dir))
    yield from pq.read_table(data_dir / "catalog.parquet", columns=["title"]).column("title").to_pylist()
    for instructions in template.instructions.values():
        for instruction in instructions:
            yield template.render_prompt(instruction, "")
            yield template.render_sequence_prefix(instruction)


def data_template(data_dir: Path) -> str:
    """The template the prepared rows were written for: `template` in data_dir/stats.json when set
    (`genrec prepare-jobs` writes cv_to_jd there), else GenRec's."""
    stats = Path(data_dir) / "stats.json"
    return json.loads(stats.read_text()).get("template", TEMPLATE) if stats.exists() else TEMPLATE


def tokenize_splits(cfg: SFTConfig, out: Path, tokenizer_dir: Path, data: Path | None = None) -> dict[str, Path]:
    dirs, data = {}, data or Path(cfg.data_dir)
    for split in ("train", "valid"):
        if not (data / split).exists():
            if split == "train":
                raise FileNotFoundError(f"data_dir: {data / split} is missing; run `genrec prepare` first")
            continue
        target = out / "tokens" / split
        if not (target / "_tokenize.json").exists():
            # Validation scores the next item alone, in either format: history titles are training data.
            stats = tokenize_split(data / split, target, str(tokenizer_dir), cfg.max_len, data_template(data),
                                   data / "catalog.parquet", cfg.format, history_loss=split == "train")
            log.info("tokenized %s: %s", split, stats)
        dirs[split] = target
    return dirs


# ------------------------------------------------------------------------------------ the worker
def sft_worker(ctx: dict) -> None:
    """Ray Train worker: build the model, load the shards, run train_loop (or, with trainer=trl, TRL's
    SFTTrainer: genrec/train/trl_backend.py), turn its reports into ray.train.report with HF-format
    checkpoints."""
    common.worker_logging()
    cfg = from_dict(SFTConfig, ctx["cfg"])
    out_dir = storage.Mirror(ctx["out"])
    out_dir.pull(ctx["tokenizer_dir"], "tokens", BEST, FINAL, METRICS_FILE, FAULTS_FILE, FAILED_ONCE)
    if ctx.get("item_vectors") and not Path(ctx["item_vectors"]).is_absolute():
        out_dir.pull(ctx["item_vectors"])
    out = out_dir.local
    tokenizer_dir = str(out / ctx["tokenizer_dir"])
    data = storage.fetch(cfg.data_dir) if cfg.valid_rank_users else None  # ranked validation reads the catalog
    context = ray.train.get_context()
    world_size, rank = context.get_world_size(), context.get_world_rank()
    device = ray.train.torch.get_device()

    from genrec.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(cfg.seed)  # LoRA adapters are initialised from the global generator
    model = build_model(cfg, tokenizer)
    if ctx.get("item_vectors"):  # a resumed run then loads its trained rows over these
        from genrec.models.item_init import init_item_embeddings

        vectors = out / ctx["item_vectors"]  # an absolute path stays as it is
        log.info("item_init: %d item token rows from %s", init_item_embeddings(model, tokenizer, vectors), vectors)
    train_rows = load_rows(out / ctx["tokens"]["train"])
    valid_rows = load_rows(out / ctx["tokens"]["valid"], cfg.valid_rows) if "valid" in ctx["tokens"] else None
    if cfg.trainer == "trl":  # TRL's Trainer wraps the model itself
        from genrec.train.trl_backend import train_with_trl

        train_with_trl(cfg, model.to(device), tokenizer, train_rows, valid_rows, out_dir, rank)
        return
    model = wrap_model(model.to(device), cfg, world_size)

    resume, checkpoint_path = common.reported_state(STATE_FILE)
    if resume is not None and rank == 0:
        log.info("rank 0 on node %s: resuming from %s at step %d", ray.get_runtime_context().get_node_id(),
                 checkpoint_path, resume["position"]["step"])

    ranking = None
    if cfg.valid_rank_users:
        ranking = RankValidation(data, data_template(data), tokenizer, cfg.format, cfg.max_len, cfg.valid_rank_users)
    reporter = Reporter(cfg, model, tokenizer, out_dir, rank, ranking)
    result = train_loop(cfg, model, train_rows, valid_rows, world_size=world_size, rank=rank,
                        resume_state=resume, report=reporter)
    final = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    if "step" not in final and (out / FINAL / "genrec.json").exists():
        return  # resumed at the last step of a finished run: nothing trained, final/ stands
    reporter.export(out / FINAL, dict(final, skipped=result["skipped"]))


def build_model(cfg: SFTConfig, tokenizer) -> torch.nn.Module:
    """fp32 master weights everywhere: the loop autocasts to bf16 on GPU, where bf16 weights would
    lose AdamW's small updates."""
    return loading.build_model(cfg.model, tokenizer, dtype=torch.float32, tiny_size=cfg.tiny, seed=cfg.seed,
                               max_positions=max(1024, cfg.max_len), lora=cfg.lora if cfg.lora.enabled else None)


def wrap_model(model: torch.nn.Module, cfg: SFTConfig, world_size: int) -> torch.nn.Module:
    """DDP: a replica per worker. FSDP (FSDP2's fully_shard): each decoder layer sharded, then the rest,
    so a model larger than one GPU trains across several."""
    if world_size == 1:
        return model
    if cfg.strategy == "ddp":
        return ray.train.torch.prepare_model(model, move_to_device=False)
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    fully_shard(model)
    return model


def load_rows(path: str | Path, limit: int = 0) -> TokenRows:
    """Token rows in a fixed order, (user_id, position), whatever order Ray Data wrote the files in,
    so a seed gives the same batches and the same validation subsample on every run."""
    table = pads.dataset(str(path), format="parquet").to_table(columns=["input_ids", "labels", "user_id", "position"])
    table = table.sort_by([("user_id", "ascending"), ("position", "ascending")])
    if limit and table.num_rows > limit:
        table = table.slice(0, limit)
    return TokenRows.from_table(table)


class Reporter:
    """train_loop's `report` callback: metrics to Ray Train, checkpoints as HF directories plus the
    resumable state, and the best model kept in out_dir/best: the lowest validation loss, or with
    valid_rank_users the highest validation HR@10."""

    def __init__(self, cfg: SFTConfig, model, tokenizer, out_dir: storage.Mirror, rank: int, rank_validation=None):
        self.cfg, self.model, self.tokenizer, self.rank = cfg, model, tokenizer, rank
        self.out_dir, self.out = out_dir, out_dir.local
        self.rank_validation = rank_validation
        self.best_key, self.higher_is_better = (RANK_KEY, True) if rank_validation else ("valid_loss", False)
        self.best = _recorded_best(self.out / BEST, self.best_key, self.higher_is_better)

    def __call__(self, metrics: dict, state: dict | None) -> None:
        common.crash_if_planned(self.out_dir, metrics.get("step", 0))  # tests only (genrec/faults.py)
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if "valid_loss" in metrics and self.rank_validation is not None:
            model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
            metrics.update(self.rank_validation(model))
        if self.rank == 0:  # the plain log beside Ray's: one JSON line per report (repeats after a resume)
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            self.out_dir.push(METRICS_FILE)
        # valid_loss is all-reduced and every rank ranks the same users with the same weights, so
        # every rank takes this branch together (FSDP gathers in it).
        if self.best_key in metrics and self._improves(metrics[self.best_key]):
            self.best = metrics[self.best_key]
            self.export(self.out / BEST, metrics)
        # ray.train.report is a barrier across workers (about 2 s a call measured here on CPU), so
        # training-loss lines go to the plain log only; validation results and checkpoints to Ray.
        if state is not None or "valid_loss" in metrics:
            common.report_to_ray(metrics, state, STATE_FILE, self.rank, {"metrics.json": json.dumps(metrics)})

    def export(self, path: Path, metrics: dict) -> None:
        """An HF-format model (or adapter) with genrec.json. Called on every rank: under FSDP the
        full weights are gathered (a collective) before rank 0 writes them."""
        weights = None
        if self.cfg.strategy == "fsdp" and torch.distributed.is_initialized():
            weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
            save_checkpoint(path, model, self.tokenizer, "sft", dataclasses.asdict(self.cfg), metrics, state_dict=weights)
            self.out_dir.push(path.name)

    def _improves(self, value: float) -> bool:
        return value > self.best if self.higher_is_better else value < self.best


def _recorded_best(path: Path, key: str, higher_is_better: bool) -> float:
    """The `key` metric of the model in `path` (a resumed run's best so far), else the worst value."""
    worst = -float("inf") if higher_is_better else float("inf")
    meta = path / "genrec.json"
    if meta.exists():
        return json.loads(meta.read_text())["metrics"].get(key, worst)
    return worst
