"""The reward model: loss direction, checkpoint round trip, calibration, and one Ray Train run on the
synthetic market whose held-out accuracy and correlation with the hidden true fit are checked."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.config import PrepareJobsConfig, RewardConfig
from genrec.jobs import reward as R


def tiny_reward(texts):
    tokenizer = R.build_tiny_tokenizer(texts, vocab_size=300)
    return R.build_reward_model("tiny", tokenizer, tiny_hidden=32, tiny_layers=1, tiny_heads=2, max_len=64), tokenizer


TEXTS = ["Senior Nurse in Paris, wound care and triage", "We are hiring a Senior Nurse in Paris",
         "We are hiring a Junior Accountant in Berlin", "Teacher in London, lesson planning"]


def test_pairwise_loss_gradient_raises_positive_and_lowers_negative():
    r_pos, r_neg = torch.tensor([0.3, -1.0], requires_grad=True), torch.tensor([0.5, 2.0], requires_grad=True)
    R.pairwise_loss(r_pos, r_neg, torch.tensor([0.0, 1.0])).backward()
    assert (r_pos.grad < 0).all() and (r_neg.grad > 0).all()  # descent raises r+ and lowers r-

    model, tokenizer = tiny_reward(TEXTS)
    cv, pos, neg = [TEXTS[0]], [TEXTS[1]], [TEXTS[2]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def scores():
        return (model(**R.encode_pairs(tokenizer, cv, pos, 64)).item(), model(**R.encode_pairs(tokenizer, cv, neg, 64)).item())

    before = scores()
    loss = R.pairwise_loss(model(**R.encode_pairs(tokenizer, cv, pos, 64)), model(**R.encode_pairs(tokenizer, cv, neg, 64)))
    loss.backward()
    optimizer.step()
    after = scores()
    assert after[0] > before[0] and after[1] < before[1]


def test_checkpoint_round_trip_scores_the_same(tmp_path):
    model, tokenizer = tiny_reward(TEXTS)
    model.eval()
    R.save_reward(tmp_path / "rm", model, tokenizer, {"backbone": "tiny", "max_len": 64})
    scorer = R.load_reward(tmp_path / "rm", device="cpu")
    with torch.no_grad():
        direct = model(**R.encode_pairs(tokenizer, TEXTS[:2], TEXTS[2:], 64)).numpy()
    got = scorer.score(TEXTS[:2], TEXTS[2:])
    assert got.dtype == np.float32 and got.shape == (2,)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    assert scorer.info["backbone"] == "tiny" and scorer.info["checkpoint"].endswith("rm")
    with pytest.raises(ValueError, match="2 CVs but 1 JDs"):
        scorer.score(TEXTS[:2], TEXTS[:1])


def test_calibration_table_and_metrics():
    r_pos, r_neg = np.array([3.0, 2.5, 0.1, -1.0]), np.array([-3.0, -2.0, 0.0, 1.0])
    table = R.calibration_table(r_pos, r_neg, bins=10)
    assert sum(row["n"] for row in table) == 8
    assert table[-1]["observed"] == 1.0 and table[0]["observed"] == 0.0  # the confident, right pairs
    assert R.pairwise_accuracy(r_pos, r_neg) == 0.75
    assert R.pairwise_accuracy([1.0], [1.0]) == 0.5


def spearman(a, b) -> float:
    rank = lambda x: pd.Series(x).rank().to_numpy()  # noqa: E731
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def test_reward_on_synthetic_market_learns_the_fit_and_resumes(ray_session, tmp_path):
    from genrec.jobs.prepare import prepare_jobs
    from genrec.train.reward import train_reward

    data = tmp_path / "jobs"
    prepare_jobs(PrepareJobsConfig(out_dir=str(data), synth_num_cvs=500, synth_num_jds=300, seed=1))
    cfg = RewardConfig(data_dir=str(data), out_dir=str(tmp_path / "rm"), backbone="tiny", vocab_size=1000,
                       tiny_hidden=64, tiny_layers=2, max_len=192, batch_size=32, lr=1e-3, warmup_steps=10,
                       max_steps=160, log_every=40, eval_every=80, save_every=80, seed=0)
    metrics = train_reward(cfg)
    assert metrics["pairwise_acc"] > 0.65  # chance is 0.5
    assert metrics["auc"] > 0.6
    scorer = R.load_reward(tmp_path / "rm")
    assert scorer.info["metrics"]["pairwise_acc"] == metrics["pairwise_acc"]
    inter = pd.read_parquet(data / "interactions" / "test.parquet")
    truth = pd.read_parquet(data / "synth" / "truth.parquet")
    inter = inter.merge(truth, on=["cv_id", "jd_id"])
    assert spearman(scorer.score(inter["cv_text"].tolist(), inter["jd_text"].tolist()), inter["true_fit"]) > 0.25

    # A rerun with the same out_dir resumes from the last checkpoint (the finished step): no step trains again.
    lines = (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()
    train_reward(cfg)
    again = (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()
    assert again == lines
    assert json.loads((tmp_path / "rm" / "final" / "genrec.json").read_text())["train"]["step"] == 160
