"""Does PPO raise the hidden true fit? PPO variants on one synthetic job market, held-out CVs.

One market (500 CVs, 300 JDs, seed 1, truncated negatives), one tiny reward model (300 steps), one
TF-IDF reward model, one JD generator (tiny h96 x 2 layers, 600 steps): the setup of
tests/test_girl_market.py. Then PPO variants from that generator, each evaluated on the same 44
test-split CVs x 2 samples with the same seeds before and after (eval.jsonl): the learned reward,
the hidden true fit (genrec.girl.true_fit.fit_of_text), the response length. `true_fit_reward`
trains on the true fit itself: the ceiling of this PPO budget.

    python bench/ppo_market.py                       # every variant (about 10 min on 2 CPUs)
    python bench/ppo_market.py --variants tiny_rm,true_fit_reward
    python bench/ppo_market.py --collect             # only rewrite the JSON/markdown from the runs
    python bench/ppo_market.py --render              # only rewrite the markdown from the JSON

Writes bench/results/ppo_market.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time

from common import RESULTS as RESULTS_DIR, WORK as BENCH_WORK, add_render_flag, generated_by, render_results, table, \
    write_results

WORK = BENCH_WORK / "ppo_market"
RESULTS = RESULTS_DIR / "ppo_market"

VARIANTS = {  # name -> PPOConfig overrides of BASE
    "tiny_rm": {},
    "tiny_rm_off_policy": dict(off_policy=True),
    "tiny_rm_kl0.2": dict(init_kl_coef=0.2, kl_controller="fixed"),
    "tfidf_rm": dict(reward_path=str(WORK / "rm_tfidf" / "final")),
    "true_fit_reward": dict(reward="true_fit"),
    "tiny_rm_60": dict(iterations=60),
    "tiny_rm_60_lr3e-4": dict(iterations=60, lr=3e-4),
    "true_fit_60": dict(iterations=60, reward="true_fit"),
}


def build_market() -> None:
    """Market, reward models and generator, each skipped when its output exists."""
    from genrec.config import PrepareJobsConfig, RewardConfig, SFTConfig

    if not (WORK / "jobs").exists():
        from genrec.girl.prepare import prepare_jobs

        prepare_jobs(PrepareJobsConfig(out_dir=str(WORK / "jobs"), synth_num_cvs=500, synth_num_jds=300, seed=1,
                                       truncated_negatives=1))
    from genrec.train.reward import train_reward

    if not (WORK / "rm" / "final").exists():
        train_reward(RewardConfig(data_dir=str(WORK / "jobs"), out_dir=str(WORK / "rm"), backbone="tiny", vocab_size=1000,
                                  tiny_hidden=64, tiny_layers=2, max_len=192, batch_size=32, lr=1e-3, warmup_steps=10,
                                  max_steps=300, log_every=50, eval_every=150, save_every=150, seed=0))
    if not (WORK / "rm_tfidf" / "final").exists():
        train_reward(RewardConfig(data_dir=str(WORK / "jobs"), out_dir=str(WORK / "rm_tfidf"), backbone="tfidf", seed=0))
    if not (WORK / "gen" / "final").exists():
        from genrec.train.launch import train_sft

        train_sft(SFTConfig(data_dir=str(WORK / "jobs" / "sft"), out_dir=str(WORK / "gen"), model="tiny",
                            vocab_size=1000, tiny_hidden=96, tiny_layers=2, tiny_heads=4, max_len=384,
                            micro_batch_tokens=2048, lr=2e-3, warmup_steps=10, max_steps=600, eval_every=300,
                            save_every=1000, log_every=100, num_workers=1))


def base_config() -> dict:
    return dict(policy_dir=str(WORK / "gen" / "final"), prompts_path=str(WORK / "jobs" / "cvs.parquet"),
                truth_path=str(WORK / "jobs" / "synth" / "cvs.parquet"), prompt_split="train",
                reward="learned", reward_path=str(WORK / "rm" / "final"), iterations=20,
                rollout_batch_size=48, max_new_tokens=96, num_rollout_workers=1, lr=1e-4, init_kl_coef=0.05,
                score_norm=True, score_clip=5.0, eval_size=60, eval_split="test", eval_samples=2, eval_every=20,
                worker_cpus=0.25, learner_cpus=0.5, torch_threads=1, save_every=100, seed=0)


def collect() -> dict:
    from genrec.rl.loop import EVAL_FILE, read_metrics

    runs = {}
    for name, overrides in VARIANTS.items():
        out = WORK / f"ppo_{name}"
        evals = read_metrics(out, EVAL_FILE)
        if not evals:
            continue
        timing = json.loads((out / "wall_s.json").read_text()) if (out / "wall_s.json").exists() else {}
        runs[name] = {"overrides": overrides, "evals": evals, **timing,
                      "kl_last": read_metrics(out)[-1].get("kl") if read_metrics(out) else None}
    return {"market": "500 CVs, 300 JDs, seed 1, truncated negatives 1", "base": base_config(), "runs": runs}


def render_markdown(result: dict) -> str:
    lines = ["# PPO on the synthetic job market: learned reward vs hidden true fit", "",
             generated_by("python bench/ppo_market.py --render"), "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "Wall times are from a shared 2-CPU machine with other jobs running: rough.", ""]
    base, rows = result["base"], []
    for name, run in result["runs"].items():
        first, last = run["evals"][0], run["evals"][-1]
        its = run["overrides"].get("iterations", base["iterations"])
        reward = "(the true fit)" if run["overrides"].get("reward") == "true_fit" else \
            f"{first['reward_mean']:.3f} -> {last['reward_mean']:.3f}"
        rows.append([name, f"{its} x {base['rollout_batch_size']}", reward,
                     f"{first['true_fit']:.3f} -> {last['true_fit']:.3f}", f"{last['true_fit'] - first['true_fit']:+.3f}",
                     f"{first['response_length']:.1f} -> {last['response_length']:.1f}",
                     run["kl_last"] if run["kl_last"] is None else round(run["kl_last"], 2), run.get("wall_s", "")])
    lines += table(["variant", "iterations x CVs", "learned reward before -> after", "true fit before -> after", "change",
                    "length before -> after", "KL (last iteration)", "wall s"], rows, "llllrlrr")
    lines += ["", "True fit at every evaluation (iterations 0, 20, 40, 60) of the longer runs:", ""]
    for name, run in result["runs"].items():
        if len(run["evals"]) > 2:
            fits = ", ".join(f"{e['true_fit']:.3f}" for e in run["evals"])
            lengths = ", ".join(f"{e['response_length']:.0f}" for e in run["evals"])
            lines.append(f"- {name}: {fits} (response length {lengths})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--collect", action="store_true")
    add_render_flag(parser, "ppo_market.md")
    args = parser.parse_args()
    if args.render:
        render_results(RESULTS.with_suffix(".json"), render_markdown)
        return
    if not args.collect:
        import ray

        from genrec.config import PPOConfig
        from genrec.rl.loop import run_ppo

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        build_market()
        for name in args.variants.split(","):
            out = WORK / f"ppo_{name}"
            started = time.time()
            run_ppo(PPOConfig(**{**base_config(), **VARIANTS[name], "out_dir": str(out)}))
            (out / "wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
        ray.shutdown()
    print(write_results(RESULTS.with_suffix(".json"), collect(), render_markdown))


if __name__ == "__main__":
    main()
