"""Loading tokenizers the same way in every stage; kept apart from model loading so that
tokenization workers need neither peft nor model code.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase

if TYPE_CHECKING:  # the model classes pull in torch, which a tokenization worker does not need
    from transformers import PreTrainedModel

log = logging.getLogger("genrec.models")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer every stage uses (tokenization, training, the trie, serving), so they agree."""
    from genrec.models.pretrained import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(name_or_path))
    ensure_pad_token(tokenizer)
    # Training pads on the right; batched generation switches to left padding where it needs to.
    tokenizer.padding_side = "right"
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Many pretrained causal LMs (Llama, GPT-2) ship without a pad token: reuse eos.

    Safe because labels are built explicitly (genrec.data.tokenize) rather than by masking pad ids,
    so a real eos is never mistaken for padding; the model's configs are told the same id.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        log.info("tokenizer %s has no pad token; using eos %r", tokenizer.name_or_path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
