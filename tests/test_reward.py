"""The reward model: loss direction, checkpoint round trip, calibration. Its Ray Train run on the
synthetic market (held-out accuracy, correlation with the hidden true fit, resume) is in
tests/test_girl_market.py, which also hands that model to PPO."""
import numpy as np
import pytest
import torch

from genrec.config import TinyModel
from genrec.girl import metrics as M
from genrec.girl import reward as R


def tiny_reward(texts):
    tokenizer = R.build_tiny_tokenizer(texts, vocab_size=300)
    return R.build_reward_model("tiny", tokenizer, tiny_size=TinyModel(hidden=32, layers=1, heads=2), max_len=64), tokenizer


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
    table = M.calibration_table(r_pos, r_neg, bins=10)
    assert sum(row["n"] for row in table) == 8
    assert table[-1]["observed"] == 1.0 and table[0]["observed"] == 0.0  # the confident, right pairs
    assert M.pairwise_accuracy(r_pos, r_neg) == 0.75
    assert M.pairwise_accuracy([1.0], [1.0]) == 0.5


def test_agreement_on_samples_ranks_each_cvs_own_samples():
    fits = np.array([0.2, 0.5, 0.9, 0.1, 0.3, 0.6])
    # agrees with the fit inside each CV, although CV 2's scores all sit far above CV 1's
    agreeing = M.agreement_on_samples([1.0, 2.0, 3.0, 11.0, 12.0, 13.0], fits, 3)
    assert agreeing["within_cv_spearman"] == pytest.approx(1.0)
    assert agreeing["best_of_n_fit"] == pytest.approx((0.9 + 0.6) / 2) == agreeing["oracle_best_of_n_fit"]
    assert agreeing["mean_fit"] == pytest.approx(fits.mean())
    assert agreeing["between_cv_share"] > 0.9 and agreeing["spearman"] < 0.7
    reversed_ = M.agreement_on_samples([3.0, 2.0, 1.0, 3.0, 2.0, 1.0], fits, 3)
    assert reversed_["within_cv_spearman"] == pytest.approx(-1.0)
    assert reversed_["best_of_n_fit"] == pytest.approx((0.2 + 0.1) / 2)
    assert reversed_["between_cv_share"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="groups of 4"):
        M.agreement_on_samples(fits, fits, 4)


def test_tfidf_reward_fits_in_the_driver_and_loads_like_the_others(ray_session, tmp_path):
    import pandas as pd

    from genrec.config import PrepareJobsConfig, RewardConfig
    from genrec.girl.prepare import prepare_jobs
    from genrec.train.reward import train_reward

    prepare_jobs(PrepareJobsConfig(out_dir=str(tmp_path / "jobs"), synth_num_cvs=300, synth_num_jds=200, seed=2))
    metrics = train_reward(RewardConfig(data_dir=str(tmp_path / "jobs"), out_dir=str(tmp_path / "rm"), backbone="tfidf"))
    assert metrics["pairwise_acc"] > 0.7 and metrics["auc"] > 0.65, metrics
    scorer = R.load_reward(tmp_path / "rm")
    assert scorer.info["backbone"] == "tfidf" and scorer.info["metrics"]["pairwise_acc"] == metrics["pairwise_acc"]
    pairs = pd.read_parquet(tmp_path / "jobs" / "pairs" / "test.parquet")
    cvs, jds = pairs["cv_text"].tolist(), pairs["pos_text"].tolist()
    np.testing.assert_allclose(scorer.score(cvs, jds), R.load_reward(tmp_path / "rm" / "final").score(cvs, jds))
    # a matched JD cut to its first third scores below the whole JD (truncated negatives are in its data)
    cut = [" ".join(t.split()[: len(t.split()) // 3]) for t in jds]
    assert scorer.score(cvs, cut).mean() < scorer.score(cvs, jds).mean()
    assert scorer.score(["a CV"], [""]).shape == (1,)  # an empty JD scores, never an error
    with pytest.raises(ValueError, match="2 CVs but 1 JDs"):
        scorer.score(["a", "b"], ["c"])


def _pair_rows(seed: int, n: int, jd_only: bool):
    """Preference rows separable only by a word no CV has (jd_only: 'remote' in JD+) or only by which
    JD word goes with which CV word (python CVs want django, accountant CVs want excel)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    fillers = ["alpha", "bravo", "charlie", "delta", "foxtrot", "golf", "hotel", "india"]
    noise = lambda: " ".join(rng.choice(fillers, 3))  # noqa: E731
    rows = []
    for i in range(n):
        python = i % 2 == 0
        cv = ("python developer " if python else "accountant ledger ") + noise()
        if jd_only:
            pos, neg = f"{noise()} remote", noise()
        else:
            good, bad = ("django", "excel") if python else ("excel", "django")
            pos, neg = f"{good} {noise()}", f"{bad} {noise()}"
        rows.append(dict(cv_text=cv, pos_text=pos, neg_cv_text=cv, neg_text=neg))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("jd_only", [True, False])
def test_tfidf_pair_model_learns_what_shared_words_cannot_see(jd_only):
    from genrec.girl.tfidf_reward import TfidfPairModel

    train, test = _pair_rows(0, 300, jd_only), _pair_rows(1, 200, jd_only)

    def accuracy(model):
        model.fit(train)
        return M.pairwise_accuracy(model.score(test["cv_text"], test["pos_text"]),
                                   model.score(test["neg_cv_text"], test["neg_text"]))

    shared_only = accuracy(TfidfPairModel())
    with_jd_words = accuracy(TfidfPairModel(jd_words=True))
    with_pairs = accuracy(TfidfPairModel(word_pairs=True, ngram_max=2))
    assert shared_only < 0.7, shared_only  # neither signal is a word both texts share
    if jd_only:
        assert with_jd_words > 0.95, with_jd_words
    else:  # django is good for half the CVs and bad for the others: only the pairs tell them apart
        assert with_jd_words < 0.7 and with_pairs > 0.95, (with_jd_words, with_pairs)
