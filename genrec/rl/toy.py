"""A toy PPO task with a known optimum, for tests and benchmarks of the loop itself.

A word-level vocabulary of a few words, a randomly initialised tiny Llama as the "SFT" policy,
random word prompts, and reward = occurrences of one target word (reward=count): the optimum is a
response made of max_new_tokens target words and no EOS, so progress is plain to see.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from genrec.config import TinyModel
from genrec.models.loading import build_model, save_checkpoint

WORDS = ("yes", "no", "red", "blue", "cat", "dog", "sun", "moon")
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def word_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate((*SPECIALS, *words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def make_toy_task(root: str | Path, num_prompts: int = 64, hidden: int = 32, layers: int = 2, seed: int = 0) -> dict:
    """Write root/policy (an HF checkpoint) and root/prompts.parquet; return their paths."""
    root = Path(root)
    tokenizer = word_tokenizer()
    model = build_model("tiny", tokenizer, tiny_size=TinyModel(hidden=hidden, layers=layers, heads=2), seed=seed,
                        max_positions=128)
    policy = save_checkpoint(root / "policy", model, tokenizer, "toy", {"task": "count"}, {})
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS[2:], size=int(rng.integers(2, 6)))) for _ in range(num_prompts)]
    pq.write_table(pa.table({"text": texts}), root / "prompts.parquet")
    return {"policy_dir": str(policy), "prompts_path": str(root / "prompts.parquet")}
