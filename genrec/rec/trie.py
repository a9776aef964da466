"""The catalog trie: which token may come next so that decoding can only spell a catalog title.

Built from one token-id sequence per item (`response_ids(tokenizer, title)`: title ids then eos).
Nodes are numbered breadth-first, and within a depth in lexicographic order of the prefix they
spell, so the children of every node are consecutive node ids sorted by token. The whole trie is a
handful of flat numpy arrays (no dict per node), so a 62k-title catalog builds in well under a
second and beam search asks about a whole batch of beams with one vectorised call.

Node 0 is the root (nothing decoded yet); -1 stands for "no node" (a token the trie does not allow,
or a dead beam), and every query maps -1 to -1 / nothing allowed.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np


class DuplicateSequenceError(ValueError):
    """Two catalog items tokenize to the same sequence: decoding could not tell them apart."""


class CatalogTrie:
    """Prefix tree over the catalog's token sequences, stored as flat arrays indexed by node id.

    token[node]        token on the edge into `node` (-1 for the root)
    parent[node]       parent node id (-1 for the root)
    depth[node]        tokens from the root
    child_start[node]  id of the first child; children are child_start .. child_start+child_count-1,
    child_count[node]  sorted by token
    leaf_item[node]    item index of a terminal node (the node after eos), -1 elsewhere
    """

    root = 0

    def __init__(self, token, parent, depth, child_start, child_count, leaf_item, eos_id: int, vocab_bound: int):
        self.token, self.parent, self.depth = token, parent, depth
        self.child_start, self.child_count, self.leaf_item = child_start, child_count, leaf_item
        self.eos_id = int(eos_id)
        self.vocab_bound = int(vocab_bound)  # every token in the trie is < vocab_bound
        # (parent, token) pairs as one sorted int64 key per non-root node: `step` is then a single
        # np.searchsorted for a whole batch, the binary search within each node's child range.
        self._edge_key = parent[1:].astype(np.int64) * self.vocab_bound + token[1:]
        self.num_items = int(np.count_nonzero(leaf_item >= 0))
        self.max_depth = int(depth.max())

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], eos_id: int) -> CatalogTrie:
        """A trie from one sequence per item (item index = position in `sequences`).

        Every sequence must end with `eos_id` and hold it nowhere else, so no item's sequence is a
        prefix of another's and each item ends at its own terminal node. Identical sequences raise
        DuplicateSequenceError naming both items.
        """
        n = len(sequences)
        if n == 0:
            raise ValueError("cannot build a catalog trie from no sequences")
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
        if (lengths == 0).any():
            raise ValueError(f"item {int(np.argmax(lengths == 0))} has an empty token sequence (it needs at least eos)")
        flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        _validate_tokens(flat, starts, lengths, eos_id)

        # Lexicographic order. Big-endian uint32 bytes compare like the token lists (a prefix sorts
        # first), and Python sorts 62k bytes keys in milliseconds without a padded n x max_len matrix.
        be = flat.astype(">u4").tobytes()
        keys = [be[4 * s : 4 * (s + m)] for s, m in zip(starts.tolist(), lengths.tolist())]
        order = np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
        del keys, be
        lengths, starts = lengths[order], starts[order]
        new_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        seq_of_pos = np.repeat(np.arange(n), lengths)  # sorted sequence index of each flat position
        pos_in_seq = np.arange(len(flat)) - np.repeat(new_starts, lengths)
        flat = flat[np.repeat(starts, lengths) + pos_in_seq]  # tokens in sorted-sequence order

        lcp = _common_prefix_with_previous(flat, new_starts, lengths)
        dup = np.flatnonzero(lcp == lengths)  # prefix-free sequences share all tokens only when equal
        if len(dup):
            i = int(dup[0])
            a, b = sorted((int(order[i - 1]), int(order[i])))
            raise DuplicateSequenceError(
                f"items {a} and {b} have the same token sequence {flat[new_starts[i]:new_starts[i] + lengths[i]].tolist()}"
                f" ({len(dup)} duplicate pair(s) in all); constrained decoding could not tell them apart"
            )

        # Sequence i adds a node for each of its positions past the prefix it shares with sequence i-1.
        created = np.flatnonzero(pos_in_seq >= lcp[seq_of_pos])
        node_depth = pos_in_seq[created] + 1
        bfs = np.argsort(node_depth, kind="stable")  # by depth, then by sorted sequence: BFS order
        created, node_depth = created[bfs], node_depth[bfs]
        creator = seq_of_pos[created]
        num_nodes = len(created) + 1
        # A node's parent is the last node one level up created by a sequence at or before its own
        # (sequences between them share that prefix, so add nothing at that depth). With
        # key = depth * n + creator increasing in BFS order, that is one searchsorted.
        node_key = np.concatenate(([0], node_depth * n + creator))  # root: depth 0, creator 0
        parent = np.searchsorted(node_key, (node_depth - 1) * n + creator, side="right") - 1

        token = np.concatenate(([-1], flat[created])).astype(np.int32)
        parent = np.concatenate(([-1], parent)).astype(np.int32)
        depth = np.concatenate(([0], node_depth)).astype(np.int32)
        child_count = np.bincount(parent[1:], minlength=num_nodes).astype(np.int32)
        child_start = (np.searchsorted(parent[1:], np.arange(num_nodes)) + 1).astype(np.int32)
        leaf_item = np.full(num_nodes, -1, dtype=np.int32)
        is_last = pos_in_seq[created] == lengths[creator] - 1
        leaf_item[1:][is_last] = order[creator[is_last]]

        vocab_bound = int(flat.max()) + 1
        trie = cls(token, parent, depth, child_start, child_count, leaf_item, eos_id, vocab_bound)
        if not (np.diff(trie._edge_key) > 0).all():  # guards the ordering the queries rely on
            raise AssertionError("catalog trie children are not sorted by (parent, token)")
        return trie

    @property
    def num_nodes(self) -> int:
        return len(self.token)

    @property
    def nbytes(self) -> int:
        """Bytes held by the trie's arrays."""
        arrays = (self.token, self.parent, self.depth, self.child_start, self.child_count, self.leaf_item, self._edge_key)
        return sum(a.nbytes for a in arrays)

    def step(self, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The node reached from each node by each token (broadcast together), -1 where the trie has
        no such edge, the token is out of range, or the node is already -1."""
        nodes, tokens = np.broadcast_arrays(np.asarray(nodes, dtype=np.int64), np.asarray(tokens, dtype=np.int64))
        self._check_nodes(nodes)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_bound)
        query = np.where(ok, nodes * self.vocab_bound + tokens, -1)
        pos = np.minimum(np.searchsorted(self._edge_key, query), len(self._edge_key) - 1)
        hit = ok & (self._edge_key[pos] == query)
        return np.where(hit, pos + 1, -1)  # edge k leads to node k + 1

    def allowed_tokens(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat_tokens, offsets): node i may be followed by flat_tokens[offsets[i]:offsets[i+1]],
        sorted; nothing for -1 or a terminal node."""
        nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
        self._check_nodes(nodes)
        live = nodes >= 0
        counts = np.where(live, self.child_count[np.where(live, nodes, 0)], 0).astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        first = self.child_start[np.where(live, nodes, 0)].astype(np.int64)
        children = np.repeat(first - offsets[:-1], counts) + np.arange(offsets[-1])
        return self.token[children].astype(np.int64), offsets

    def allowed_mask(self, nodes: np.ndarray, vocab_size: int) -> np.ndarray:
        """Boolean (len(nodes), vocab_size): True where the token may follow that node. Mask a model's
        logits with it (e.g. `logits[~mask] = -inf`) for catalog-constrained decoding."""
        if vocab_size < self.vocab_bound:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the catalog's largest token id + 1 ({self.vocab_bound})")
        flat, offsets = self.allowed_tokens(nodes)
        mask = np.zeros((len(offsets) - 1, vocab_size), dtype=bool)
        mask[np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), flat] = True
        return mask

    def item_of(self, node):
        """Item index of a terminal node (scalar or array), -1 for any other node or for -1."""
        node = np.asarray(node, dtype=np.int64)
        self._check_nodes(node)
        items = np.where(node >= 0, self.leaf_item[np.where(node >= 0, node, 0)], -1)
        return int(items) if items.ndim == 0 else items

    def _check_nodes(self, nodes: np.ndarray) -> None:
        if nodes.size and (nodes.min() < -1 or nodes.max() >= self.num_nodes):
            raise IndexError(f"node ids must be -1 or in [0, {self.num_nodes}); got {nodes.min()}..{nodes.max()}")


def _validate_tokens(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, eos_id: int) -> None:
    if flat.min() < 0:
        raise ValueError(f"item {int(np.searchsorted(starts, np.argmax(flat < 0), side='right') - 1)} has a negative token id")
    if flat.max() >= 2**31:
        raise ValueError("token ids must fit in int32")
    ends = starts + lengths - 1
    bad_end = np.flatnonzero(flat[ends] != eos_id)
    if len(bad_end):
        raise ValueError(f"item {int(bad_end[0])} does not end with eos_id={eos_id}")
    inner_eos = np.flatnonzero(flat == eos_id)
    if len(inner_eos) != len(starts):  # one eos per sequence, the final one
        pos = np.setdiff1d(inner_eos, ends)[0]
        item = int(np.searchsorted(starts, pos, side="right") - 1)
        raise ValueError(f"item {item} holds eos_id={eos_id} before its end")


def _common_prefix_with_previous(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """lcp[i] = tokens sequence i shares at its start with sequence i-1 (lcp[0] = 0), vectorised
    over the ragged sequences: compare the first min(len) positions of each neighbouring pair and
    take the first mismatch."""
    n = len(starts)
    lcp = np.zeros(n, dtype=np.int64)
    if n < 2:
        return lcp
    m = np.minimum(lengths[1:], lengths[:-1])
    seg = np.repeat(np.arange(1, n), m)
    k = np.arange(int(m.sum())) - np.repeat(np.concatenate(([0], np.cumsum(m)[:-1])), m)
    differ = np.flatnonzero(flat[starts[seg] + k] != flat[starts[seg - 1] + k])
    lcp[1:] = m
    first = np.ones(len(differ), dtype=bool)
    first[1:] = seg[differ[1:]] != seg[differ[:-1]]  # differ is sorted, so the first of each pair
    lcp[seg[differ[first]]] = k[differ[first]]
    return lcp
