"""Leave-one-out rows from genrec/data/split.py, checked against a plain per-user reference."""
import numpy as np
import pyarrow as pa
import pytest

from genrec.data.split import MIN_INTERACTIONS, RowsSpec, build_rows, with_item_index
from genrec.data.templates import GENREC


def random_block(rng, n_users=40, n_items=30, max_len=12):
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, max_len + 1))
        times = np.sort(rng.integers(0, 5, size=n))  # many ties: ordering must fall back to source order
        for t in times:
            rows.append((f"u{u}", f"i{int(rng.integers(n_items))}", int(t)))
    rng.shuffle(rows)
    users, items, times = zip(*rows)
    return pa.table({
        "user_id": list(users), "item_id": list(items),
        "timestamp": pa.array(times, pa.int64()), "order": pa.array(np.arange(len(rows)), pa.int64()),
    })


def reference_rows(block, titles, history_len, samples_per_user):
    """The protocol written the slow, obvious way: one user at a time."""
    by_user = {}
    for r in sorted(block.to_pylist(), key=lambda r: (r["user_id"], r["timestamp"], r["order"])):
        by_user.setdefault(r["user_id"], []).append(r["item_id"])
    out = []
    for user, seq in sorted(by_user.items()):
        n = len(seq)
        if n < MIN_INTERACTIONS:
            continue
        train = list(range(1, n - 2))
        if samples_per_user != "all":
            train = train[-samples_per_user:]
        for pos, split in [(p, "train") for p in train] + [(n - 2, "valid"), (n - 1, "test")]:
            hist = seq[max(0, pos - history_len):pos]
            out.append((user, split, pos, tuple(hist), seq[pos], ", ".join(titles[i] for i in hist), titles[seq[pos]]))
    return out


@pytest.mark.parametrize("history_len,samples", [(20, "all"), (3, "all"), (4, 2), (1, 1)])
def test_rows_match_reference(history_len, samples):
    rng = np.random.default_rng(history_len * 10 + (0 if samples == "all" else samples))
    block = random_block(rng)
    titles = {f"i{k}": f"Title {k}" for k in range(30)}
    catalog_ids = pa.array(sorted(titles))
    catalog_titles = pa.array([titles[i] for i in sorted(titles)])
    result = build_rows(with_item_index(block, catalog_ids), catalog_ids, catalog_titles, GENREC, RowsSpec(history_len, samples, "generic", 0))
    got = sorted(
        (r["user_id"], r["split"], r["position"], tuple(r["history_item_ids"]), r["target_item_id"], r["input"], r["output"])
        for r in result.rows.to_pylist()
    )
    assert got == sorted(reference_rows(block, titles, history_len, samples))
    lengths = {}
    for u in block.column("user_id").to_pylist():
        lengths[u] = lengths.get(u, 0) + 1
    short = [n for n in lengths.values() if n < MIN_INTERACTIONS]
    assert result.short_users == len(short) and result.short_interactions == sum(short)
    assert sorted(result.lengths.tolist()) == sorted(n for n in lengths.values() if n >= MIN_INTERACTIONS)
    assert result.item_counts.sum() == block.num_rows - sum(short)


def test_instructions_are_paraphrases_stable_per_row():
    rng = np.random.default_rng(0)
    block = random_block(rng, n_users=60)
    ids = pa.array([f"i{k}" for k in range(30)])
    spec = RowsSpec(20, "all", "movies", seed=3)
    a = build_rows(with_item_index(block, ids), ids, ids, GENREC, spec).rows
    reversed_block = block.take(np.arange(block.num_rows)[::-1])
    b = build_rows(with_item_index(reversed_block, ids), ids, ids, GENREC, spec).rows
    key = lambda t: sorted(zip(t.column("user_id").to_pylist(), t.column("position").to_pylist(), t.column("instruction").to_pylist()))
    assert key(a) == key(b)  # the paraphrase depends on the row, not on the block's order
    used = set(a.column("instruction").to_pylist())
    assert used <= set(GENREC.instructions["movies"]) and len(used) > 1


def test_unknown_item_is_an_error_not_a_silent_drop():
    block = pa.table({"user_id": ["u"] * 3, "item_id": ["a", "b", "zzz"],
                      "timestamp": pa.array([1, 2, 3], pa.int64()), "order": pa.array([0, 1, 2], pa.int64())})
    with pytest.raises(ValueError, match="missing from the catalog"):
        with_item_index(block, pa.array(["a", "b"]))
