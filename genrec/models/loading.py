"""Models and tokenizers by name: the offline `tiny` preset, or any HF id / local path; LoRA via peft;
HF-format checkpoints with a small `genrec.json` beside them.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

import genrec
from genrec.config import Lora, TinyModel
from genrec.models import pretrained, tiny
from genrec.models.tokenizer import ensure_pad_token, load_tokenizer

META_FILE = "genrec.json"
TINY = "tiny"
BASE_DIR = "base"  # where an adapter checkpoint keeps a base that has no path of its own


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware runs it fast (CUDA); fp32 on CPUs, where bf16 matmuls are slow or emulated."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    texts: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    lora: Lora | None = None,
    tiny_size: TinyModel | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """`tiny` (a tokenizer trained on `texts`, a Llama of `tiny_size` seeded with `seed`) or an HF id /
    local path.

    dtype defaults to bf16 on CUDA and fp32 on CPU; device to CUDA when present. With `lora`, the
    model comes back as a peft model whose only trainable parameters are the adapter's.
    """
    device = torch.device(device) if device is not None else default_device()
    if name_or_path == TINY:
        if texts is None:
            raise ValueError("model 'tiny' trains its tokenizer on the data: pass texts=")
        tokenizer = tiny.train_tokenizer(texts, (tiny_size or TinyModel()).vocab_size)
    else:
        tokenizer = load_tokenizer(name_or_path)
    model = build_model(name_or_path, tokenizer, dtype=dtype or default_dtype(device),
                        tiny_size=tiny_size, seed=seed, lora=lora)
    return model.to(device), tokenizer


def build_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype = torch.float32,
    tiny_size: TinyModel | None = None,
    seed: int = 0,
    max_positions: int = 1024,
    lora: Lora | None = None,
) -> torch.nn.Module:
    """The model for a tokenizer: a random `tiny` Llama (seeded) sized to its vocabulary, or the
    pretrained weights of an HF id / local path; with `lora`, wrapped so only adapters train."""
    if name_or_path == TINY:
        size = tiny_size or TinyModel()
        config = tiny.tiny_config(
            len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            hidden_size=size.hidden,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            max_position_embeddings=max_positions,
        )
        config.attention_dropout = size.dropout
        model = tiny.tiny_model(config, seed=seed, dtype=dtype)
        tiny.add_embedding_dropout(model, size.embedding_dropout)
    else:
        model = AutoModelForCausalLM.from_pretrained(pretrained.resolve(name_or_path), dtype=dtype,
                                                     attn_implementation="sdpa")
        ensure_pad_token(tokenizer, model)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # added tokens (item_tokens)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if lora is not None:
        model = get_peft_model(model, lora_config(lora))
    return model


def lora_config(settings: Lora) -> LoraConfig:
    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # peft's shorthand "all-linear" (every linear layer but the LM head) is a string, not a name list
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    stage: str,
    config: dict,
    metrics: dict,
    state_dict: dict | None = None,
) -> Path:
    """An HF-format directory (full model or peft adapter, plus the tokenizer) and genrec.json.

    `state_dict` gives the full weights when the module's own are sharded (FSDP).

    An adapter records its base so load_checkpoint can rebuild it. A base with no path of its own
    (a `tiny` model built in memory) is saved under `base/`, or the adapter could never be reloaded.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"stage": stage, "config": config, "metrics": metrics, "genrec_version": genrec.__version__}
    if isinstance(model, PeftModel):
        base = model.peft_config[model.active_adapter].base_model_name_or_path
        preset = pretrained.preset_of(base) if base else None
        if preset:  # by name: each machine resolves it to its own cache
            base = preset
        elif base and Path(base).is_dir():
            base = str(Path(base).resolve())  # the checkpoint may be read from another working directory
        elif not base:
            # unload() strips the LoRA layers in place, so work on a copy; the base is small here.
            copy.deepcopy(model).unload().save_pretrained(directory / BASE_DIR)
            base = BASE_DIR
        meta["base_model"] = base
    model.save_pretrained(directory, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(directory)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return directory


def load_checkpoint(
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    trainable: bool = False,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, dict]:
    """(model, tokenizer, genrec.json contents) from save_checkpoint's directory.

    Adapters load through peft onto their base (a path relative to the checkpoint, a local path or
    an HF id); `trainable` keeps the adapter weights trainable for a later stage (PPO after SFT).
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} is not a genrec checkpoint: {META_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer(str(directory))
    base = meta.get("base_model")
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    else:
        base_path = directory / base if (directory / base).is_dir() else pretrained.resolve(base)
        base_model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, attn_implementation="sdpa")
        model = PeftModel.from_pretrained(base_model, directory, is_trainable=trainable)
    ensure_pad_token(tokenizer, model)
    return model.to(device), tokenizer, meta
