"""item_init: item-token embeddings that start from a text encoder's view of each title
(genrec/models/item_init.py), with the offline all-MiniLM-L6-v2 on real Ray Data and Ray Train."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genrec.config import SFTConfig, TinyModel
from genrec.config_loader import ConfigError
from genrec.models.item_init import cache_path, init_item_embeddings, project, title_vectors

TITLES = {"t1": "LEGO City Fire Truck", "t2": "LEGO City Police Station", "t3": "Barbie Dreamhouse Doll",
          "t4": "Barbie Fashionistas Doll", "t5": "Hot Wheels Race Car Track", "t6": "Hot Wheels Monster Truck"}


def cosine(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_projection_keeps_the_groups_apart_and_takes_the_spread_it_is_given():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 50)) * 5
    vectors = np.concatenate([c + rng.normal(size=(20, 50)) for c in centres])
    out = project(vectors, 8, std=0.02)
    assert out.shape == (60, 8) and out.std() == pytest.approx(0.02, rel=1e-4)
    within = np.mean([cosine(out[i], out[j]) for g in range(3) for i in range(g * 20, g * 20 + 5)
                      for j in range(g * 20 + 5, g * 20 + 10)])
    across = np.mean([cosine(out[i], out[j]) for i in range(5) for j in range(20, 25)])
    assert within > 0.9 and across < 0.3
    wide = project(vectors[:10], 16, std=1.0)  # 10 items span at most 10 directions: the rest stays 0
    assert wide.shape == (10, 16) and np.abs(wide[:, 10:]).max() == 0


def test_item_init_needs_item_tokens():
    with pytest.raises(ConfigError, match="item_init"):
        SFTConfig(item_init="minilm")


@pytest.fixture()
def catalog(tmp_path):
    pq.write_table(pa.table({"item_id": list(TITLES), "title": list(TITLES.values())}), tmp_path / "catalog.parquet")
    return tmp_path


def test_title_vectors_come_from_ray_data_in_catalog_order_and_are_cached(ray_session, catalog):
    from genrec.models.embedders import TextEmbedder

    path = title_vectors(catalog, "minilm")
    assert path == cache_path(catalog, "minilm") and path.parent.name == "item_text_vectors"
    table = pq.read_table(path)
    assert table.column("item_id").to_pylist() == list(TITLES)
    cached = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    direct = TextEmbedder("minilm", device="cpu", max_len=64).embed(list(TITLES.values()))
    np.testing.assert_allclose(cached, direct, atol=1e-5)
    written = path.stat().st_mtime_ns
    assert title_vectors(catalog, "minilm") == path and path.stat().st_mtime_ns == written  # read, not recomputed
    pq.write_table(pa.table({"item_id": ["t1", "t9"], "title": ["LEGO City Fire Truck", "Uno Cards"]}),
                   catalog / "catalog.parquet")
    assert pq.read_table(title_vectors(catalog, "minilm")).column("item_id").to_pylist() == ["t1", "t9"]  # stale: rebuilt


def test_item_rows_start_from_the_titles_and_nothing_else_moves(ray_session, catalog):
    from genrec.data.item_tokens import add_item_tokens, catalog_token_ids
    from genrec.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny", texts=list(TITLES.values()), device="cpu",
                                                tiny_size=TinyModel(vocab_size=300, hidden=32, layers=1, heads=2))
    add_item_tokens(tokenizer, list(TITLES))
    model.resize_token_embeddings(len(tokenizer))
    weight = model.get_input_embeddings().weight
    rows = catalog_token_ids(tokenizer, list(TITLES))
    before = weight.detach().clone()
    assert init_item_embeddings(model, tokenizer, title_vectors(catalog, "minilm")) == len(TITLES)
    after = weight.detach()
    others = torch.ones(len(after), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(after[others], before[others])
    assert float(after[rows].std()) == pytest.approx(float(before[others].std()), rel=1e-2)
    item = dict(zip(TITLES, after[rows].numpy()))
    assert cosine(item["t1"], item["t2"]) > cosine(item["t1"], item["t3"])  # LEGO nearer LEGO than Barbie
    assert cosine(item["t3"], item["t4"]) > cosine(item["t3"], item["t5"])


def test_train_sft_starts_the_item_rows_from_the_titles(ray_session, tmp_path):
    """train-sft item_init=minilm on real Ray Train workers: after one step at a negligible learning
    rate the saved model's item rows are the projected title vectors."""
    from conftest import synth_and_prepare
    from genrec.data.item_tokens import catalog_token_ids
    from genrec.models.loading import load_checkpoint
    from genrec.train.launch import train_sft

    synth_and_prepare(tmp_path, num_users=60, num_items=80, history_len=8, samples_per_user=1)
    data = tmp_path / "prepared"
    train_sft(SFTConfig(data_dir=str(data), out_dir=str(tmp_path / "sft"), format="item_ids", item_tokens=True,
                        item_init="minilm", max_len=128, micro_batch_tokens=1024, lr=1e-9, warmup_steps=0, max_steps=1,
                        eval_every=0, save_every=0, tiny=TinyModel(hidden=32, layers=1, heads=2, vocab_size=300)))
    model, tokenizer, meta = load_checkpoint(tmp_path / "sft" / "final", device="cpu")
    assert meta["config"]["item_init"] == "minilm"
    cached = pq.read_table(cache_path(data, "minilm"))
    ids = cached.column("item_id").to_pylist()
    expected = project(np.stack(cached.column("vector").to_numpy(zero_copy_only=False)), 32, 1.0)
    rows = model.get_input_embeddings().weight.detach()[catalog_token_ids(tokenizer, ids)].numpy()
    assert min(cosine(r, e) for r, e in zip(rows, expected)) > 0.999
