"""The synthetic data set: determinism, well-formed files, and sequential structure worth learning."""
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from genrec.config import SynthInteractionsConfig
from genrec.data.synth import generate, synth_interactions

SMALL = dict(num_users=300, num_items=500, num_genres=6, min_len=3, max_len=30)


@pytest.fixture(scope="module")
def default_data():
    """The embedded default data set, as `genrec data synth interactions` makes it."""
    cfg = SynthInteractionsConfig()
    return generate(cfg.num_users, cfg.num_items, cfg.num_genres, cfg.min_len, cfg.max_len, cfg.seed)


def test_same_seed_same_tables_other_seed_other_tables():
    first, first_catalog = generate(**SMALL, seed=7)
    again, again_catalog = generate(**SMALL, seed=7)
    other, other_catalog = generate(**SMALL, seed=8)
    assert first.equals(again) and first_catalog.equals(again_catalog)
    assert not first.equals(other) and not first_catalog.equals(other_catalog)


def test_same_seed_writes_byte_identical_files(tmp_path):
    cfg = SynthInteractionsConfig(out_dir=str(tmp_path), **SMALL, seed=3)
    names = ("interactions.parquet", "catalog.parquet", "synth.json")
    summary = synth_interactions(cfg)
    first = {name: (tmp_path / name).read_bytes() for name in names}
    synth_interactions(cfg)
    assert first == {name: (tmp_path / name).read_bytes() for name in names}
    recorded = json.loads(first["synth.json"])
    assert recorded["config"]["seed"] == 3
    assert recorded["summary"]["interactions"] == summary["interactions"]
    assert summary["interactions"] == pq.read_metadata(tmp_path / "interactions.parquet").num_rows
    assert recorded["summary"]["items"] == SMALL["num_items"]


def test_csv_format_reads_back_the_same_rows(tmp_path):
    synth_interactions(SynthInteractionsConfig(out_dir=str(tmp_path), **SMALL, format="csv"))
    expected, _ = generate(**SMALL, seed=0)
    read = pa_csv.read_csv(tmp_path / "interactions.csv")
    assert read.column_names == ["user_id", "item_id", "timestamp"]
    assert read.cast(expected.schema).equals(expected.combine_chunks())
    assert (tmp_path / "catalog.parquet").exists()


def test_catalog_titles_and_ids(default_data):
    interactions, catalog = default_data
    titles = catalog["title"].to_pylist()
    assert catalog.num_rows == SynthInteractionsConfig().num_items
    assert len(set(titles)) == len(titles) and all(t.strip() == t and t for t in titles)
    assert len(set(catalog["item_id"].to_pylist())) == catalog.num_rows
    assert len(set(catalog["genre"].to_pylist())) == SynthInteractionsConfig().num_genres
    assert pc.all(pc.is_in(interactions["item_id"], catalog["item_id"])).as_py()


def test_logs_are_ordered_and_within_length_bounds(default_data):
    interactions, _ = default_data
    cfg = SynthInteractionsConfig()
    users, _, ts = _columns(interactions)
    same_user = users[1:] == users[:-1]
    assert np.all(np.diff(users) >= 0), "rows are grouped by user"
    assert np.all(np.diff(ts)[same_user] >= 0)
    assert np.any(np.diff(ts)[same_user] == 0), "some ties, so readers must keep file order"
    lengths = np.bincount(users)
    assert len(lengths) == cfg.num_users
    assert lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len


def test_mean_len_sets_the_mean_log_length():
    interactions, _ = generate(**{**SMALL, "num_users": 4000, "max_len": 200}, seed=0, mean_len=40)
    assert interactions.num_rows / 4000 == pytest.approx(40, rel=0.05)
    with pytest.raises(ValueError, match="mean_len"):
        generate(**SMALL, seed=0, mean_len=20)


def test_sequential_model_beats_most_popular(default_data):
    """Leave-one-out HR@10: item->next-item transition counts against most-popular."""
    interactions, catalog = default_data
    users, items, _ = _columns(interactions, catalog)
    is_last = np.append(users[1:] != users[:-1], True)
    train = ~is_last
    popularity = np.bincount(items[train], minlength=catalog.num_rows).astype(float)

    # Transition counts from consecutive training pairs of the same user.
    pair = train[:-1] & train[1:] & (users[1:] == users[:-1])
    transitions = np.zeros((catalog.num_rows, catalog.num_rows))
    np.add.at(transitions, (items[:-1][pair], items[1:][pair]), 1)

    queries = items[np.flatnonzero(is_last) - 1]  # each user's last training item
    held_out = items[is_last]
    tie_break = popularity / (popularity.max() + 1)  # < 1: ranks only items with equal counts
    sequential_top = np.argpartition(-(transitions[queries] + tie_break), 10, axis=1)[:, :10]
    popular_top = np.argsort(-popularity, kind="stable")[:10]

    hr_sequential = np.mean(np.any(sequential_top == held_out[:, None], axis=1))
    hr_popular = np.mean(np.isin(held_out, popular_top))
    print(f"HR@10 transition={hr_sequential:.4f} most-popular={hr_popular:.4f}")
    assert hr_sequential >= 2 * hr_popular and hr_sequential >= hr_popular + 0.1


def _columns(interactions, catalog=None):
    """User codes, item codes (rows of `catalog`) and timestamps as numpy arrays, in file order."""
    users = pc.cast(pc.utf8_slice_codeunits(interactions["user_id"], 1), "int64").to_numpy()
    items = pc.index_in(interactions["item_id"], catalog["item_id"]).to_numpy() if catalog else None
    return users, items, interactions["timestamp"].to_numpy()
