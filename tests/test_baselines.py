"""Baselines (most-popular, SASRec) on prepared folders: training-only counts, full ranking, and a
sequential model that beats popularity where the data has sequential structure."""
import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import synth_and_prepare
from genrec.config import PrepareConfig, SourceConfig
from genrec.data.prepare import prepare
from genrec.rec.baselines import (
    MostPopular, SASRec, SASRecConfig, evaluate_baseline, load_sequences, training_pairs,
)

FAST = dict(epochs=12, eval_every=3, patience=2, lr=2e-3, dropout=0.2, seed=0)


@pytest.fixture(scope="module")
def synth_prepared(ray_session, tmp_path_factory):
    """600 synthetic users over 400 items, prepared with a short history window (H=5)."""
    root = tmp_path_factory.mktemp("baselines")
    synth = synth_and_prepare(root, num_users=600, num_items=400, history_len=5, num_partitions=2)
    return root / "prepared", synth


def test_load_sequences_rebuilds_whole_sequences_beyond_the_window(synth_prepared):
    out, synth = synth_prepared
    interactions = pq.read_table(synth["interactions_path"]).to_pylist()
    expected = {}
    for _, r in sorted(enumerate(interactions), key=lambda ir: (ir[1]["timestamp"], ir[0])):
        expected.setdefault(r["user_id"], []).append(r["item_id"])
    data = load_sequences(out)
    assert sorted(data.user_ids) == sorted(expected)
    assert data.item_ids == pq.read_table(out / "catalog.parquet").column("item_id").to_pylist()
    assert max(len(s) for s in data.sequences) > 5  # longer than the rows' history window
    for user, seq in zip(data.user_ids, data.sequences):
        assert [data.item_ids[i] for i in seq] == expected[user]


def test_most_popular_counts_training_interactions_only(ray_session, tmp_path):
    # Every user's test item is "hot" and validation item "warm": the most frequent items in the
    # log, yet absent from every training part, so they must rank last.
    seqs = {f"u{u}": ["p", "q" if u < 3 else "r", "warm", "hot"] for u in range(5)}
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, s in seqs.items() for t, i in enumerate(s)))
    catalog = tmp_path / "items.csv"
    catalog.write_text("item,title\n" + "".join(f"{i},Item {i}\n" for i in ("hot", "warm", "p", "q", "r", "z")))
    out = tmp_path / "out"
    prepare(PrepareConfig(
        source=SourceConfig(format="table", path=str(log), catalog_path=str(catalog),
                            user_col="user", item_col="item", time_col="ts"),
        out_dir=str(out), num_partitions=2,
    ))
    data = load_sequences(out)
    index = {item: i for i, item in enumerate(data.item_ids)}
    pop = MostPopular(data.num_items).fit(data.training_parts())
    assert {item: int(pop.counts[i]) for item, i in index.items()} == {"hot": 0, "warm": 0, "p": 5, "q": 3, "r": 2, "z": 0}
    histories, targets = data.test_inputs()
    ranked = pop.recommend(histories, k=3)
    assert ranked.shape == (5, 3)
    assert (ranked == [index["p"], index["q"], index["r"]]).all()  # the same list for everybody
    assert not (ranked == targets[:, None]).any()
    result = evaluate_baseline(out, "pop", ks=(1, 3))
    assert result["test"]["hr@3"] == 0.0 and result["test"]["ndcg@3"] == 0.0
    # The flag drops what a user already has (p, q or r, and warm): z comes next by catalog order.
    ranked = MostPopular(data.num_items, exclude_history=True).fit(data.training_parts()).recommend(histories, k=3)
    user_q = data.user_ids.index("u0")
    assert ranked[user_q].tolist() == [index["r"], index["hot"], index["z"]]


def test_sasrec_beats_most_popular_with_full_ranking(synth_prepared):
    out, _ = synth_prepared
    pop = evaluate_baseline(out, "pop")
    sas = evaluate_baseline(out, "sasrec", config=SASRecConfig(**FAST))
    assert sas["test"]["hr@10"] > 1.5 * pop["test"]["hr@10"] + 0.05, (sas, pop)
    assert sas["test"]["ndcg@10"] > pop["test"]["ndcg@10"]
    assert set(sas["valid"]) == set(sas["test"]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (1, 5, 10, 20)}
    assert sas["train_s"] > 0 and 1 <= sas["best_epoch"] <= sas["epochs_run"] <= FAST["epochs"]


def test_sasrec_ranks_the_whole_catalog_and_is_deterministic(synth_prepared):
    out, _ = synth_prepared
    data = load_sequences(out)
    cfg = SASRecConfig(epochs=2, seed=3)
    a = SASRec(data.num_items, cfg).fit(data.training_parts())
    histories, _ = data.test_inputs()
    ranked = a.recommend(histories[:50], k=20)
    assert ranked.shape == (50, 20) and ranked.dtype == np.int64
    assert ((ranked >= 0) & (ranked < data.num_items)).all()
    assert all(len(set(row)) == 20 for row in ranked.tolist())
    # No sampled candidates: asking for the whole catalog returns every item once, per user.
    everything = a.recommend(histories[:5], k=data.num_items)
    assert (np.sort(everything, axis=1) == np.arange(data.num_items)).all()
    b = SASRec(data.num_items, cfg).fit(data.training_parts())
    assert (b.recommend(histories[:50], k=20) == ranked).all()
    for pa_, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa_, pb)
    excluded = a.recommend(histories[:50], k=20, exclude_history=True)
    assert not any(set(row) & set(h.tolist()) for row, h in zip(excluded.tolist(), histories[:50]))


def test_sasrec_bce_loss_learns_and_training_pairs_are_shifted():
    inputs, targets = training_pairs([np.array([4, 5, 6, 7]), np.array([9]), np.array([1, 2])], max_len=3)
    # items are stored + 1 (0 = padding); the one-item part has no target and is left out
    assert inputs.tolist() == [[5, 6, 7], [0, 0, 2]] and targets.tolist() == [[6, 7, 8], [0, 0, 3]]
    rng = np.random.default_rng(0)
    parts = [np.arange(s, s + 8) % 30 for s in rng.integers(0, 30, 200)]  # "next item is +1"
    cfg = SASRecConfig(loss="bce", epochs=40, max_len=8, dropout=0.1, lr=5e-3)
    model = SASRec(30, cfg).fit(parts)
    assert model.history[-1]["loss"] < 0.5 * model.history[0]["loss"]
    ranked = model.recommend([np.array([3, 4, 5]), np.array([20, 21])], k=1)
    assert ranked[:, 0].tolist() == [6, 22]


def test_sasrec_config_rejects_bad_values():
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(loss="bpr")
    with pytest.raises(ValueError, match="num_heads"):
        SASRecConfig(hidden=64, num_heads=3)
    assert dataclasses.asdict(SASRecConfig())["max_len"] == 50
