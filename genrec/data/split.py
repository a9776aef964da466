"""Leave-one-out split and prompt rows for one block of complete users, vectorised.

The protocol (docs/evaluation.md): per user, ordered by time (ties keep source order), the last item is the
test target, the second-last the validation target, and every earlier position t >= 1 is a training
target whose history is the prefix before it. Every history is truncated to the last H items.
A user needs 3 interactions (one history item before the validation target); shorter users are
counted and left out.

Rows are built with numpy index arithmetic and Arrow kernels (take, list_flatten, binary_join),
never a Python loop per row: the prepare benchmark turns 25 million interactions into ~2 million
prompts, each joining up to 20 titles.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.templates import Template

MIN_INTERACTIONS = 3
SPLIT_NAMES = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2


@dataclasses.dataclass
class RowsSpec:
    history_len: int = 20
    samples_per_user: int | str = "all"  # "all" or the last N training prefixes
    domain: str = "generic"
    seed: int = 0


@dataclasses.dataclass
class BlockResult:
    rows: pa.Table
    short_users: int  # users with fewer than MIN_INTERACTIONS, left out
    short_interactions: int  # their interactions
    item_counts: np.ndarray  # interactions per catalog index, over the kept users
    lengths: np.ndarray  # sequence length of each kept user


def sort_block(block: pa.Table) -> pa.Table:
    """Group a block's users and order each user's interactions by time, ties by source order."""
    order = pc.sort_indices(
        block, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending"), ("order", "ascending")]
    )
    return block.take(order)


def user_runs(user_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each user's run in a table sorted by user."""
    n = len(user_ids)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    changed = pc.not_equal(user_ids[1:], user_ids[:-1]).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1]).astype(np.int64)
    lengths = np.diff(np.append(starts, n))
    return starts, lengths


def target_positions(lengths: np.ndarray, samples_per_user: int | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For users of the given lengths (all >= 3): (user index, target position, split) per row.

    Rows come user by user: training positions in increasing order, then valid, then test.
    """
    n_train_all = lengths - 3  # target positions 1 .. n-3
    if samples_per_user == "all":
        n_train = n_train_all
    else:
        n_train = np.minimum(n_train_all, int(samples_per_user))
    per_user = n_train + 2
    user = np.repeat(np.arange(len(lengths)), per_user)
    row_starts = np.cumsum(per_user) - per_user
    rank = np.arange(per_user.sum()) - np.repeat(row_starts, per_user)  # 0.. within a user
    first_train = np.repeat(lengths - 2 - n_train, per_user)  # earliest training target position
    position = first_train + rank  # train: first..n-3, then n-2 (valid), then n-1 (test)
    n = np.repeat(lengths, per_user)
    split = np.where(position == n - 1, TEST, np.where(position == n - 2, VALID, TRAIN)).astype(np.int8)
    return user, position, split


def gather_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated indices lo[i]..hi[i]-1 for every i, and the list offsets that delimit them."""
    sizes = hi - lo
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - lo, sizes)
    return idx, offsets


def instruction_index(
    user_ids: pa.Array, user: np.ndarray, position: np.ndarray, seed: int, n_choices: int
) -> np.ndarray:
    """A paraphrase per row from (seed, user id, position): independent of how users were partitioned.

    One hash per user (not per row) keeps this cheap; the position spreads a user's rows over the
    paraphrases.
    """
    user_hash = np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=4).digest(), "little")
         for u in user_ids.to_pylist()],
        dtype=np.int64,
    )
    return (user_hash[user] + position * 7919) % n_choices


def with_item_index(block: pa.Table, catalog_ids: pa.Array) -> pa.Table:
    """Replace item_id by its row in the catalog (int32): smaller to shuffle, and titles are a take."""
    index = pc.index_in(block.column("item_id"), value_set=catalog_ids)
    if index.null_count:
        raise ValueError("an interaction names an item missing from the catalog; readers must filter these")
    return block.drop_columns(["item_id"]).append_column("item_index", index.cast(pa.int32()))


def build_rows(
    block: pa.Table, catalog_ids: pa.Array, catalog_titles: pa.Array, template: Template, spec: RowsSpec
) -> BlockResult:
    """All prompt rows of the complete users in `block` (user_id, item_index, timestamp, order)."""
    block = sort_block(block)
    starts, lengths = user_runs(block.column("user_id").combine_chunks())
    keep = lengths >= MIN_INTERACTIONS
    short_users, short_interactions = int((~keep).sum()), int(lengths[~keep].sum())
    starts, lengths = starts[keep], lengths[keep]

    item_index = block.column("item_index").to_numpy()
    kept_rows, _ = gather_ranges(starts, starts + lengths)
    item_counts = np.bincount(item_index[kept_rows], minlength=len(catalog_ids))

    user, position, split = target_positions(lengths, spec.samples_per_user)
    target = starts[user] + position
    hist_lo = starts[user] + np.maximum(0, position - spec.history_len)
    gather, offsets = gather_ranges(hist_lo, target)
    offsets_arr = pa.array(offsets, pa.int32())
    # Titles are taken only where a row needs them, straight from the catalog.
    history = pa.array(item_index[gather])
    targets = pa.array(item_index[target])

    user_ids = block.column("user_id").combine_chunks().take(pa.array(starts))
    choices = template.instructions_for(spec.domain)
    instr = instruction_index(user_ids, user, position, spec.seed, len(choices))
    rows = pa.table(
        {
            "user_id": user_ids.take(pa.array(user)),
            "history_item_ids": pa.ListArray.from_arrays(offsets_arr, catalog_ids.take(history)),
            "target_item_id": catalog_ids.take(targets),
            "instruction": pa.array(choices).take(pa.array(instr)),
            "input": pc.binary_join(pa.ListArray.from_arrays(offsets_arr, catalog_titles.take(history)), template.separator),
            "output": catalog_titles.take(targets),
            "position": pa.array(position, pa.int32()),
            "split": pa.array(SPLIT_NAMES).take(pa.array(split)),
        }
    )
    return BlockResult(rows, short_users, short_interactions, item_counts, lengths)
