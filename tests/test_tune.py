"""`genrec tune` on real Ray Tune + Ray Train (CPU): two tiny trials per stage, the better one wins;
the SFT sweep runs the default scheduler, ASHA, which stops the trailing trial mid-run."""
import json
import time

import pandas as pd
import yaml

from conftest import synth_and_prepare, wait_until_cluster_idle
from genrec.cli import main
from genrec.config import SFTConfig
from genrec.config_loader import load_config


def test_tune_picks_the_trial_with_the_good_learning_rate_on_cpu(ray_session, tmp_path):
    synth_and_prepare(tmp_path, num_users=120, num_items=200, history_len=8)
    base = dict(data_dir=str(tmp_path / "prepared"), model="tiny", tiny=dict(vocab_size=512, hidden=32, heads=2),
                max_len=192, micro_batch_tokens=768, warmup_steps=1, max_steps=8, eval_every=4,
                log_every=4, valid_rows=48, ray_train=dict(num_workers=1))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    tune_yaml = {
        "stage": "train-sft", "base_config": str(tmp_path / "base.yaml"),
        # 1e-7 barely moves the weights: its validation loss stays near ln(vocab). A section's key is
        # dotted, and merges with the section of base_config.
        "search_space": {"lr": {"grid": [5e-3, 1e-7]}, "tiny.layers": 1}, "num_samples": 1,
        # The default scheduler, ASHA, with a rung at every report. One trial at a time, in grid order:
        # 5e-3 runs first and sets the rungs; 1e-7 ties it at step 0 (same initial weights), trails it
        # at step 4, and ASHA stops it there, before step 8.
        "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 1, "out_dir": str(tmp_path / "tune"),
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tune_yaml))

    assert main(["tune", "--config", str(tmp_path / "tune.yaml")]) == 0
    out = tmp_path / "tune"
    best = json.loads((out / "best.json").read_text())
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and set(results["lr"]) == {1e-7, 5e-3}
    assert best["lr"] == 5e-3 and best["status"] == "finished" and best["step"] == 8
    bad = results[results["lr"] == 1e-7].iloc[0]
    assert bad["status"] == "stopped early" and bad["reports"] == 2 and bad["step"] == 4, results.to_string()
    assert best["best_valid_loss"] < bad["best_valid_loss"] - 0.2, results.to_string()
    # The stopped trial's Ray Train controller died with it; its workers' placement group (1 CPU)
    # must not outlive it, or every later trial and test on these 2 CPUs waits for that CPU.
    wait_until_cluster_idle()
    assert "| trial |" in (out / "results.md").read_text()
    # The winner's config trains with `genrec train-sft --config best_config.yaml` as is.
    cfg = load_config(SFTConfig, out / "best_config.yaml")
    assert cfg.lr == 5e-3 and cfg.max_steps == 8 and cfg.out_dir == str(out / "best_run")
    assert (cfg.tiny.layers, cfg.tiny.hidden) == (1, 32)
    # A trial's Ray Train run does not retry itself (a retry racing the trial's stop strands a
    # placement group); Tune retries the trial, and the winner's config gets the retries back.
    trial_cfg = load_config(SFTConfig, out / "trials" / best["trial"] / "config.yaml")
    assert trial_cfg.ray_train.max_failures == 0 and cfg.ray_train.max_failures == SFTConfig().ray_train.max_failures > 0
    assert (out / "trials" / best["trial"] / "best" / "genrec.json").exists()
    # Both trials tokenized nothing themselves: the shards were built once and linked.
    assert (out / "trials" / best["trial"] / "tokens").is_symlink()
    # The sweep's report plots both trials' validation losses.
    report = (out / "report.md").read_text()
    assert "![valid_loss_per_trial](plots/valid_loss_per_trial.png)" in report
    assert (out / "plots" / "valid_loss_per_trial.png").stat().st_size > 1000


def test_workers_ask_this_rays_state_api_whether_an_actor_lives(ray_session):
    """What Ray Train's placement-group cleaner asks, from a worker, before it removes a run's placement
    group: is the controller alive? The answer must come from this Ray, not from no one (the group
    of a stopped trial stays) or another Ray on the machine (a live run's group goes)."""
    import ray
    from ray.util.state import get_actor

    @ray.remote(num_cpus=0)
    class Alive:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    @ray.remote(num_cpus=0)
    def state_of(actor_id: str):
        actor = get_actor(actor_id, timeout=10)
        return actor.state if actor else None

    alive = Alive.remote()
    actor_id = ray.get(alive.actor_id.remote())
    assert ray.get(state_of.remote(actor_id)) == "ALIVE"
    ray.kill(alive)
    deadline = time.monotonic() + 30
    while (state := ray.get(state_of.remote(actor_id))) != "DEAD":
        assert time.monotonic() < deadline, f"a killed actor is still {state} to the state API after 30 s"


def sweep_two_learning_rates(tmp_path, stage: str, base: dict):
    """`genrec tune` over lr in {1e-7, 3e-3} (FIFO: both run to the end): (out, results, best, the 1e-7 row)."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    tune_yaml = {"stage": stage, "base_config": str(tmp_path / "base.yaml"),
                 "search_space": {"lr": {"grid": [1e-7, 3e-3]}}, "num_samples": 1, "scheduler": "fifo",
                 "out_dir": str(tmp_path / "tune")}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tune_yaml))
    assert main(["tune", "--config", str(tmp_path / "tune.yaml")]) == 0
    out = tmp_path / "tune"
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and set(results["status"]) == {"finished"}, results.to_string()
    wait_until_cluster_idle()
    return out, results, json.loads((out / "best.json").read_text()), results[results["lr"] == 1e-7].iloc[0]


def test_tune_reward_picks_the_trial_that_learns_on_cpu(ray_session, tmp_path):
    from genrec.config import PrepareJobsConfig, RewardConfig
    from genrec.girl.prepare import prepare_jobs

    # Random negatives only (another role, mostly): pairs that 60 tiny steps can learn, since this test is
    # about Tune picking the better trial, not about the reward model; ~90 validation CVs for a steady accuracy.
    prepare_jobs(PrepareJobsConfig(out_dir=str(tmp_path / "jobs"), synth_num_cvs=300, synth_num_jds=150, seed=1,
                                   valid_share=0.3, observed_negatives=0, hard_negatives=0, related_negatives=0,
                                   random_negatives=2, truncated_negatives=0))
    out, results, best, bad = sweep_two_learning_rates(tmp_path, "train-reward", dict(
        data_dir=str(tmp_path / "jobs"), backbone="tiny", tiny=dict(vocab_size=600, hidden=64, layers=1, heads=2),
        max_len=160, batch_size=32, warmup_steps=2, max_steps=60, eval_every=30, log_every=30))
    assert results["reports"].tolist() == [2, 2]  # validation at steps 30 and 60
    assert best["lr"] == 3e-3 and best["valid_pairwise_acc"] > bad["valid_pairwise_acc"] + 0.05, results.to_string()
    assert (out / "trials" / best["trial"] / "final" / "genrec.json").exists()
    cfg = load_config(RewardConfig, out / "best_config.yaml")
    assert cfg.lr == 3e-3 and cfg.out_dir == str(out / "best_run")


def test_tune_ppo_picks_the_trial_whose_reward_rises_on_cpu(ray_session, tmp_path):
    from genrec.config import PPOConfig
    from genrec.rl.toy import make_toy_task

    task = make_toy_task(tmp_path / "task")
    out, results, best, bad = sweep_two_learning_rates(tmp_path, "ppo", dict(
        task, prompt_format="raw", reward="count", reward_word="yes", iterations=6, rollout_batch_size=32,
        max_new_tokens=8, num_rollout_workers=1, ppo_epochs=2, minibatch_size=16, value_lr=1e-2,
        kl_controller="fixed", init_kl_coef=0.5, save_every=3, worker_cpus=0.25, learner_cpus=0.25,
        torch_threads=1, seed=7, compile_cpu=False))  # 8-token rollouts: compiling would cost more than it saves
    assert results["iteration"].tolist() == [6, 6] and results["reports"].tolist() == [6, 6]
    assert best["lr"] == 3e-3 and best["reward_mean"] > bad["reward_mean"] + 1.0, results.to_string()
    assert "kl" in results.columns
    cfg = load_config(PPOConfig, out / "best_config.yaml")
    assert cfg.lr == 3e-3 and cfg.out_dir == str(out / "best_run")
    assert "![reward_mean_per_trial](plots/reward_mean_per_trial.png)" in (out / "report.md").read_text()
