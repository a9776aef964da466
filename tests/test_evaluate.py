"""`genrec evaluate` end to end on a real local Ray: a checkpoint ranked by constrained beam search
in a Ray Data actor pool, and a baseline in the same harness."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import synth_and_prepare
from genrec.config import EvaluateConfig, TinyModel
from genrec.models.loading import load_model_and_tokenizer, save_checkpoint
from genrec.rec.evaluate import evaluate
from genrec.rec.metrics import ranking_metrics


@pytest.fixture(scope="module")
def prepared_and_checkpoint(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    synth_and_prepare(root, num_users=120, num_items=150, history_len=5)
    titles = pq.read_table(root / "prepared" / "catalog.parquet").column("title").to_pylist()
    model, tokenizer = load_model_and_tokenizer(
        "tiny", texts=titles, device="cpu",
        tiny_size=TinyModel(vocab_size=600, hidden=32, layers=1, heads=2))
    save_checkpoint(root / "ckpt", model, tokenizer, "sft", {}, {})
    return root


def test_checkpoint_ranks_distinct_catalog_items_and_report_rescores(prepared_and_checkpoint):
    root = prepared_and_checkpoint
    # max_len leaves room for only a few history titles: prompts must be shortened, titles whole
    report = evaluate(EvaluateConfig(data_dir=str(root / "prepared"), checkpoint_dir=str(root / "ckpt"),
                                     out_dir=str(root / "out"), max_users=24, batch_size=8, top_k=10,
                                     num_beams=10, ks=[1, 5, 10], max_len=160))
    assert report["users"] == 24 and report["hallucination_rate"] == 0.0
    assert report["ranking"].startswith("title generation: constrained beam search") and "num_beams" in report
    per_user = pq.read_table(root / "out" / "per_user.parquet")
    catalog = pq.read_table(root / "prepared" / "catalog.parquet").column("item_id").to_pylist()
    ranked = np.array(per_user.column("ranked_items").to_pylist())
    assert ranked.shape == (24, 10) and ((ranked >= 0) & (ranked < len(catalog))).all()
    assert all(len(set(row)) == 10 for row in ranked.tolist())
    # the per-user file is enough to rescore the run
    targets = np.array([catalog.index(t) for t in per_user.column("target_item_id").to_pylist()])
    assert ranking_metrics(ranked, targets, ks=(1, 5, 10)) == pytest.approx(report["metrics"])
    assert json.loads((root / "out" / "report.json").read_text())["metrics"] == report["metrics"]
    assert "hr@10" in (root / "out" / "report.md").read_text()


def test_most_popular_in_the_same_harness(prepared_and_checkpoint):
    root = prepared_and_checkpoint
    report = evaluate(EvaluateConfig(data_dir=str(root / "prepared"), model="pop", out_dir=str(root / "pop")))
    assert report["users"] == 120 and set(report["metrics"]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (1, 5, 10, 20)}
    assert 0 < report["metrics"]["hr@20"] <= 1


def test_unconstrained_decoding_reports_hallucinations(prepared_and_checkpoint):
    """An untrained model's free beams rarely spell a catalog title: the rate must say so."""
    root = prepared_and_checkpoint
    report = evaluate(EvaluateConfig(data_dir=str(root / "prepared"), checkpoint_dir=str(root / "ckpt"),
                                     out_dir=str(root / "free"), max_users=8, batch_size=8, top_k=5,
                                     num_beams=5, ks=[1, 5], decoding="unconstrained"))
    per_user = pq.read_table(root / "free" / "per_user.parquet")
    titles = set(pq.read_table(root / "prepared" / "catalog.parquet").column("title").to_pylist())
    generated = [t for row in per_user.column("generated_titles").to_pylist() for t in row]
    assert len(generated) == 40
    assert report["hallucination_rate"] == pytest.approx(np.mean([t not in titles for t in generated]))
    assert report["hallucination_rate"] > 0.5
    ranked = np.array(per_user.column("ranked_items").to_pylist())
    assert ((ranked == -1) | ((ranked >= 0) & (ranked < len(titles)))).all()


def test_a_sequence_format_checkpoint_is_ranked_from_sequence_prompts(prepared_and_checkpoint):
    """The checkpoint records its training format; evaluation must build that format's prompts."""
    from genrec.data.templates import GENREC
    from genrec.data.tokenize import batch_response_ids, prompt_ids
    from genrec.models.loading import load_checkpoint
    from genrec.rec.beam import constrained_beam_search
    from genrec.rec.trie import CatalogTrie

    root = prepared_and_checkpoint
    model, tokenizer, _ = load_checkpoint(root / "ckpt", device="cpu")
    save_checkpoint(root / "ckpt_seq", model, tokenizer, "sft", {"format": "sequence"}, {})
    evaluate(EvaluateConfig(data_dir=str(root / "prepared"), checkpoint_dir=str(root / "ckpt_seq"),
                            out_dir=str(root / "seq"), max_users=6, batch_size=6, top_k=5, num_beams=5, ks=[1, 5]))
    scored = pq.read_table(root / "seq" / "per_user.parquet")

    catalog = pq.read_table(root / "prepared" / "catalog.parquet")
    titles = catalog.column("title").to_pylist()
    trie = CatalogTrie.build(batch_response_ids(tokenizer, titles), tokenizer.eos_token_id)
    rows = pq.read_table(root / "prepared" / "test").sort_by("user_id").slice(0, 6).to_pylist()
    assert [r["user_id"] for r in rows] == scored.column("user_id").to_pylist()
    by_id = dict(zip(catalog.column("item_id").to_pylist(), titles))
    expected = {}
    for fmt in ("sequence", "prompt"):
        prompts = prompt_ids(tokenizer, GENREC, rows, 512 - trie.max_depth, by_id, fmt)
        expected[fmt] = constrained_beam_search(model, prompts, trie, num_beams=5, top_k=5, pad_id=tokenizer.pad_token_id)
    got = np.array(scored.column("scores").to_pylist())
    np.testing.assert_allclose(got, expected["sequence"][1], atol=1e-4)
    assert not np.allclose(got, expected["prompt"][1], atol=1e-4)
