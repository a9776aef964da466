"""The offline `tiny` preset: a byte-level BPE trained on the data's own text and a small Llama.

No model hub is reachable here, so the pipeline needs a model it can build from nothing. Byte-level
BPE encodes any string (every byte is in the base alphabet), so titles never hit an unknown token.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # trained first, so they get ids 0, 1, 2


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """A byte-level BPE over `texts`, with <pad>, <bos> (prepended to prompts) and <eos>.

    No normalizer and no prefix space: decoding a title's ids gives the title back byte for byte,
    which the catalog trie relies on. The vocabulary can come out smaller than `vocab_size` when
    the text has fewer merges to offer; use len(tokenizer) for the model.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS)
    # <bos> only with add_special_tokens=True (prompts); responses are encoded without it.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
        clean_up_tokenization_spaces=False,  # keep " ," and " ." as written in titles
    )


def tiny_config(
    vocab_size: int,
    *,
    pad_token_id: int,
    eos_token_id: int,
    bos_token_id: int | None = None,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    max_position_embeddings: int = 1024,
) -> LlamaConfig:
    """A Llama small enough to train on a CPU in minutes (1.6M parameters at the defaults, 4096 tokens)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,  # halves the parameters when the vocabulary dominates
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def tiny_model(config: LlamaConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """Random init from `seed`, without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)


def add_embedding_dropout(model: torch.nn.Module, p: float) -> None:
    """Dropout on the input embeddings while training, as SASRec drops its item embeddings.

    Llama has no such dropout, and on sparse logs (Amazon Toys: 8 interactions a user) a model that
    reads an ID embedding per item is prone to overfit. A forward hook on the embedding module
    only: the tied output layer reads the same weight directly, so logits are untouched, and
    nothing is saved with the weights (evaluation and serving run without it)."""
    if p <= 0:
        return
    model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: torch.nn.functional.dropout(output, p, module.training))
