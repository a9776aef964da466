"""JobRecommender: real openings only, reranked by the reward; the CV-embedding baseline finds a JD
that repeats the CV; the generator prompt is the training prompt. Tiny random models, TF-IDF embedder."""
import numpy as np
import pandas as pd
import pytest

from genrec.config import TinyModel
from genrec.girl import reward as R
from genrec.girl.recommend import JobRecommender
from genrec.models.embedders import TextEmbedder

JDS = pd.DataFrame({
    "jd_id": [f"j{i}" for i in range(6)],
    "title": ["Senior Nurse", "Junior Nurse", "Accountant", "Teacher", "Data Scientist", "Backend Engineer"],
    "text": ["Senior Nurse in Paris: wound care, triage, IV therapy", "Junior Nurse in Berlin: patient care",
             "Accountant in London: IFRS, bookkeeping, payroll", "Teacher in Madrid: lesson planning, phonics",
             "Data Scientist in Paris: Python, pandas, statistics", "Backend Engineer in Toronto: Golang, Kafka"],
})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from genrec.models.loading import build_model, save_checkpoint
    from genrec.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("rec")
    texts = JDS["text"].tolist() + ["Write the job description of an opening"]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    generator = build_model("tiny", tokenizer, tiny_size=TinyModel(vocab_size=len(tokenizer), hidden=32,
                                                                          layers=1, heads=2))
    save_checkpoint(root / "gen", generator, tokenizer, "sft", {}, {})
    reward_tok = R.build_tiny_tokenizer(texts, 300)
    model = R.build_reward_model("tiny", reward_tok, tiny_size=TinyModel(hidden=32, layers=1, heads=2), max_len=64, seed=3)
    R.save_reward(root / "rm", model, reward_tok, {"backbone": "tiny", "max_len": 64})
    JDS.to_parquet(root / "jds.parquet")
    return root


def test_recommend_returns_real_jobs_reranked_by_reward(checkpoints):
    rec = JobRecommender(checkpoints / "gen", checkpoints / "rm", checkpoints / "jds.parquet", embedder="tfidf",
                         retrieve=4, device="cpu", max_new_tokens=8)
    cv = "Senior nurse in Paris with triage and wound care"
    top = rec.recommend(cv, k=3)
    assert len(top) == 3 and {t["jd_id"] for t in top} <= set(JDS["jd_id"])
    titles = dict(zip(JDS["jd_id"], JDS["title"]))
    assert all(t["title"] == titles[t["jd_id"]] for t in top)
    scores = [t["score"] for t in top]
    assert scores == sorted(scores, reverse=True)
    # the scores are the reward model's for (CV, that JD)
    texts = dict(zip(JDS["jd_id"], JDS["text"]))
    np.testing.assert_allclose(scores, rec.reward.score([cv] * 3, [texts[t["jd_id"]] for t in top]), rtol=1e-5)


def test_rankings_cover_every_jd_and_cv_embedding_finds_its_twin(checkpoints):
    rec = JobRecommender(None, checkpoints / "rm", checkpoints / "jds.parquet", embedder="tfidf", retrieve=3)
    cvs = [JDS["text"][2], JDS["text"][4]]
    by_embedding = rec.rank_by_cv_embedding(cvs)
    assert by_embedding[:, 0].tolist() == [2, 4]
    by_reward = rec.rank_by_reward(cvs)
    assert sorted(by_reward[0].tolist()) == list(range(len(JDS)))
    orders, scores = rec.rank_from_generated(cvs, [JDS["text"][3], JDS["text"][5]], rerank=True)
    assert sorted(orders[0].tolist()) == list(range(len(JDS)))
    assert set(orders[0][:3].tolist()) == set(np.argsort(-rec.embedder.embed([JDS["text"][3]]) @ rec.jd_vectors.T)[0][:3])
    assert list(scores[0][:3]) == sorted(scores[0][:3], reverse=True)
    with pytest.raises(ValueError, match="without a generator_dir"):
        rec.recommend("any CV", 2)


def test_minilm_embedder_is_offline_and_normalised():
    embedder = TextEmbedder("minilm", device="cpu")
    vectors = embedder.embed(["Senior nurse in Paris", "Registered nurse, Paris hospital", "Golang backend engineer"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
