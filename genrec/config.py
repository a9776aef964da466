"""Stage configs: one dataclass per stage, loaded from YAML, overridden by `key=value` arguments.

Every field carries its meaning in `metadata["help"]`, so `genrec <verb> --help` can list fields,
defaults and meanings from the dataclass itself. Nested dataclasses are addressed with dotted keys
(`source.format=movielens`). Unknown keys and values of the wrong type are errors naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass; the message names the key."""


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def sub(cls: type, help: str) -> Any:
    return dataclasses.field(default_factory=cls, metadata={"help": help})


# ----------------------------------------------------------------------------------------- stages
@dataclasses.dataclass
class SourceConfig:
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
    chunk_mb: int = field(64, "bytes of text per read task, in MiB")
    strict: bool = field(False, "stop at the first malformed row, quoting it, instead of counting it")

    def __post_init__(self) -> None:
        if self.chunk_mb < 1:
            raise ConfigError(f"source.chunk_mb: must be at least 1, got {self.chunk_mb}")


@dataclasses.dataclass
class SynthJobsConfig:
    """A synthetic job market (CVs, JDs, recruiter feedback) with a hidden true fit (GIRL data)."""

    out_dir: str = field("runs/synth_jobs", "output folder: cvs, jds, interactions, truth (.parquet), synth.json")
    num_cvs: int = field(2000, "CVs (job seekers)")
    num_jds: int = field(1500, "job descriptions")
    per_cv: int = field(10, "JDs shown to each CV in the recruiter feedback (half of the CV's own role)")
    seed: int = field(0, "random seed: the same seed gives the same files")


@dataclasses.dataclass
class PrepareConfig:
    """Interaction log -> per-user sequences -> leave-one-out split -> GenRec prompt rows."""

    source: SourceConfig = sub(SourceConfig, "input data")
    out_dir: str = field("runs/prepared", "output folder: train/ valid/ test/ catalog.parquet stats.json")
    kcore: int = field(0, "keep only users and items with at least k interactions (0 = off)")
    history_len: int = field(20, "history truncated to the last H items")
    samples_per_user: Union[int, Literal["all"]] = field(
        "all", "training samples per user: all prefixes of the training part, or the last N"
    )
    domain: Literal["movies", "products", "generic"] = field("generic", "instruction set of the prompts")
    seed: int = field(0, "seed for choosing each row's instruction paraphrase")
    num_partitions: int = field(0, "hash partitions for grouping by user (0 = from the data size)")
    object_store_gb: float = field(0.0, "object store size when genrec starts Ray itself (0 = Ray's default)")

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise ConfigError(f"history_len: must be at least 1, got {self.history_len}")
        if self.samples_per_user != "all" and self.samples_per_user < 1:
            raise ConfigError(f"samples_per_user: must be 'all' or at least 1, got {self.samples_per_user}")
        if self.kcore < 0:
            raise ConfigError(f"kcore: must be 0 (off) or positive, got {self.kcore}")


@dataclasses.dataclass
class SynthInteractionsConfig:
    """A synthetic catalog and user logs with learnable sequential structure (the embedded default)."""

    out_dir: str = field("runs/synth", "output folder: interactions.parquet, catalog.parquet")
    num_users: int = field(2000, "users")
    num_items: int = field(3000, "catalog items")
    num_genres: int = field(12, "genres; each user prefers a few")
    min_len: int = field(5, "shortest user log")
    max_len: int = field(40, "longest user log")
    seed: int = field(0, "random seed: the same seed gives the same files")
    format: Literal["parquet", "csv"] = field("parquet", "file format of the interactions")




# ---------------------------------------------------------------------------------------- loading
def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build `cls` from an optional YAML file, then apply `key=value` overrides (dotted for nesting)."""
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        data = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), Override(raw))
    return from_dict(cls, data)


class Override(str):
    """A command-line value, kept as typed: a str field takes it as is (`run_name=007` stays "007"),
    any other field reads it as YAML (`lr=1e-3`, `strict=true`, `fields=[a, b]`)."""

    def parsed(self) -> Any:
        return yaml.safe_load(self) if self != "" else ""


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = value


def from_dict(cls: type, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix + unknown[0]!r} for {cls.__name__}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is looser than the type."""
    if isinstance(value, Override):
        if tp is str:
            return str(value)
        value = value.parsed()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field, nested sections flattened with dotted keys."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((prefix + f.name, _type_name(tp), json.dumps(default), f.metadata.get("help", "")))
    return rows


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Every run writes its config next to its outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# ------------------------------------------------------------------------------------------- SFT
@dataclasses.dataclass
class SFTConfig:
    """Supervised fine-tuning on token shards: next-token loss on response tokens only."""

    data_dir: str = field("runs/prepared", "prepared prompts from `genrec prepare`: train/ valid/ catalog.parquet")
    out_dir: str = field("runs/sft", "output folder: tokenizer, token shards, Ray checkpoints, best/ and final/ HF models; "
                         "rerunning with the same out_dir resumes from its last checkpoint")
    run_name: str = field("", "Ray Train run name (default: the out_dir's folder name)")
    valid_rows: int = field(2000, "validation rows used for the validation loss (the first N; 0 = all)")
    model: str = field("tiny", "'tiny' (offline Llama preset trained on the data's own text) or an HF model id / local path")
    vocab_size: int = field(4096, "tiny: BPE vocabulary size (may come out smaller on little text)")
    tiny_hidden: int = field(128, "tiny: hidden size")
    tiny_layers: int = field(4, "tiny: decoder layers")
    tiny_heads: int = field(4, "tiny: attention heads")
    lora: bool = field(False, "train LoRA adapters instead of all weights (meant for pretrained bases)")
    lora_r: int = field(16, "LoRA rank")
    lora_alpha: int = field(32, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = field(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] = field(["all-linear"], "module names that get adapters; all-linear = every linear layer but the LM head")
    max_len: int = field(512, "longest sequence in tokens and the width of a packed row; tokenization drops a "
                         "prompt's oldest history titles to fit (counted); a row that still does not fit is an error")
    pack_len: int = field(
        0,
        "width of a packed row (0 = max_len). Rows of max_len fill to ~93% when lengths spread over "
        "[max_len/4, max_len] and ~99% when most are under max_len/2; wider rows fill better but cost "
        "attention over the whole row under sdpa (not under flash/flex attention)",
    )
    micro_batch_tokens: int = field(
        8192,
        "tokens one forward/backward computes, padding included: packed takes micro_batch_tokens // "
        "row width rows, padded micro_batch_tokens // max_len, length_grouped rows x longest row up to it",
    )
    grad_accum: int = field(1, "micro-batches per optimizer step on each worker")
    lr: float = field(3e-4, "peak learning rate")
    weight_decay: float = field(0.01, "AdamW weight decay on matrices (not on biases or norms)")
    warmup_steps: int = field(20, "optimizer steps of linear warmup from 0 to lr")
    schedule: Literal["cosine", "linear"] = field("cosine", "decay to 0 after warmup")
    max_steps: int = field(0, "optimizer steps to run (0 = `epochs` full epochs)")
    epochs: int = field(1, "passes over the training set when max_steps is 0")
    clip_grad: float = field(1.0, "clip the global gradient norm to this (0 = off)")
    batching: Literal["packed", "length_grouped", "padded"] = field(
        "packed",
        "packed: sequences concatenated into rows of max_len, attention kept inside each sequence; "
        "length_grouped: similar lengths padded together; padded: shuffled order padded to the longest",
    )
    grad_checkpointing: bool = field(False, "recompute activations in backward: less memory, ~30% more compute")
    compile: bool = field(False, "torch.compile each decoder layer")
    seed: int = field(0, "seed for data order and dropout")
    log_every: int = field(10, "optimizer steps between log lines (loss, lr, tokens/s, real-token share, ETA)")
    eval_every: int = field(200, "optimizer steps between validation passes (0 = only at the end)")
    save_every: int = field(500, "optimizer steps between resumable checkpoints (0 = only at the end)")
    num_workers: int = field(1, "Ray Train workers (one process per GPU or CPU slot)")
    strategy: Literal["ddp", "fsdp"] = field("ddp", "ddp: a full replica per worker; fsdp: parameters and optimizer state sharded")
    use_gpu: bool = field(False, "one GPU per worker, bf16 autocast")
    max_failures: int = field(2, "worker failures Ray Train recovers from (restarting from the last checkpoint)")
    fail_at_step: int = field(0, "testing: a worker exits once at this step, to check restarts (0 = off)")

    def __post_init__(self) -> None:
        if self.max_len < 2:
            raise ConfigError(f"max_len: must be at least 2, got {self.max_len}")
        if self.pack_len and self.pack_len < self.max_len:
            raise ConfigError(f"pack_len: must be 0 or at least max_len={self.max_len}, got {self.pack_len}")
        if self.micro_batch_tokens < self.row_len:
            raise ConfigError(f"micro_batch_tokens: must hold one row of {self.row_len} tokens, got {self.micro_batch_tokens}")
        for name in ("grad_accum", "epochs", "num_workers", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be 0 or positive, got {getattr(self, name)}")

    @property
    def row_len(self) -> int:
        """Width of one row of a micro-batch: packed rows are pack_len wide, padded ones at most max_len."""
        return (self.pack_len or self.max_len) if self.batching == "packed" else self.max_len


@dataclasses.dataclass
class EvaluateConfig:
    """Full-catalog ranking on a prepared split: a generative checkpoint or a baseline."""

    data_dir: str = field("runs/prepared", "prepared folder from `genrec prepare` (its split and catalog.parquet)")
    model: str = field("checkpoint", "checkpoint (the one in checkpoint_dir), pop (most popular) or sasrec")
    checkpoint_dir: str = field("runs/sft/final", "HF-format checkpoint from `genrec train-sft` (model=checkpoint)")
    out_dir: str = field("runs/eval", "output folder: per_user.parquet, report.json, report.md, config.yaml")
    split: Literal["test", "valid"] = field("test", "which target to rank")
    ks: list[int] = field([1, 5, 10, 20], "cut-offs for HR@K and NDCG@K")
    top_k: int = field(20, "items returned per user (at least the largest k)")
    num_beams: int = field(20, "beams per user in constrained beam search (at least top_k)")
    decoding: Literal["constrained", "unconstrained"] = field(
        "constrained", "constrained: beams follow the catalog trie; unconstrained: plain beam search, titles "
        "matched exactly (GenRec's scoring), with the hallucination rate")
    length_penalty: float = field(0.0, "0: rank by summed log-probability; a > 0 divides by length ** a")
    max_len: int = field(512, "prompt + longest title in tokens; oldest history titles are dropped to fit")
    max_users: int = field(0, "rank only the first N users by id (0 = all): a fast check")
    batch_size: int = field(16, "users per beam-search batch")
    num_actors: int = field(1, "Ray Data actors, each with the model loaded once (one GPU each where present)")
    exclude_history: bool = field(False, "baselines: drop each user's history items from the ranking")
    sasrec_epochs: int = field(200, "sasrec: the most epochs (early stopping on validation NDCG@10)")
    seed: int = field(0, "seed for the baselines' training")

    def __post_init__(self) -> None:
        if self.model not in ("checkpoint", "pop", "sasrec"):
            raise ConfigError(f"model: {self.model!r} is not one of ['checkpoint', 'pop', 'sasrec']")
        if self.num_beams < self.top_k:
            raise ConfigError(f"num_beams: must be at least top_k={self.top_k}, got {self.num_beams}")
        if not self.ks or min(self.ks) < 1 or max(self.ks) > self.top_k:
            raise ConfigError(f"ks: each must be in 1..top_k={self.top_k}, got {self.ks}")
