"""BIGRec-style grounding (genrec/rec/grounding.py): free text -> nearest catalog items, and
`genrec evaluate decoding=grounded` end to end on a real local Ray."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from genrec.config import EvaluateConfig

from genrec.config_loader import ConfigError, load_config
from genrec.rec import grounding
from genrec.rec.evaluate import evaluate
from genrec.rec.grounding import Grounder
from test_evaluate import prepared_and_checkpoint  # noqa: F401  (the tiny checkpoint and synthetic data)

MOVIES = [
    "Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
    "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)",
    "Usual Suspects, The (1995)", "Mighty Aphrodite (1995)", "Mr. Holland's Opus (1995)",
    "From Dusk Till Dawn (1996)", "White Balloon, The (1995)", "Muppet Treasure Island (1996)", "Braveheart (1995)",
    "Taxi Driver (1976)", "Rumble in the Bronx (1995)", "Birdcage, The (1996)", "Bad Boys (1995)",
    "Apollo 13 (1995)", "Batman Forever (1995)", "Crimson Tide (1995)", "Star Wars (1977)",
    "Return of the Jedi (1983)", "Empire Strikes Back, The (1980)", "Star Trek: First Contact (1996)",
    "Toy Soldiers (1991)", "Monkey Trouble (1994)", "Island of Dr. Moreau, The (1996)",
]
# generated-looking titles: a typo or a dropped word -> the title they came from
PERTURBED = {
    "Toy Stroy (1995)": "Toy Story (1995)",
    "Usual Suspects (1995)": "Usual Suspects, The (1995)",
    "Twelve Monkey (1995)": "Twelve Monkeys (1995)",
    "Dead Man Walkin (1995)": "Dead Man Walking (1995)",
    "Muppet Treasure (1996)": "Muppet Treasure Island (1996)",
    "Empire Strikes Back (1980)": "Empire Strikes Back, The (1980)",
    "Retrun of the Jedi (1983)": "Return of the Jedi (1983)",
    "Star Wars": "Star Wars (1977)",
}


@pytest.fixture(scope="module")
def tfidf():
    return Grounder(MOVIES, "tfidf")


@pytest.mark.parametrize("embedder", ["tfidf", "minilm"])
def test_perturbed_titles_ground_to_their_original(embedder, tfidf):
    grounder = tfidf if embedder == "tfidf" else Grounder(MOVIES, "minilm")
    items, similarity = grounder.ground([[text] for text in PERTURBED], top_k=3)
    assert [MOVIES[i] for i in items[:, 0]] == list(PERTURBED.values())
    # the first item is the most similar: similarity falls along each ranking (BIGRec's order)
    assert (np.diff(similarity, axis=1) <= 1e-6).all() and (similarity[:, 0] < 1 - 1e-3).all()


def test_exact_titles_ground_to_themselves_and_are_their_own_nearest(tfidf):
    items, similarity = tfidf.ground([[title] for title in MOVIES], top_k=5)
    np.testing.assert_array_equal(items[:, 0], np.arange(len(MOVIES)))
    np.testing.assert_allclose(similarity[:, 0], 1.0, atol=1e-5)
    scores = tfidf.similarity(MOVIES)
    assert scores.shape == (len(MOVIES), len(MOVIES)) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores.argmax(1), np.arange(len(MOVIES)))
    # TF-IDF ignores word order and one-letter tokens: these three are one vector, yet each title is its own item
    twins = Grounder(["Silver River", "Silver River 2", "River, Silver"], "tfidf")
    items, similarity = twins.ground([["River, Silver"], ["Silver River 2"], ["Silver River"]], top_k=3)
    np.testing.assert_array_equal(items[:, 0], [2, 1, 0])
    np.testing.assert_allclose(similarity, 1.0, atol=1e-5)


def test_grounded_rankings_are_k_distinct_catalog_items_led_by_the_top_text(tfidf, monkeypatch):
    rng = np.random.default_rng(0)
    words = " ".join(MOVIES).split()
    # users with 1, 3 or 8 texts (fewer or more than K), empty texts and texts naming no title
    texts = [[" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(n)] for n in (1, 3, 8, 3, 1)]
    texts[1][0], texts[2][1], texts[3] = "", MOVIES[4], [MOVIES[4], MOVIES[4], "Toy Stroy (1995)"]
    k = 6
    items, similarity = tfidf.ground(texts, top_k=k)
    assert items.shape == similarity.shape == (len(texts), k) and items.dtype == np.int64
    assert ((items >= 0) & (items < len(MOVIES))).all()
    assert all(len(set(row)) == k for row in items.tolist())
    scores = tfidf.similarity([user[0] for user in texts])
    np.testing.assert_allclose(similarity[:, 0], scores.max(1), atol=1e-6)
    assert scores[np.arange(len(texts)), items[:, 0]] == pytest.approx(scores.max(1), abs=1e-6)
    # beam order: each text takes its nearest item not yet taken (an exact title takes itself)
    assert items[2, 1] == 4 and items[3, 0] == 4 and items[3, 1] != 4 and MOVIES[items[3, 2]] == "Toy Story (1995)"
    # one text: BIGRec's ranking of the catalog by similarity to it
    np.testing.assert_allclose(similarity[0], np.sort(scores[0])[::-1][:k], atol=1e-6)
    # grounding in user batches gives the same rankings
    monkeypatch.setattr(grounding, "MAX_SCORES", 1)
    batched = tfidf.ground(texts, top_k=k)
    np.testing.assert_array_equal(batched[0], items)
    np.testing.assert_allclose(batched[1], similarity)


def test_model_hidden_states_ground_exact_titles(prepared_and_checkpoint):  # noqa: F811
    from genrec.data.tokenize import response_ids
    from genrec.models.loading import load_checkpoint

    root = prepared_and_checkpoint
    model, tokenizer, _ = load_checkpoint(root / "ckpt", device="cpu")
    titles = pq.read_table(root / "prepared" / "catalog.parquet").column("title").to_pylist()
    grounder = Grounder(titles, "model", model=model, tokenizer=tokenizer)
    assert grounder.catalog.shape == (len(titles), model.config.hidden_size)
    # a title's vector: the last hidden layer mean pooled over its response tokens, EOS left out
    with torch.no_grad():
        hidden = model(torch.tensor([response_ids(tokenizer, titles[3])[:-1]]), output_hidden_states=True)
    expected = torch.nn.functional.normalize(hidden.hidden_states[-1][0].mean(0), dim=0).numpy()
    np.testing.assert_allclose(grounder.catalog[3], expected, atol=1e-5)
    # an exact title, embedded as generated text, is as near its item as any item can be
    scores = grounder.similarity(titles)
    np.testing.assert_allclose(np.diag(scores), 1.0, atol=1e-5)
    items, _ = grounder.ground([[title] for title in titles] + [[""]], top_k=4)
    np.testing.assert_array_equal(items[:-1, 0], np.arange(len(titles)))
    assert len(set(items[-1])) == 4


def test_grounding_config_from_overrides():
    cfg = load_config(EvaluateConfig, None, ["decoding=grounded", "grounding_embedder=tfidf"])
    assert (cfg.decoding, cfg.grounding_embedder) == ("grounded", "tfidf")
    with pytest.raises(ConfigError, match="grounding_embedder"):
        load_config(EvaluateConfig, None, ["decoding=grounded", "grounding_embedder=minlm"])


def test_grounded_evaluation_keeps_the_raw_hallucination_rate_and_never_ranks_below_exact_matching(
        prepared_and_checkpoint):  # noqa: F811
    root = prepared_and_checkpoint
    common = dict(data_dir=str(root / "prepared"), checkpoint_dir=str(root / "ckpt"), max_users=8, batch_size=8,
                  top_k=5, num_beams=5, ks=[1, 5])
    free = evaluate(EvaluateConfig(out_dir=str(root / "g_free"), decoding="unconstrained", **common))
    grounded = evaluate(EvaluateConfig(out_dir=str(root / "g_grounded"), decoding="grounded",
                                       grounding_embedder="tfidf", **common))
    assert grounded["hallucination_rate"] == 0.0 and grounded["decoding"] == "grounded"
    # the same beams as unconstrained decoding (deterministic), so the same raw hallucination rate
    assert grounded["generated_hallucination_rate"] == free["hallucination_rate"] > 0.5
    assert "before grounding" in (root / "g_grounded" / "report.md").read_text()

    exact, ours = (pq.read_table(root / d / "per_user.parquet") for d in ("g_free", "g_grounded"))
    assert ours.column("generated_titles").to_pylist() == exact.column("generated_titles").to_pylist()
    catalog = pq.read_table(root / "prepared" / "catalog.parquet").column("item_id").to_pylist()
    ranked = np.array(ours.column("ranked_items").to_pylist())
    assert ranked.shape == (8, 5) and ((ranked >= 0) & (ranked < len(catalog))).all()
    assert all(len(set(row)) == 5 for row in ranked.tolist())
    assert np.array(ours.column("similarity").to_pylist()).shape == (8, 5)
    # Every item exact matching returns at rank r, grounding returns at rank <= r (an exact title
    # takes its own item unless an earlier beam already took it), so no user's HR or NDCG drops.
    for exact_row, grounded_row in zip(exact.column("ranked_items").to_pylist(), ranked.tolist()):
        for rank, item in enumerate(exact_row):
            assert item == -1 or grounded_row.index(item) <= rank
    for key, value in free["metrics"].items():
        assert grounded["metrics"][key] >= value
