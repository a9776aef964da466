"""The prepare stage end to end on a real local Ray: readers -> split -> parquet, and its invariants."""
import json
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from conftest import shared_data
from genrec.config import PrepareConfig, SourceConfig, SynthInteractionsConfig
from genrec.data.prepare import prepare
from genrec.data.synth import synth_interactions


def read_split(out, name):
    return pq.read_table(out / name).to_pylist()


def check_split_invariants(out, sequences, titles, history_len):
    """Every row is exactly what leave-one-out says, given each user's ordered sequence."""
    rows = {name: read_split(out, name) for name in ("train", "valid", "test")}
    kept = {u for u, seq in sequences.items() if len(seq) >= 3}
    assert sorted(r["user_id"] for r in rows["test"]) == sorted(kept)  # one test row per user
    assert sorted(r["user_id"] for r in rows["valid"]) == sorted(kept)
    seen_prefixes = set()
    for name, split_rows in rows.items():
        for r in split_rows:
            seq = sequences[r["user_id"]]
            pos = r["position"]
            if name == "test":
                assert pos == len(seq) - 1
            elif name == "valid":
                assert pos == len(seq) - 2
            else:
                assert 1 <= pos <= len(seq) - 3
                assert (r["user_id"], pos) not in seen_prefixes  # each training prefix once
                seen_prefixes.add((r["user_id"], pos))
            assert r["target_item_id"] == seq[pos]
            # the history is the window strictly before the target: the target is never in its own window
            assert r["history_item_ids"] == seq[max(0, pos - history_len):pos]
            assert r["output"] == titles[r["target_item_id"]]
            assert r["input"] == ", ".join(titles[i] for i in r["history_item_ids"])
    return rows


def test_prepare_synthetic_table(ray_session, tmp_path):
    synth = synth_interactions(SynthInteractionsConfig(out_dir=str(tmp_path / "synth"), num_users=300, num_items=400))
    out = tmp_path / "prepared"
    cfg = PrepareConfig(
        source=SourceConfig(format="table", path=synth["interactions_path"], catalog_path=synth["catalog_path"]),
        out_dir=str(out), history_len=5, num_partitions=3,
    )
    stats = prepare(cfg)
    interactions = pq.read_table(synth["interactions_path"]).to_pylist()
    sequences = defaultdict(list)
    for r in sorted(enumerate(interactions), key=lambda ir: (ir[1]["timestamp"], ir[0])):  # stable on ties
        sequences[r[1]["user_id"]].append(r[1]["item_id"])
    titles = {r["item_id"]: r["title"] for r in pq.read_table(out / "catalog.parquet").to_pylist()}
    rows = check_split_invariants(out, sequences, titles, history_len=5)
    assert stats["users"] == 300 and stats["interactions"] == len(interactions)
    assert stats["rows"] == {name: len(r) for name, r in rows.items()}
    assert json.loads((out / "stats.json").read_text())["rows"] == stats["rows"]
    assert (out / "config.yaml").exists()


def test_prepare_counts_short_users_and_samples_per_user(ray_session, tmp_path):
    path = tmp_path / "log.csv"
    lines = ["user,item,ts"]
    lines += [f"a,i{k},{k}" for k in range(10)]  # 10 interactions
    lines += ["b,i1,1", "b,i2,2"]  # too short: counted, not silently dropped
    lines += ["c,i3,1", "c,i4,1", "c,i5,1"]  # all ties: file order decides
    path.write_text("\n".join(lines) + "\n")
    catalog = tmp_path / "items.csv"
    catalog.write_text("item,title\n" + "\n".join(f"i{k},Item &amp; {k}" for k in range(10)) + "\n")
    out = tmp_path / "out"
    cfg = PrepareConfig(
        source=SourceConfig(format="table", path=str(path), catalog_path=str(catalog),
                            user_col="user", item_col="item", time_col="ts"),
        out_dir=str(out), samples_per_user=2, num_partitions=2,
    )
    stats = prepare(cfg)
    assert stats["rows"] == {"train": 2, "valid": 2, "test": 2}
    assert stats["short_users_dropped"] == 1
    assert stats["interactions_dropped"]["counts"] == {"user with fewer than 3 interactions": 2}
    train = sorted((r["position"], r["target_item_id"]) for r in read_split(out, "train"))
    assert train == [(6, "i6"), (7, "i7")]  # the last 2 training prefixes of user a
    test_c = [r for r in read_split(out, "test") if r["user_id"] == "c"][0]
    assert test_c["history_item_ids"] == ["i3", "i4"] and test_c["output"] == "Item & 5"


@pytest.mark.shared_data
def test_prepare_amazon_toys(ray_session, tmp_path):
    root = shared_data("amazon-toys")
    out = tmp_path / "toys"
    cfg = PrepareConfig(
        source=SourceConfig(format="sequences", path=str(root / "sequences_asin.tsv"),
                            catalog_path=str(root / "items.tsv"), item_col="asin", title_col="title"),
        out_dir=str(out), domain="products",
    )
    stats = prepare(cfg)
    assert (stats["users"], stats["items"], stats["interactions"]) == (19412, 11924, 167597)
    assert stats["rows"]["test"] == 19412 and stats["rows"]["valid"] == 19412
    assert stats["rows"]["train"] == 167597 - 3 * 19412
    assert stats["interactions_dropped"]["counts"] == {}
    sequences = {}
    for line in (root / "sequences_asin.tsv").read_text().splitlines():
        user, items = line.split("\t")
        sequences[user] = items.split()
    titles = {r["item_id"]: r["title"] for r in pq.read_table(out / "catalog.parquet").to_pylist()}
    rows = check_split_invariants(out, sequences, titles, history_len=20)
    assert all(r["target_item_id"] not in r["history_item_ids"] for r in rows["test"])


@pytest.mark.shared_data
def test_prepare_movielens_100k(ray_session, tmp_path):
    root = shared_data("ml-100k")
    out = tmp_path / "ml"
    stats = prepare(PrepareConfig(source=SourceConfig(format="movielens", path=str(root)), out_dir=str(out),
                                  domain="movies"))
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    ratings = [line.split("\t") for line in (root / "u.data").read_text().splitlines()]
    sequences = defaultdict(list)
    for _, (user, item, _, ts) in sorted(enumerate(ratings), key=lambda ir: (int(ir[1][3]), ir[0])):
        sequences[user].append(item)
    titles = {r["item_id"]: r["title"] for r in pq.read_table(out / "catalog.parquet").to_pylist()}
    rows = check_split_invariants(out, sequences, titles, history_len=20)
    assert all(r["target_item_id"] not in r["history_item_ids"] for r in rows["test"])


def reference_kcore(rows, k):
    """Iterative k-core the obvious way: drop users and items under k until nothing changes."""
    while True:
        users, items = defaultdict(int), defaultdict(int)
        for r in rows:
            users[r["user_id"]] += 1
            items[r["item_id"]] += 1
        kept = [r for r in rows if users[r["user_id"]] >= k and items[r["item_id"]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def test_prepare_kcore_matches_reference(ray_session, tmp_path):
    synth = synth_interactions(SynthInteractionsConfig(out_dir=str(tmp_path / "synth"), num_users=150, num_items=600,
                                                       min_len=3, max_len=12))
    interactions = pq.read_table(synth["interactions_path"]).to_pylist()
    kept = reference_kcore(interactions, 4)
    assert 0 < len(kept) < len(interactions)  # the filter has work to do on this data
    stats = prepare(PrepareConfig(
        source=SourceConfig(format="table", path=synth["interactions_path"], catalog_path=synth["catalog_path"]),
        out_dir=str(tmp_path / "out"), kcore=4, num_partitions=2,
    ))
    assert stats["interactions"] == len(kept)
    assert stats["users"] == len({r["user_id"] for r in kept})
    assert stats["interactions_dropped"]["counts"]["k-core filter"] == len(interactions) - len(kept)
