"""Micro-batches for causal-LM fine-tuning: padding-free packing, length grouping, plain padding.

Whichever way a micro-batch is planned, it reaches the model in one form: rows of token segments
whose `position_ids` restart at 0 in every segment, with no attention mask. transformers (5.x)
reads segment starts off `position_ids` when `attention_mask` is None and builds a block-diagonal
causal mask for sdpa / eager / flex attention (cu_seqlens for flash-attention), so no token
attends across sequences. A row's tail padding is one more segment whose targets are ignored.

Targets are shifted here, per sequence (`targets[t] = labels[t + 1]`), so the loss never asks a
sequence's last token to predict the first token of its neighbour in the row.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Literal

import numpy as np
import torch

IGNORE_INDEX = -100  # the target value cross-entropy skips (labels carry it over the prompt)

Layout = list[list[int]]  # one micro-batch: rows, each a list of sequence indices laid end to end


@dataclasses.dataclass
class TokenRows:
    """Token sequences stored flat: sequence i is `ids[offsets[i]:offsets[i + 1]]`, same for labels.

    Ids and labels are int32, as in the shards: every worker holds the whole set.
    """

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.labels) or self.offsets[-1] != len(self.ids):
            raise ValueError("TokenRows: input_ids and labels must have the same length in every row")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, input_ids: list[list[int]], labels: list[list[int]]) -> TokenRows:
        for i, (a, b) in enumerate(zip(input_ids, labels, strict=True)):
            if len(a) != len(b):
                raise ValueError(f"row {i}: {len(a)} input_ids but {len(b)} labels")
        offsets = np.zeros(len(input_ids) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in input_ids], out=offsets[1:])
        flat = lambda rows: np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=offsets[-1])
        return cls(flat(input_ids), flat(labels), offsets)

    @classmethod
    def from_table(cls, table) -> TokenRows:
        """From a pyarrow table with list columns `input_ids` and `labels` (the token shards' schema)."""
        ids = table.column("input_ids").combine_chunks()
        labels = table.column("labels").combine_chunks()
        offsets = ids.offsets.to_numpy().astype(np.int64)
        if not np.array_equal(offsets, labels.offsets.to_numpy()):
            bad = int(np.flatnonzero(np.diff(offsets) != np.diff(labels.offsets.to_numpy()))[0])
            raise ValueError(f"row {bad}: input_ids and labels differ in length")
        # Slicing the values by the first/last offset drops whatever a sliced table keeps outside.
        start, end = offsets[0], offsets[-1]
        return cls(
            ids.values.to_numpy()[start:end].astype(np.int32),
            labels.values.to_numpy()[start:end].astype(np.int32),
            offsets - start,
        )


def load_token_rows(path: str | Path) -> TokenRows:
    """All parquet token shards under `path` (a folder or one file), in file order."""
    import pyarrow.dataset as pads  # here, so that benchmarks without pyarrow can import this module

    return TokenRows.from_table(pads.dataset(str(path), format="parquet").to_table(columns=["input_ids", "labels"]))


def usable_rows(rows: TokenRows, max_len: int) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of rows that fit in max_len and have a response token to learn, and counts of the rest.

    A label at position 0 is never a target (nothing precedes it), so it does not count.
    """
    lengths = rows.lengths
    cum_targets = np.concatenate([[0], np.cumsum(rows.labels != IGNORE_INDEX)])
    targets_per_row = cum_targets[rows.offsets[1:]] - cum_targets[rows.offsets[:-1]]
    nonempty = lengths > 0
    targets_per_row[nonempty] -= rows.labels[rows.offsets[:-1][nonempty]] != IGNORE_INDEX
    too_long = lengths > max_len
    no_target = ~too_long & (targets_per_row <= 0)
    keep = np.flatnonzero(~too_long & ~no_target)
    return keep, {"too_long": int(too_long.sum()), "no_response": int(no_target.sum())}


# ------------------------------------------------------------------------------------- planning
def pack_rows(lengths: np.ndarray, order: np.ndarray, width: int) -> Layout:
    """Best-fit decreasing: each sequence, longest first, goes to the row it leaves least room in.

    Sorting is stable, so sequences of equal length keep their (shuffled) order and rows differ
    from epoch to epoch. Rows are found through lists keyed by free space, so a sequence looks
    at no more than `width` buckets.
    """
    order = order[np.argsort(-lengths[order], kind="stable")]
    rows: Layout = []
    by_space: list[list[int]] = [[] for _ in range(width + 1)]
    for i in order.tolist():
        n = int(lengths[i])
        space = next((s for s in range(n, width + 1) if by_space[s]), None)
        if space is None:
            rows.append([i])
            row, left = len(rows) - 1, width - n
        else:
            row = by_space[space].pop()
            rows[row].append(i)
            left = space - n
        if left:
            by_space[left].append(row)
    return rows


def group_by_length(lengths: np.ndarray, order: np.ndarray, budget: int, pool: int) -> Layout:
    """Cut pools of `pool` sequences, sorted by length, into batches whose rows x longest <= budget.

    Returns one row list per batch, each row a single sequence.
    """
    batches: Layout = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batch: list[int] = []
        for i in chunk.tolist():
            if batch and (len(batch) + 1) * int(lengths[i]) > budget:
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
    return batches


def plan_micro_batches(
    batching: Literal["packed", "length_grouped", "padded"],
    lengths: np.ndarray,
    indices: np.ndarray,
    row_len: int,
    micro_batch_tokens: int,
    rng: np.random.Generator | None,
) -> list[Layout]:
    """Micro-batch layouts over `indices`, in training order; `rng=None` keeps file order (evaluation).

    Packed rows are `row_len` wide; padded micro-batches take `micro_batch_tokens // row_len` rows.
    """
    order = rng.permutation(indices) if rng is not None else np.asarray(indices)
    rows_per_batch = micro_batch_tokens // row_len
    if batching == "packed":
        rows = pack_rows(lengths, order, row_len)
        if rng is not None:
            rows = [rows[i] for i in rng.permutation(len(rows))]
        return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]
    if batching == "length_grouped":
        # A pool of many micro-batches' worth: lengths inside it are close, and shuffling the
        # batches afterwards keeps the order of lengths from following the pools.
        groups = group_by_length(lengths, order, micro_batch_tokens, pool=64 * rows_per_batch)
        if rng is not None:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        return [[[i] for i in group] for group in groups]
    if batching == "padded":
        order = order.tolist()
        return [[[i] for i in order[j:j + rows_per_batch]] for j in range(0, len(order), rows_per_batch)]
    raise ValueError(f"batching: unknown {batching!r}; known: packed, length_grouped, padded")


# ------------------------------------------------------------------------------------ collation
@dataclasses.dataclass
class Batch:
    """One micro-batch as the model reads it, plus the counts the loop logs."""

    input_ids: torch.Tensor  # (rows, width)
    position_ids: torch.Tensor  # restart at 0 in every segment, padding included
    targets: torch.Tensor  # next-token ids, IGNORE_INDEX where no loss is taken
    real_tokens: int  # tokens of real sequences; the rest of rows x width is padding
    num_targets: int

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def real_fraction(self) -> float:
        return self.real_tokens / self.computed_tokens

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)
        return dataclasses.replace(
            self, input_ids=move(self.input_ids), position_ids=move(self.position_ids), targets=move(self.targets)
        )


def collate(rows: TokenRows, layout: Layout, width: int | None = None) -> Batch:
    """Lay the layout's sequences into rows of `width` (default: the longest row)."""
    row_lengths = [int(sum(rows.offsets[i + 1] - rows.offsets[i] for i in row)) for row in layout]
    width = width or max(row_lengths)
    input_ids = np.zeros((len(layout), width), dtype=np.int64)
    targets = np.full((len(layout), width), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((len(layout), width), dtype=np.int64)
    ramp = np.arange(width)
    for r, row in enumerate(layout):
        at = 0
        for i in row:
            a, b = rows.offsets[i], rows.offsets[i + 1]
            n = b - a
            input_ids[r, at:at + n] = rows.ids[a:b]
            targets[r, at:at + n - 1] = rows.labels[a + 1:b]
            position_ids[r, at:at + n] = ramp[:n]
            at += n
        position_ids[r, at:] = ramp[:width - at]  # padding: a segment of its own, attending only to itself
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        targets=torch.from_numpy(targets),
        real_tokens=sum(row_lengths),
        num_targets=int((targets != IGNORE_INDEX).sum()),
    )
