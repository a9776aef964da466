"""The tiny preset, pretrained-style loading by path, LoRA, and checkpoint round trips."""
import dataclasses
import json

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerFast

import genrec
from genrec.config import TinyModel, Lora
from genrec.data.templates import GENREC
from genrec.data.tokenize import tokenize_rows
from genrec.models.loading import load_checkpoint, load_model_and_tokenizer, save_checkpoint
from genrec.models.tokenizer import load_tokenizer

TITLES = ["Toy Story (1995)", "Heat (1995)", "Amélie (2001)", "Usual Suspects, The (1995)", "Se7en"]
INSTRUCTION = GENREC.instructions["movies"][0]
ROWS = [
    {"instruction": INSTRUCTION, "input": ", ".join(TITLES[:n]), "output": TITLES[n], "user_id": f"u{n}", "position": n}
    for n in range(1, len(TITLES))
]
TEXTS = [GENREC.render_prompt(r["instruction"], r["input"]) for r in ROWS] + TITLES
SMALL = TinyModel(vocab_size=400, hidden=32, layers=2, heads=4)
SEED = 3


def tiny(lora=None):
    return load_model_and_tokenizer("tiny", texts=TEXTS, device="cpu", lora=lora, tiny_size=SMALL, seed=SEED)


def batch(tokenizer):
    """Right-padded input_ids, attention mask and labels of ROWS."""
    encoded = tokenize_rows(tokenizer, GENREC, ROWS, max_len=256)
    width = max(len(e["input_ids"]) for e in encoded)

    def padded(key, value):
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in encoded])

    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in encoded])
    return padded("input_ids", tokenizer.pad_token_id), mask, padded("labels", -100)


def logits(model, tokenizer):
    ids, mask, _ = batch(tokenizer)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_tiny_tokenizer_has_explicit_special_tokens_and_survives_a_save(tmp_path):
    _, tokenizer = tiny()
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and None not in ids and len(ids) == 3
    assert tokenizer.padding_side == "right"
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded(TEXTS).input_ids == tokenizer(TEXTS).input_ids
    assert (reloaded.pad_token_id, reloaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_tiny_model_is_seeded_trains_and_generates():
    model, tokenizer = tiny()
    again, _ = tiny()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.config.tie_word_embeddings and model.config.pad_token_id == tokenizer.pad_token_id

    ids, mask, labels = batch(tokenizer)
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())

    model.eval()
    prompt = tokenizer([GENREC.render_prompt(INSTRUCTION, TITLES[0])], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt.input_ids.shape[1]


def test_full_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model, tokenizer = tiny()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, "sft", {"lr": 1e-3}, {"loss": 1.5})
    loaded, loaded_tok, meta = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert torch.equal(logits(model, tokenizer), logits(loaded, loaded_tok))
    assert meta == {"stage": "sft", "config": {"lr": 1e-3}, "metrics": {"loss": 1.5},
                    "genrec_version": genrec.__version__}


def test_embedding_dropout_acts_in_training_only_and_leaves_the_saved_model_alone(tmp_path):
    plain, tokenizer = tiny()
    dropped, _ = load_model_and_tokenizer("tiny", texts=TEXTS, device="cpu",
                                          tiny_size=dataclasses.replace(SMALL, embedding_dropout=0.5), seed=SEED)
    ids, mask, _ = batch(tokenizer)
    dropped.train()
    with torch.no_grad():
        first, second = (dropped(input_ids=ids, attention_mask=mask).logits for _ in range(2))
    assert not torch.allclose(first, second)  # a fresh mask each pass
    plain.train()
    with torch.no_grad():
        assert torch.equal(*(plain(input_ids=ids, attention_mask=mask).logits for _ in range(2)))
    assert torch.equal(logits(dropped, tokenizer), logits(plain, tokenizer))  # eval: the same seeded model
    save_checkpoint(tmp_path / "ckpt", dropped, tokenizer, "sft", {}, {})
    loaded, loaded_tok, _ = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert torch.equal(logits(loaded, loaded_tok), logits(plain, tokenizer))


@pytest.mark.parametrize("base", ["saved", "in_memory"])
def test_lora_adapter_round_trip_through_peft_on_its_base(tmp_path, base):
    lora = Lora(r=4, alpha=8)
    if base == "saved":  # the usual case: a pretrained base loaded by path (here, a saved tiny model)
        base_model, base_tok = tiny()
        base_model.save_pretrained(tmp_path / "base")
        base_tok.save_pretrained(tmp_path / "base")
        model, tokenizer = load_model_and_tokenizer(str(tmp_path / "base"), device="cpu", lora=lora)
    else:
        model, tokenizer = tiny(lora)
    assert isinstance(model, PeftModel)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0); move it so the adapter shows in the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)

    save_checkpoint(tmp_path / "ckpt", model, tokenizer, "sft", {}, {})
    loaded, loaded_tok, meta = load_checkpoint(tmp_path / "ckpt", device="cpu")

    assert isinstance(loaded, PeftModel)
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()  # the adapter only
    expected_base = str((tmp_path / "base").resolve()) if base == "saved" else "base"
    assert meta["base_model"] == expected_base
    assert json.loads((tmp_path / "ckpt" / "genrec.json").read_text()) == meta
    assert torch.equal(logits(model, tokenizer), logits(loaded, loaded_tok))
    with loaded.disable_adapter():
        assert not torch.equal(logits(loaded, loaded_tok), logits(model, tokenizer))


def test_a_tokenizer_without_pad_gets_eos_as_pad(tmp_path):
    model, tokenizer = tiny()
    tokenizer.pad_token = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(str(tmp_path), device="cpu")
    assert loaded_tok.pad_token_id == loaded_tok.eos_token_id == tokenizer.eos_token_id
    assert loaded.config.pad_token_id == loaded.generation_config.pad_token_id == tokenizer.eos_token_id
    assert loaded.config._attn_implementation == "sdpa" and loaded.dtype == torch.float32
