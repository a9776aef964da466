"""item_tokens models: each item written `<item:ID>` title eos (format=item_ids: its token alone), ranked
by one softmax over the item tokens.

Rows and prompts on a real prepared synthetic set; the one-pass ranking against renormalised
constrained beam search over the same items; `genrec train-sft item_tokens=true` on real Ray Train
workers, then `genrec evaluate` and the recommender behind the HTTP API on its checkpoint.
"""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import synth_and_prepare
from genrec.config import EvaluateConfig, Lora, SFTConfig, TinyModel
from genrec.config_loader import ConfigError
from genrec.data.item_tokens import add_item_tokens, catalog_token_ids, item_token, item_token_ids
from genrec.data.templates import GENREC
from genrec.data.tokenize import IGNORE_INDEX, batch_response_ids, prompt_ids, tokenize_sequence_rows
from genrec.models.loading import load_model_and_tokenizer


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("items")
    synth_and_prepare(root, num_users=300, num_items=80, history_len=12, samples_per_user=1)
    catalog = pq.read_table(root / "prepared" / "catalog.parquet")
    return {"root": root, "ids": catalog.column("item_id").to_pylist(), "titles": catalog.column("title").to_pylist()}


def tiny_with_items(prepared, seed=0):
    model, tokenizer = load_model_and_tokenizer(
        "tiny", texts=prepared["titles"], device="cpu",
        tiny_size=TinyModel(vocab_size=400, hidden=32, layers=1, heads=2))
    plain_vocab = len(tokenizer)
    assert add_item_tokens(tokenizer, prepared["ids"]) == len(prepared["ids"])
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():  # peaked, seeded next-token distributions: rankings are not near-ties
        torch.manual_seed(seed)
        model.get_output_embeddings().weight.normal_(0, 1.0)
    return model, tokenizer, plain_vocab


def test_rows_write_each_item_as_its_token_then_title_with_loss_on_the_token(prepared):
    _, tokenizer, plain_vocab = tiny_with_items(prepared)
    tokens = item_token_ids(tokenizer)
    assert sorted(tokens.values()) == list(range(plain_vocab, plain_vocab + len(prepared["ids"])))
    titles = dict(zip(prepared["ids"], prepared["titles"]))
    rows = pq.read_table(prepared["root"] / "prepared" / "train").sort_by("user_id").slice(0, 20).to_pylist()
    encoded = tokenize_sequence_rows(tokenizer, GENREC, rows, 1024, titles)
    prefix = tokenizer([GENREC.render_sequence_prefix(rows[0]["instruction"])], split_special_tokens=True)["input_ids"][0]
    for row, e in zip(rows, encoded):
        items = row["history_item_ids"] + [row["target_item_id"]]
        expected = [t for item in items for t in [tokens[item]] + batch_response_ids(tokenizer, [titles[item]])[0]]
        ids = e["input_ids"]
        assert ids[-len(expected):] == expected  # the oldest titles are all there (max_len is ample)
        item_positions = [i for i, t in enumerate(ids) if t >= plain_vocab]
        assert [ids[i] for i in item_positions] == [tokens[item] for item in items]
        learned = [i for i, label in enumerate(e["labels"]) if label != IGNORE_INDEX]
        assert learned == item_positions[1:]  # every item after the first, its token alone
        assert all(e["labels"][i] == ids[i] for i in learned)
    # Prompts end after the last history item's eos; the model's answer is the next item token.
    prompt = prompt_ids(tokenizer, GENREC, rows[:1], 1024, titles, "sequence")[0]
    assert prompt == encoded[0]["input_ids"][: -(1 + len(batch_response_ids(tokenizer, [titles[rows[0]["target_item_id"]]])[0]))]
    assert len(prefix) < len(prompt)


def test_item_ids_format_writes_each_item_as_its_token_alone(prepared):
    from genrec.data.tokenize import tokenize_rows

    _, tokenizer, plain_vocab = tiny_with_items(prepared)
    tokens = item_token_ids(tokenizer)
    rows = pq.read_table(prepared["root"] / "prepared" / "train").sort_by("user_id").slice(0, 20).to_pylist()
    encoded = tokenize_rows(tokenizer, GENREC, rows, 1024, format="item_ids")
    for row, e in zip(rows, encoded):
        items = [tokens[item] for item in row["history_item_ids"] + [row["target_item_id"]]]
        prefix = tokenizer([GENREC.render_sequence_prefix(row["instruction"])], split_special_tokens=True)["input_ids"][0]
        assert e["input_ids"] == prefix + items  # no title, no eos
        assert e["labels"] == [IGNORE_INDEX] * (len(prefix) + 1) + items[1:]
    # Over-long rows drop their oldest items; the prompt is the row without its target token.
    short = tokenize_rows(tokenizer, GENREC, rows[:1], len(encoded[0]["input_ids"]) - 3, format="item_ids")[0]
    assert short["history_dropped"] == 3 and short["input_ids"][-4:] == encoded[0]["input_ids"][-4:]
    assert prompt_ids(tokenizer, GENREC, rows[:1], 1024, format="item_ids")[0] == encoded[0]["input_ids"][:-1]
    # A tokenizer without item tokens cannot write this format.
    _, bare = load_model_and_tokenizer("tiny", texts=prepared["titles"], device="cpu",
                                       tiny_size=TinyModel(vocab_size=400, hidden=32,
                                                                  layers=1, heads=2))
    assert len(bare) == plain_vocab
    with pytest.raises(ValueError, match="no item tokens"):
        tokenize_rows(bare, GENREC, rows[:1], 1024, format="item_ids")


def test_item_token_text_in_a_title_stays_text_and_unknown_items_are_named(prepared):
    _, tokenizer, _ = tiny_with_items(prepared)
    first = prepared["ids"][0]
    spelled = batch_response_ids(tokenizer, [f"Box {item_token(first)}"])[0]
    assert item_token_ids(tokenizer)[first] not in spelled
    row = {"instruction": "x", "input": prepared["titles"][0], "output": prepared["titles"][1],
           "history_item_ids": [first], "target_item_id": "no-such-item", "user_id": "u7", "position": 1}
    with pytest.raises(ValueError, match="user_id='u7'.*no-such-item"):
        tokenize_sequence_rows(tokenizer, GENREC, [row], 1024, dict(zip(prepared["ids"], prepared["titles"])))
    with pytest.raises(ValueError, match="have no item token"):
        catalog_token_ids(tokenizer, prepared["ids"] + ["new-item"])


def test_one_pass_ranking_equals_renormalised_beam_search_over_the_item_trie(prepared):
    """After <item:ID> the trie allows one path, so renormalised beam search scores an item by its
    token's probability among the item tokens: the ranking the one forward pass computes."""
    from genrec.rec.beam import constrained_beam_search
    from genrec.rec.item_rank import rank_by_item_tokens
    from genrec.rec.trie import CatalogTrie

    model, tokenizer, _ = tiny_with_items(prepared, seed=3)
    model.eval()
    token_of = catalog_token_ids(tokenizer, prepared["ids"])
    sequences = [[t] + ids for t, ids in zip(token_of, batch_response_ids(tokenizer, prepared["titles"]))]
    trie = CatalogTrie.build(sequences, tokenizer.eos_token_id)
    rows = pq.read_table(prepared["root"] / "prepared" / "test").sort_by("user_id").slice(0, 5).to_pylist()
    prompts = prompt_ids(tokenizer, GENREC, rows, 1024, dict(zip(prepared["ids"], prepared["titles"])), "sequence")
    items, scores = rank_by_item_tokens(model, prompts, token_of, top_k=10, pad_id=tokenizer.pad_token_id)
    beam_items, beam_scores = constrained_beam_search(model, prompts, trie, num_beams=len(token_of), top_k=10,
                                                      pad_id=tokenizer.pad_token_id, renormalize=True)
    np.testing.assert_array_equal(items, beam_items)
    np.testing.assert_allclose(scores, beam_scores, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert np.abs(scores[:, 0] - scores[0, 0]).max() > 1e-3  # the history moves the scores: it is read
    # each user alone gives the same answer as in the left-padded batch
    alone = rank_by_item_tokens(model, prompts[-1:], token_of, top_k=10, pad_id=tokenizer.pad_token_id)
    np.testing.assert_array_equal(alone[0][0], items[-1])
    np.testing.assert_allclose(alone[1][0], scores[-1], atol=1e-5)


def test_item_tokens_config_needs_the_sequence_format_and_full_fine_tuning():
    with pytest.raises(ConfigError, match="format=sequence"):
        SFTConfig(item_tokens=True)
    with pytest.raises(ConfigError, match="lora.enabled=false"):
        SFTConfig(item_tokens=True, format="sequence", lora=Lora(enabled=True))
    with pytest.raises(ConfigError, match="item_ids: .*item_tokens=true"):
        SFTConfig(format="item_ids")
    with pytest.raises(ConfigError, match="valid_rank_users: .*item_tokens=true"):
        SFTConfig(format="sequence", valid_rank_users=100)
    assert SFTConfig(format="item_ids", item_tokens=True).item_tokens


@pytest.mark.parametrize("format", ["sequence", "item_ids"])
def test_train_evaluate_and_serve_an_item_token_model_beats_most_popular(prepared, format, monkeypatch):
    from genrec.config import RecommenderServeConfig
    from genrec.models.loading import load_checkpoint
    from genrec.rec.evaluate import evaluate
    from genrec.serve.recommender import RecommenderModel
    from genrec.train.launch import train_sft

    root = prepared["root"]
    out = root / f"sft_{format}"
    # data_dir relative to the working directory, as configs/ write it. Ray Train workers run in a
    # folder of their own and read it for the ranking validation (a relative path once failed there);
    # Ray Data's workers kept the directory Ray started in, here not the one changed to below.
    monkeypatch.chdir(root)
    train_sft(SFTConfig(data_dir="prepared", out_dir=str(out), format=format, item_tokens=True,
                        max_len=512, micro_batch_tokens=4096, tiny=TinyModel(hidden=64, layers=2, heads=2,
                                                                             vocab_size=512), lr=3e-3, warmup_steps=5, max_steps=30, log_every=10, eval_every=10,
                        save_every=0, valid_rows=100, valid_rank_users=100))
    _, tokenizer, meta = load_checkpoint(out / "final", device="cpu")
    assert meta["config"]["item_tokens"] and len(item_token_ids(tokenizer)) == len(prepared["ids"])
    assert meta["config"]["format"] == format  # evaluation and serving build their prompts from it

    # Ranking validation: every validation ranks the first 100 validation users; best/ keeps the
    # highest HR@10, and `genrec evaluate` on those users with best/ gives that HR@10 again.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    hr = {m["step"]: m["valid_hr@10"] for m in lines if "valid_loss" in m}
    assert sorted(hr) == [0, 10, 20, 30] and max(hr.values()) > hr[0]
    best = json.loads((out / "best" / "genrec.json").read_text())["metrics"]
    assert best["valid_hr@10"] == max(hr.values()) and best["step"] == min(s for s in hr if hr[s] == best["valid_hr@10"])
    again = evaluate(EvaluateConfig(data_dir=str(root / "prepared"), checkpoint_dir=str(out / "best"), split="valid",
                                    max_users=100, out_dir=str(root / f"valid_{format}"), ks=[10]))
    assert again["users"] == 100 and again["metrics"]["hr@10"] == pytest.approx(best["valid_hr@10"], abs=1e-9)

    report = evaluate(EvaluateConfig(data_dir=str(root / "prepared"), checkpoint_dir=str(out / "final"),
                                     out_dir=str(root / f"eval_{format}"), top_k=20, ks=[10, 20], batch_size=100))
    pop = evaluate(EvaluateConfig(data_dir=str(root / "prepared"), model="pop", out_dir=str(root / "pop"), ks=[10, 20]))
    assert report["users"] == 300 and report["hallucination_rate"] == 0.0
    assert report["ranking"].startswith("item ids") and "num_beams" not in report  # what ran, not a default
    assert report["metrics"]["hr@10"] > pop["metrics"]["hr@10"] + 0.05, (report["metrics"], pop["metrics"])
    per_user = pq.read_table(root / f"eval_{format}" / "per_user.parquet").sort_by("user_id")
    ranked = np.array(per_user.column("ranked_items").to_pylist())
    assert all(len(set(r)) == 20 for r in ranked.tolist())

    # The recommender behind /v1/recommend ranks a user's history as evaluation did (for a user
    # whose row has the instruction paraphrase the recommender writes).
    recommender = RecommenderModel(RecommenderServeConfig(checkpoint_dir=str(out / "final"), data_dir=str(root / "prepared")))
    assert recommender.info()["item_tokens"]
    users = pq.read_table(root / "prepared" / "test").sort_by("user_id").to_pylist()
    row = next(i for i, u in enumerate(users) if u["instruction"] == recommender.instruction)
    answer = recommender.rank([recommender.check(users[row]["history_item_ids"], 5, False)])[0]
    assert [i["item_id"] for i in answer["items"]] == [prepared["ids"][i] for i in ranked[row][:5]]
    np.testing.assert_allclose([i["score"] for i in answer["items"]], per_user.column("scores").to_pylist()[row][:5],
                               atol=1e-4)
