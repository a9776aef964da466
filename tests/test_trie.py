"""CatalogTrie: reaches every catalog title and nothing else; masks equal a brute force; scales."""
import time

import numpy as np
import pytest

from genrec.data.tokenize import batch_response_ids
from genrec.models.tiny import train_tokenizer
from genrec.rec.trie import CatalogTrie, DuplicateSequenceError


def synthetic_titles(n: int = 300, seed: int = 0) -> list[str]:
    """Titles with long shared prefixes ("The Adventures of ...") and titles that are prefixes of
    others ("Star Wars" / "Star Wars: Episode II")."""
    rng = np.random.default_rng(seed)
    words = ["Star", "Wars", "Toy", "Story", "Lego", "City", "Puzzle", "Train", "Set", "Deluxe", "Mini", "Robot"]
    titles = {"Star", "Star Wars", "Star Wars: Episode I", "Star Wars: Episode II", "Star Wars: Episode III",
              "Toy", "Toy Story", "Toy Story 2", "Toy Story 2 (Deluxe)", "Lego City Train", "Lego City Train Set"}
    while len(titles) < n:
        body = " ".join(rng.choice(words, size=rng.integers(1, 5)))
        prefix = rng.choice(["", "The Adventures of ", "The Adventures of the Little ", "Lego City "])
        suffix = rng.choice(["", " 2", " (1995)", ", The"])
        titles.add(f"{prefix}{body}{suffix}")
    return sorted(titles)


@pytest.fixture(scope="module")
def catalog():
    titles = synthetic_titles()
    tokenizer = train_tokenizer(titles, vocab_size=400)
    sequences = batch_response_ids(tokenizer, titles)
    eos = tokenizer.eos_token_id
    # Shuffle so item index order is not the sorted order the trie builds in.
    perm = np.random.default_rng(1).permutation(len(sequences))
    sequences = [sequences[i] for i in perm]
    return CatalogTrie.build(sequences, eos_id=eos), sequences, len(tokenizer), eos


def enumerate_trie(trie: CatalogTrie) -> tuple[dict[int, tuple], dict[tuple, int]]:
    """Every node's prefix, and every root-to-terminal path with its item, via allowed_tokens/step."""
    prefix = {trie.root: ()}
    terminals = {}
    frontier = np.array([trie.root])
    while len(frontier):
        tokens, offsets = trie.allowed_tokens(frontier)
        parents = np.repeat(frontier, np.diff(offsets))
        children = trie.step(parents, tokens)
        assert (children >= 0).all(), "an allowed token must lead somewhere"
        for parent, token, child in zip(parents.tolist(), tokens.tolist(), children.tolist()):
            assert child not in prefix, "a node reached twice: not a tree"
            prefix[child] = prefix[parent] + (token,)
            if trie.item_of(child) >= 0:
                terminals[prefix[child]] = trie.item_of(child)
        frontier = children
    return prefix, terminals


def test_trie_reaches_every_title_and_nothing_else(catalog):
    trie, sequences, _, eos = catalog
    stripped = {tuple(s[:-1]) for s in sequences}
    assert any(p[: len(q)] == q for p in stripped for q in stripped if len(q) < len(p)), \
        "the catalog should hold a title whose tokens are a prefix of another's"

    prefix, terminals = enumerate_trie(trie)
    assert terminals == {tuple(s): i for i, s in enumerate(sequences)}
    assert trie.num_items == len(sequences) and trie.num_nodes == len(prefix)
    assert trie.max_depth == max(len(s) for s in sequences)
    for node, path in prefix.items():
        terminal = trie.item_of(node) >= 0
        assert terminal == (len(path) > 0 and path[-1] == eos)
        assert terminal == (trie.allowed_tokens([node])[0].size == 0)


def test_allowed_mask_and_step_equal_brute_force(catalog):
    trie, sequences, vocab, _ = catalog
    prefix, _ = enumerate_trie(trie)
    rng = np.random.default_rng(2)
    for _ in range(5):
        nodes = rng.integers(-1, trie.num_nodes, size=64)
        expected = np.zeros((len(nodes), vocab), dtype=bool)
        for row, node in enumerate(nodes.tolist()):
            if node == -1:
                continue
            p = prefix[node]
            for s in sequences:
                if len(s) > len(p) and tuple(s[: len(p)]) == p:
                    expected[row, s[len(p)]] = True
        np.testing.assert_array_equal(trie.allowed_mask(nodes, vocab), expected)
        # step over the whole vocabulary (plus out-of-range tokens) agrees with the mask
        tokens = np.arange(-1, vocab + 2)
        reached = trie.step(nodes[:, None], tokens[None, :])
        np.testing.assert_array_equal(reached[:, 1:vocab + 1] >= 0, expected)
        assert (reached[:, [0, -2, -1]] == -1).all()
        assert (trie.depth[reached[reached >= 0]] == np.broadcast_to(trie.depth[nodes][:, None], reached.shape)[reached >= 0] + 1).all()


def test_allowed_mask_rejects_small_vocab_and_bad_nodes(catalog):
    trie, _, vocab, _ = catalog
    with pytest.raises(ValueError, match="vocab_size"):
        trie.allowed_mask([0], trie.vocab_bound - 1)
    with pytest.raises(IndexError):
        trie.step([trie.num_nodes], [0])
    assert trie.allowed_mask(np.array([], dtype=np.int64), vocab).shape == (0, vocab)


def test_duplicate_sequences_raise_naming_both_items():
    sequences = [[5, 6, 2], [5, 2], [7, 8, 9, 2], [5, 6, 2]]
    with pytest.raises(DuplicateSequenceError, match="items 0 and 3"):
        CatalogTrie.build(sequences, eos_id=2)


@pytest.mark.parametrize(
    "sequences, message",
    [([[5, 6]], "does not end with eos"), ([[5, 2, 6, 2]], "holds eos_id=2 before its end"),
     ([[5, 2], []], "item 1 has an empty"), ([[5, -3, 2]], "negative"), ([], "no sequences")],
)
def test_malformed_sequences_raise(sequences, message):
    with pytest.raises(ValueError, match=message):
        CatalogTrie.build(sequences, eos_id=2)


def test_62k_random_catalog_builds_fast():
    rng = np.random.default_rng(0)
    n, vocab, eos = 62_000, 4096, 2
    lengths = rng.integers(4, 30, size=n)  # + eos: 5..30 tokens
    tokens = rng.integers(3, vocab, size=int(lengths.sum()))
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    sequences = [tokens[a:b].tolist() + [eos] for a, b in zip(bounds[:-1], bounds[1:])]
    start = time.perf_counter()
    trie = CatalogTrie.build(sequences, eos_id=eos)
    elapsed = time.perf_counter() - start
    print(f"\n62k-sequence trie: built in {elapsed:.2f} s, {trie.num_nodes} nodes, {trie.nbytes / 2**20:.1f} MiB of arrays")
    assert trie.num_items == n
    for item in rng.choice(n, size=200, replace=False).tolist():  # walk a sample of items to their leaves
        node = trie.root
        for token in sequences[item]:
            node = int(trie.step(node, token))
        assert trie.item_of(node) == item
    # a batch of 256 beams at the root and one level down, as beam search asks
    nodes = trie.step(np.zeros(256, dtype=np.int64), rng.integers(3, vocab, size=256))
    mask = trie.allowed_mask(nodes, vocab)
    assert mask.shape == (256, vocab) and (mask.sum(axis=1) == trie.child_count[np.maximum(nodes, 0)] * (nodes >= 0)).all()


def test_training_labels_decode_through_the_trie_to_their_item():
    """The SFT response tokens of every title are exactly a trie path ending at that title's item."""
    from genrec.data.templates import GENREC
    from genrec.data.tokenize import IGNORE_INDEX, tokenize_rows

    titles = synthetic_titles(120, seed=2)
    tokenizer = train_tokenizer(titles, vocab_size=400)
    trie = CatalogTrie.build(batch_response_ids(tokenizer, titles), eos_id=tokenizer.eos_token_id)
    rows = [{"instruction": GENREC.instructions["generic"][0], "input": ", ".join(titles[max(0, i - 3):i]),
             "output": title, "history_item_ids": [], "user_id": "u", "position": i} for i, title in enumerate(titles)]
    for item, encoded in enumerate(tokenize_rows(tokenizer, GENREC, rows, max_len=512)):
        node = trie.root
        for token in [t for t in encoded["labels"] if t != IGNORE_INDEX]:
            node = int(trie.step(np.array([node]), np.array([token]))[0])
            assert node >= 0, f"title {titles[item]!r}: a label token leaves the trie"
        assert trie.item_of(node) == item
