"""GIRL end to end on the synthetic job market, whose hidden true fit no model reads:

- the reward model (Ray Train) tells matched from mismatched JDs on held-out CVs, its scores follow
  the true fit, and a rerun resumes instead of training again;
- the CV->JD generator is plain `train-sft` on prepare-jobs' SFT rows: its validation loss falls and
  its JDs fit held-out CVs better than real JDs drawn at random;
- GRPO from that generator against a TF-IDF pair reward model raises the learned reward and the
  hidden true fit on held-out CVs it never trains on, and the JDs keep their length.

One market, one reward model and one generator for the module (about two minutes of training).
"""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from genrec.config import PPOConfig, PrepareJobsConfig, RayTrain, RewardConfig, SFTConfig, TinyModel
from genrec.girl.true_fit import fit_of_text, parse_jd_text, true_fit
from genrec.girl import reward as R


@pytest.fixture(scope="module")
def market(ray_session, tmp_path_factory):
    from genrec.girl.prepare import prepare_jobs

    root = tmp_path_factory.mktemp("girl_market")
    # truncated_negatives: JD+ cut short is a negative, or PPO learns to write JDs short (tested below)
    prepare_jobs(PrepareJobsConfig(out_dir=str(root / "jobs"), synth_num_cvs=500, synth_num_jds=300, seed=1,
                                   truncated_negatives=1))
    return root


def reward_config(root) -> RewardConfig:
    return RewardConfig(data_dir=str(root / "jobs"), out_dir=str(root / "rm"), backbone="tiny",
                        tiny=TinyModel(vocab_size=1000, hidden=64, layers=2), max_len=192, batch_size=32, lr=1e-3,
                        warmup_steps=10, max_steps=300, log_every=50, eval_every=150, save_every=150, seed=0,
                        ray_train=RayTrain(cpus_per_worker=2))


@pytest.fixture(scope="module")
def reward_model(market):
    from genrec.train.reward import train_reward

    return train_reward(reward_config(market))


@pytest.fixture(scope="module")
def generator(market):
    from genrec.train.launch import train_sft

    return train_sft(SFTConfig(data_dir=str(market / "jobs" / "sft"), out_dir=str(market / "gen"), model="tiny",
                               tiny=TinyModel(vocab_size=1000, hidden=96, layers=2, heads=4), max_len=384,
                               micro_batch_tokens=2048, lr=2e-3, warmup_steps=10, max_steps=600, eval_every=300,
                               save_every=1000, log_every=100, ray_train=RayTrain(num_workers=1, cpus_per_worker=2)))


def spearman(a, b) -> float:
    rank = lambda x: pd.Series(x).rank().to_numpy()  # noqa: E731
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def held_out_cvs(root, n: int) -> list[dict]:
    """The synthetic market's CV rows (with their hidden true_ fields) of the test split."""
    held_out = set(pd.read_parquet(root / "jobs" / "cvs.parquet").query("split == 'test'")["cv_id"])
    return [c for c in pq.read_table(root / "jobs" / "synth" / "cvs.parquet").to_pylist() if c["cv_id"] in held_out][:n]


def test_reward_model_learns_the_fit_and_resumes(market, reward_model):
    from genrec.train.reward import train_reward

    metrics = reward_model
    assert metrics["pairwise_acc"] > 0.65  # chance is 0.5
    assert metrics["auc"] > 0.6
    scorer = R.load_reward(market / "rm")
    assert scorer.info["metrics"]["pairwise_acc"] == metrics["pairwise_acc"]
    inter = pd.read_parquet(market / "jobs" / "interactions" / "test.parquet")
    truth = pd.read_parquet(market / "jobs" / "synth" / "truth.parquet")
    inter = inter.merge(truth, on=["cv_id", "jd_id"])
    assert spearman(scorer.score(inter["cv_text"].tolist(), inter["jd_text"].tolist()), inter["true_fit"]) > 0.25

    # A rerun with the same out_dir resumes from the last checkpoint (the finished step): no step trains again.
    lines = (market / "rm" / "metrics.jsonl").read_text().splitlines()
    # The worker trained on both CPUs it reserved (cpus_per_worker=2; Ray's default would give it one thread).
    assert {json.loads(line)["torch_threads"] for line in lines if "loss" in json.loads(line)} == {2}
    train_reward(reward_config(market))
    assert (market / "rm" / "metrics.jsonl").read_text().splitlines() == lines
    assert json.loads((market / "rm" / "final" / "genrec.json").read_text())["train"]["step"] == 300


def test_generator_sft_lowers_validation_loss_and_its_jds_fit_better_than_random_jds(market, generator):
    from genrec.girl.recommend import JDGenerator

    lines = [json.loads(line) for line in (market / "gen" / "metrics.jsonl").read_text().splitlines()]
    valid = [(m["step"], m["valid_loss"]) for m in lines if "valid_loss" in m]
    assert valid[0][0] == 0 and valid[-1][0] == 600, valid
    assert valid[-1][1] < 0.15 * valid[0][1], valid  # ln(1000) ≈ 6.9 at step 0

    cvs = held_out_cvs(market, 40)
    assert len(cvs) == 40
    texts = JDGenerator(market / "gen" / "final", device="cpu", max_new_tokens=96).generate([c["text"] for c in cvs])
    generated = np.array([fit_of_text(c, t) for c, t in zip(cvs, texts)])
    jds = pq.read_table(market / "jobs" / "synth" / "jds.parquet").to_pylist()
    rng = np.random.default_rng(0)
    random_jds = np.array([np.mean([true_fit(c, jds[j]) for j in rng.integers(len(jds), size=10)]) for c in cvs])
    assert generated.mean() > random_jds.mean() + 0.2, (generated.mean(), random_jds.mean(), texts[:3])
    # ... first of all because it writes the CV's own role, which random JDs rarely have
    roles = np.mean([parse_jd_text(t)["role"] == c["true_role"] for c, t in zip(cvs, texts)])
    assert roles > 0.6, texts[:5]


def test_ray_data_actors_generate_what_the_generator_writes_in_process_in_cv_order(market, generator):
    from genrec.girl.recommend import JDGenerator, generate_with_ray_data

    cvs = [c["text"] for c in held_out_cvs(market, 12)]
    in_process = JDGenerator(market / "gen" / "final", device="cpu", max_new_tokens=48).generate(cvs, batch_size=4)
    assert len(set(in_process)) >= len(cvs) // 2  # most CVs get a JD of their own, so the order is checked
    on_ray = generate_with_ray_data(market / "gen" / "final", cvs, num_actors=2, cpus_per_actor=0.5, batch_size=4,
                                    max_new_tokens=48)
    assert on_ray == in_process


def test_grpo_with_the_tfidf_pair_reward_raises_the_true_fit_on_held_out_cvs(market, generator):
    """On CVs RL never saw, the learned reward rises, the JDs keep their length within 20%, and the
    hidden true fit rises clearly (measured 0.600 -> 0.665, JDs 62 -> 71 tokens): the TF-IDF pair
    reward (JD words and CV x JD word pairs) ranks the generator's own JDs much as the true fit does
    (bench/results/ppo_market.md), and GRPO compares 4 JDs per CV. With the shared-words TF-IDF model
    40 iterations learned to drop "remote" and gained 0.02."""
    from genrec.rl.loop import EVAL_FILE, read_metrics, run_ppo
    from genrec.train.reward import train_reward

    train_reward(RewardConfig(data_dir=str(market / "jobs"), out_dir=str(market / "rm_tfidf"), backbone="tfidf"))
    out = market / "grpo"
    cfg = PPOConfig(policy_dir=str(market / "gen" / "final"), prompts_path=str(market / "jobs" / "cvs.parquet"),
                    truth_path=str(market / "jobs" / "synth" / "cvs.parquet"), prompt_split="train",
                    reward="learned", reward_path=str(market / "rm_tfidf" / "final"), out_dir=str(out),
                    advantage="grpo", rollout_batch_size=12, samples_per_prompt=4, iterations=20, max_new_tokens=96,
                    num_rollout_workers=1, lr=1e-4, init_kl_coef=0.05, score_norm=True, score_clip=5.0,
                    eval_size=60, eval_split="test", eval_samples=2, worker_cpus=0.25, learner_cpus=0.5,
                    torch_threads=1, save_every=100, seed=0)
    result = run_ppo(cfg)
    evals = read_metrics(out, EVAL_FILE)
    assert [e["iteration"] for e in evals] == [0, 20] and result["eval"] == evals
    before, after = evals
    assert before["responses"] == after["responses"] >= 80  # every held-out CV (~44), twice
    assert after["reward_mean"] > before["reward_mean"] + 0.2, evals
    assert 0.8 * before["response_length"] < after["response_length"] < 1.2 * before["response_length"], evals
    assert after["true_fit"] > before["true_fit"] + 0.04, evals
    rows = read_metrics(out)
    assert len(rows) == 20 and all(r["responses"] == 48 for r in rows)
    assert "eval/true_fit" in rows[0] and "eval/true_fit" not in rows[1]


def test_ppo_on_the_true_fit_scores_held_out_cvs_of_another_split(market, generator):
    """reward=true_fit with the evaluation on the test split: the scorer must know those CVs' hidden
    fields too (it once knew only the training split's and failed), and the evaluation's reward is
    then exactly its true fit."""
    from genrec.rl.loop import EVAL_FILE, read_metrics, run_ppo

    out = market / "ppo_true_fit"
    run_ppo(PPOConfig(policy_dir=str(market / "gen" / "final"), prompts_path=str(market / "jobs" / "cvs.parquet"),
                      truth_path=str(market / "jobs" / "synth" / "cvs.parquet"), prompt_split="train",
                      reward="true_fit", out_dir=str(out), iterations=1, rollout_batch_size=8, max_new_tokens=96,
                      num_rollout_workers=1, eval_size=10, eval_split="test", eval_samples=1, worker_cpus=0.25,
                      learner_cpus=0.5, torch_threads=1, seed=0, compile_cpu=False))  # one iteration: no compile
    for e in read_metrics(out, EVAL_FILE):
        assert e["reward_mean"] == pytest.approx(e["true_fit"], abs=1e-6)
    rows = read_metrics(out)
    assert rows[0]["reward_mean"] == pytest.approx(rows[0]["true_fit"], abs=1e-6)
