"""Constrained beam search against greedy decoding and brute-force scoring, on random tiny models."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from genrec.rec.beam import constrained_beam_search
from genrec.rec.trie import CatalogTrie

VOCAB, PAD, EOS = 40, 0, 1


def random_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=PAD, eos_token_id=EOS)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper distributions than the tiny init, so beams really differ
        model.lm_head.weight.mul_(8)
    return model


def random_catalog(seed: int, n: int) -> list[list[int]]:
    """Token sequences with shared prefixes and different lengths, each ending in EOS."""
    rng = np.random.default_rng(seed)
    seqs = set()
    while len(seqs) < n:
        length = int(rng.integers(1, 6))
        seqs.add(tuple(rng.integers(2, 8 if len(seqs) % 2 else VOCAB, length).tolist()) + (EOS,))
    return [list(s) for s in sorted(seqs)]


def random_prompts(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, int(rng.integers(2, 12))).tolist() for _ in range(n)]


def sequence_score(model, prompt, seq) -> float:
    """log p(seq | prompt), one unpadded forward pass."""
    ids = torch.tensor([prompt + seq])
    logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(seq)))


def greedy_constrained(model, prompt, trie) -> int:
    """Argmax among the tokens the trie allows, recomputing the whole sequence each step (no cache)."""
    node, ids = trie.root, list(prompt)
    while trie.item_of(node) < 0:
        logits = model(torch.tensor([ids])).logits[0, -1]
        allowed = torch.from_numpy(trie.allowed_mask(np.array([node]), VOCAB)[0])
        token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
        node = int(trie.step(np.array([node]), np.array([token]))[0])
        ids.append(token)
    return int(trie.item_of(node))


@pytest.mark.parametrize("seed", range(4))
def test_returns_distinct_catalog_items_only(seed):
    model, catalog = random_model(seed), random_catalog(seed, 60)
    trie = CatalogTrie.build(catalog, EOS)
    items, scores = constrained_beam_search(model, random_prompts(seed, 7), trie, num_beams=8, top_k=5, pad_id=PAD)
    assert items.shape == (7, 5)
    for row, row_scores in zip(items, scores):
        found = row[row >= 0]
        assert len(found) == len(set(found.tolist())) and (found < len(catalog)).all()
        assert np.all(np.diff(row_scores[np.isfinite(row_scores)]) <= 1e-6)  # best first


@pytest.mark.parametrize("seed", range(3))
def test_one_beam_is_greedy_constrained_decoding(seed):
    model, trie = random_model(seed), CatalogTrie.build(random_catalog(seed, 40), EOS)
    prompts = random_prompts(seed + 10, 6)
    items, _ = constrained_beam_search(model, prompts, trie, num_beams=1, top_k=1, pad_id=PAD)
    with torch.no_grad():
        assert items[:, 0].tolist() == [greedy_constrained(model, p, trie) for p in prompts]


@pytest.mark.parametrize("seed", range(3))
def test_beams_covering_the_catalog_equal_brute_force(seed):
    model, catalog = random_model(seed), random_catalog(seed, 25)
    trie = CatalogTrie.build(catalog, EOS)
    prompts = random_prompts(seed + 20, 5)  # different lengths: left padding must not change scores
    items, scores = constrained_beam_search(model, prompts, trie, num_beams=len(catalog), top_k=10, pad_id=PAD)
    with torch.no_grad():
        for prompt, got_items, got_scores in zip(prompts, items, scores):
            brute = np.array([sequence_score(model, prompt, seq) for seq in catalog])
            best = np.argsort(-brute, kind="stable")[:10]
            assert got_items.tolist() == best.tolist()
            np.testing.assert_allclose(got_scores, brute[best], atol=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_a_batch_equals_each_user_searched_alone(length_penalty):
    """Users leave the batch as they finish (their cache rows dropped mid-search): the users who
    stay must get exactly what they get alone."""
    model, catalog = random_model(5), random_catalog(5, 80)
    trie = CatalogTrie.build(catalog, EOS)
    prompts = random_prompts(31, 9)
    kwargs = dict(num_beams=6, top_k=4, pad_id=PAD, length_penalty=length_penalty)
    items, scores = constrained_beam_search(model, prompts, trie, **kwargs)
    for prompt, got_items, got_scores in zip(prompts, items, scores):
        alone_items, alone_scores = constrained_beam_search(model, [prompt], trie, **kwargs)
        assert got_items.tolist() == alone_items[0].tolist()
        np.testing.assert_allclose(got_scores, alone_scores[0], atol=1e-4)


@pytest.mark.parametrize("seed", range(2))
def test_renormalized_scores_are_a_distribution_over_the_catalog(seed):
    """With every item found (beams cover the catalog), renormalised scores sum to probability 1
    over the catalog, and each equals the product of the per-step distributions over the allowed
    tokens, computed here by walking the trie one prompt at a time."""
    model, catalog = random_model(seed), random_catalog(seed, 25)
    trie = CatalogTrie.build(catalog, EOS)
    prompts = random_prompts(seed + 40, 4)
    items, scores = constrained_beam_search(model, prompts, trie, num_beams=len(catalog), top_k=len(catalog),
                                            pad_id=PAD, renormalize=True)
    plain_items, _ = constrained_beam_search(model, prompts, trie, num_beams=len(catalog), top_k=len(catalog), pad_id=PAD)
    with torch.no_grad():
        for prompt, got_items, got_scores in zip(prompts, items, scores):
            assert sorted(got_items.tolist()) == list(range(len(catalog)))
            assert np.exp(got_scores).sum() == pytest.approx(1.0, abs=1e-4)
            for item, score in zip(got_items[:5], got_scores[:5]):
                node, total = trie.root, 0.0
                for i, token in enumerate(catalog[item]):
                    logp = torch.log_softmax(model(torch.tensor([prompt + catalog[item][:i]])).logits[0, -1], -1)
                    allowed = torch.from_numpy(trie.allowed_mask(np.array([node]), VOCAB)[0])
                    total += float(logp[token] - torch.logsumexp(logp[allowed], 0))
                    node = int(trie.step(np.array([node]), np.array([token]))[0])
                assert score == pytest.approx(total, abs=1e-4)
    # the random models leak probability to non-catalog strings, so the ranking does change
    assert (items != plain_items).any()


def test_kv_cache_goes_by_the_name_this_transformers_declares():
    """Newer transformers call the KV cache `cache` (`past_key_values` warns there, and goes in 5.40):
    every forward call of the beam search uses the name the model's output declares."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    model, trie = random_model(0), CatalogTrie.build(random_catalog(0, 12), eos_id=EOS)
    declared = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    calls, forward = [], model.forward
    model.forward = lambda *args, **kwargs: calls.append(set(kwargs)) or forward(*args, **kwargs)
    constrained_beam_search(model, random_prompts(0, 3), trie, num_beams=4, top_k=3, pad_id=PAD)
    assert len(calls) > 1  # the prompt, then steps that read the cache
    assert all(declared in kw for kw in calls[1:])
    assert not any({"cache", "past_key_values"} - {declared} & kw for kw in calls)
