"""Does RL raise the hidden true fit? Reward models and RL methods on one synthetic job market.

One market (500 CVs, 300 JDs, seed 1, truncated negatives), a tiny reward model (300 steps), two TF-IDF
pair reward models (tfidf_shared: shared words only; tfidf: also JD words, bigrams and CV word x JD
word pairs, genrec/girl/tfidf_reward.py) and a JD generator (tiny h96 x 2 layers, 600 steps): the setup of
tests/test_girl_market.py. Three measurements:

agreement  How each reward ranks the generator's own JDs: 8 samples from the SFT generator for each
           test-split CV (44; at most 60), scored by the reward and by the hidden true fit
           (genrec.girl.metrics.agreement_on_samples), and pairwise accuracy per negative kind on the
           test preference rows, beside the true fit's own accuracy on the same rows (the oracle).
rl         RL from that generator with each method (ppo: a value head and GAE, one response per CV;
           grpo and rloo: 4 responses per CV compared with each other) and reward, over several
           seeds, each evaluated on the same 44 test-split CVs x 4 samples with the same seeds every
           `eval_every` iterations (eval.jsonl): the learned reward, the true fit, the response length.
           reward true_fit trains on the true fit itself: the ceiling of this budget.
recommend  Job recommendation (`genrec evaluate-jobs`: generate -> retrieve real JDs -> rerank) with
           the SFT generator and with RL runs' generators, beside the CV-embedding baseline.

    python bench/ppo_market.py agreement
    python bench/ppo_market.py rl --methods ppo,grpo,rloo --rewards tfidf --seeds 0,1,2
    python bench/ppo_market.py recommend --runs grpo_tfidf_s0,ppo_tfidf_s0
    python bench/ppo_market.py report            # the JSON and markdown from what bench/work holds
    python bench/ppo_market.py --render          # only the markdown from the JSON

Writes bench/results/ppo_market.{json,md}; each run stays in bench/work/ppo_market/<method>_<reward>_s<seed>.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

from common import RESULTS as RESULTS_DIR, WORK as BENCH_WORK, add_render_flag, generated_by, read_json, relative, \
    render_results, table, write_json, write_results

WORK = BENCH_WORK / "ppo_market"
RESULTS = RESULTS_DIR / "ppo_market"
REWARDS = {  # and true_fit
    "tiny": WORK / "rm" / "final",
    "tfidf_shared": WORK / "rm_tfidf_shared" / "final",  # shared words only
    "tfidf": WORK / "rm_tfidf" / "final",  # + JD words, bigrams, CV word x JD word pairs (the default)
}
GROUP = 4
METHODS = {  # PPOConfig overrides; every method samples 48 responses per iteration
    "ppo": dict(advantage="gae", rollout_batch_size=48, samples_per_prompt=1),
    "grpo": dict(advantage="grpo", rollout_batch_size=48 // GROUP, samples_per_prompt=GROUP),
    "rloo": dict(advantage="rloo", rollout_batch_size=48 // GROUP, samples_per_prompt=GROUP),
}
AGREEMENT_CVS, AGREEMENT_SAMPLES = 60, 8


def build_market() -> None:
    """Market, reward models and generator, each skipped when its output exists."""
    from genrec.config import PrepareJobsConfig, RayTrain, RewardConfig, SFTConfig, TfidfPairs, TinyModel
    from genrec.train.reward import train_reward

    if not (WORK / "jobs").exists():
        from genrec.girl.prepare import prepare_jobs

        prepare_jobs(PrepareJobsConfig(out_dir=str(WORK / "jobs"), synth_num_cvs=500, synth_num_jds=300, seed=1,
                                       truncated_negatives=1))
    if not REWARDS["tiny"].exists():
        train_reward(RewardConfig(data_dir=str(WORK / "jobs"), out_dir=str(WORK / "rm"), backbone="tiny",
                                  tiny=TinyModel(vocab_size=1000, hidden=64, layers=2), max_len=192, batch_size=32,
                                  lr=1e-3, warmup_steps=10, max_steps=300, log_every=50, eval_every=150,
                                  save_every=150, seed=0))
    if not REWARDS["tfidf_shared"].exists():
        train_reward(RewardConfig(data_dir=str(WORK / "jobs"), out_dir=str(WORK / "rm_tfidf_shared"), backbone="tfidf",
                                  tfidf=TfidfPairs(ngram_max=1, jd_words=False, word_pairs=False, C=10.0), seed=0))
    if not REWARDS["tfidf"].exists():
        train_reward(RewardConfig(data_dir=str(WORK / "jobs"), out_dir=str(WORK / "rm_tfidf"), backbone="tfidf", seed=0))
    if not (WORK / "gen" / "final").exists():
        from genrec.train.launch import train_sft

        train_sft(SFTConfig(data_dir=str(WORK / "jobs" / "sft"), out_dir=str(WORK / "gen"), model="tiny",
                            tiny=TinyModel(vocab_size=1000, hidden=96, layers=2, heads=4), max_len=384,
                            micro_batch_tokens=2048, lr=2e-3, warmup_steps=10, max_steps=600, eval_every=300,
                            save_every=1000, log_every=100, ray_train=RayTrain(num_workers=1)))


def base_config() -> dict:
    return dict(policy_dir=str(WORK / "gen" / "final"), prompts_path=str(WORK / "jobs" / "cvs.parquet"),
                truth_path=str(WORK / "jobs" / "synth" / "cvs.parquet"), prompt_split="train",
                iterations=40, max_new_tokens=96, num_rollout_workers=1, lr=1e-4, init_kl_coef=0.05,
                score_norm=True, score_clip=5.0, eval_size=60, eval_split="test", eval_samples=4, eval_every=10,
                worker_cpus=0.25, learner_cpus=0.5, torch_threads=1, save_every=100)


def reward_overrides(reward: str) -> dict:
    return dict(reward="true_fit") if reward == "true_fit" else dict(reward="learned", reward_path=str(REWARDS[reward]))


# ------------------------------------------------------------------------------ agreement
def truth_tables():
    import pyarrow.parquet as pq

    return {r["cv_id"]: r for r in pq.read_table(WORK / "jobs" / "synth" / "cvs.parquet").to_pylist()}


def sample_generator_jds(cvs: list[dict]) -> list[str]:
    """AGREEMENT_SAMPLES JDs per CV from the SFT generator (temperature 1, as RL samples), seeded."""
    import torch

    from genrec.girl.prompts import generator_prompt
    from genrec.models.loading import load_checkpoint

    torch.manual_seed(0)
    model, tokenizer, _ = load_checkpoint(WORK / "gen" / "final")
    model.eval()
    tokenizer.padding_side = "left"
    jds = []
    for cv in cvs:
        batch = tokenizer([generator_prompt(cv["text"])] * AGREEMENT_SAMPLES, return_tensors="pt",
                          split_special_tokens=True)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=96,
                                 pad_token_id=tokenizer.pad_token_id)
        jds += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return jds


def scorer(name: str, truth: dict):
    """score(cv_texts, cv_ids, jd_texts) -> array: a reward model's, or the hidden true fit's (by CV id)."""
    import numpy as np

    from genrec.girl.true_fit import fit_of_text

    if name == "true_fit":
        return lambda cv_texts, cv_ids, jd_texts: np.array([fit_of_text(truth[i], jd) for i, jd in zip(cv_ids, jd_texts)])
    from genrec.girl.reward import load_reward

    model = load_reward(REWARDS[name])
    return lambda cv_texts, cv_ids, jd_texts: np.asarray(model.score(list(cv_texts), list(jd_texts)), dtype=np.float64)


def agreement() -> dict:
    """Per reward: agreement with the true fit on the generator's samples, and pairwise accuracy by
    negative kind on the test preference rows; the true fit's own row beside them."""
    import numpy as np
    import pyarrow.parquet as pq

    from genrec.girl.metrics import agreement_on_samples, pairwise_accuracy
    from genrec.girl.true_fit import fit_of_text

    truth = truth_tables()
    cvs = [r for r in pq.read_table(WORK / "jobs" / "cvs.parquet").to_pylist() if r["split"] == "test"][:AGREEMENT_CVS]
    jds = sample_generator_jds(cvs)
    sources = [cv for cv in cvs for _ in range(AGREEMENT_SAMPLES)]
    fits = np.array([fit_of_text(truth[cv["cv_id"]], jd) for cv, jd in zip(sources, jds)])
    pairs = pq.read_table(WORK / "jobs" / "pairs" / "test.parquet").to_pandas()
    kinds = sorted(pairs["neg_kind"].unique())
    sample_cvs = ([cv["text"] for cv in sources], [cv["cv_id"] for cv in sources], jds)
    out = {}
    for name in (*REWARDS, "true_fit"):
        score = scorer(name, truth)
        samples = score(*sample_cvs)
        pos = score(pairs["cv_text"], pairs["cv_id"], pairs["pos_text"])
        neg = score(pairs["neg_cv_text"], pairs["neg_cv_id"], pairs["neg_text"])
        by_kind = {k: pairwise_accuracy(pos[(pairs["neg_kind"] == k).to_numpy()], neg[(pairs["neg_kind"] == k).to_numpy()])
                   for k in kinds}
        out[name] = {"samples": agreement_on_samples(samples, fits, AGREEMENT_SAMPLES),
                     "pairwise_acc": pairwise_accuracy(pos, neg), "by_kind": by_kind, "pairs": int(len(pairs))}
    write_json(WORK / "agreement.json", out)
    return out


# ------------------------------------------------------------------------------ job recommendation
def recommend(runs: list[str]) -> dict:
    """`genrec evaluate-jobs` on the test split with the SFT generator and with each RL run's final
    generator: the same JDs, embedder (minilm), reward (tfidf) and held-out CVs for all of them."""
    from genrec.config import EvaluateJobsConfig
    from genrec.girl.recommend import evaluate_jobs

    generators = {"sft": WORK / "gen" / "final", **{run: WORK / run / "final" for run in runs}}
    out = {}
    for name, generator in generators.items():
        report = evaluate_jobs(EvaluateJobsConfig(
            data_dir=str(WORK / "jobs"), generator_dir=str(generator), reward_dir=str(REWARDS["tfidf"]),
            out_dir=str(WORK / f"eval_jobs_{name}"), embedder="minilm", max_cvs=0, max_new_tokens=96,
            num_actors=2, cpus_per_actor=0.5))
        out[name] = {"cvs": report["cvs"], "jds": report["jds"], "methods": report["methods"],
                     "true_fit": report.get("true_fit", {})}
    write_json(WORK / "recommend.json", out)
    return out


# ------------------------------------------------------------------------------ RL runs
def run_name(method: str, reward: str, seed: int, tag: str = "") -> str:
    return f"{method}_{reward}{'_' + tag if tag else ''}_s{seed}"


def run_rl(methods, rewards, seeds, iterations: int, tag: str = "", extra: dict | None = None) -> None:
    """Each (reward, method, seed) run in WORK/<run_name>; `extra` PPOConfig overrides, named by `tag`."""
    import ray

    from genrec.config import PPOConfig
    from genrec.rl.loop import run_ppo

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for reward in rewards:
        for method in methods:
            for seed in seeds:
                out = WORK / run_name(method, reward, seed, tag)
                if (out / "run.json").exists():  # done: `report` collects it
                    continue
                started = time.time()
                overrides = {**METHODS[method], **reward_overrides(reward), "iterations": iterations, "seed": seed,
                             **(extra or {})}
                run_ppo(PPOConfig(**{**base_config(), **overrides, "out_dir": str(out)}))
                (out / "run.json").write_text(json.dumps({"method": method, "reward": reward, "seed": seed, "tag": tag,
                                                          "overrides": overrides,
                                                          "wall_s": round(time.time() - started, 1)}))
    ray.shutdown()


def repository_paths(config: dict) -> dict:
    """Path values made relative to the repository, so the JSON reads the same in every checkout."""
    return {k: relative(v) if isinstance(v, str) and v.startswith(str(WORK)) else v for k, v in config.items()}


def collect() -> dict:
    from genrec.rl.loop import EVAL_FILE, read_metrics

    runs = {}
    for marker in sorted(WORK.glob("*/run.json")):
        out = marker.parent
        metrics = read_metrics(out)
        run = json.loads(marker.read_text())
        runs[out.name] = {**run, "overrides": repository_paths(run["overrides"]), "evals": read_metrics(out, EVAL_FILE),
                          "kl_last": metrics[-1]["kl"] if metrics else None}
    agreement_file, recommend_file = WORK / "agreement.json", WORK / "recommend.json"
    return {"machine": f"{platform.machine()} CPU, 2 cores", "date": time.strftime("%Y-%m-%d"),
            "market": "500 CVs, 300 JDs, seed 1, truncated negatives 1", "base": repository_paths(base_config()),
            "methods": METHODS, "agreement": read_json(agreement_file) if agreement_file.exists() else {},
            "runs": runs, "recommend": read_json(recommend_file) if recommend_file.exists() else {}}


# ------------------------------------------------------------------------------ markdown
def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def render_markdown(result: dict) -> str:
    lines = ["# Reward models and RL on the synthetic job market: learned reward vs hidden true fit", "",
             generated_by("python bench/ppo_market.py --render"), "",
             __doc__.split("\n\n")[1].replace("\n", " ").replace(" Three measurements:", ""), "",
             f"Collected {result['date']} on {result['machine']} (when each part ran: bench/results/NOTES.md).", ""]
    if result["agreement"]:
        lines += render_agreement(result["agreement"])
    if result["runs"]:
        lines += render_runs(result)
    if result.get("recommend"):
        lines += render_recommend(result["recommend"])
    return "\n".join(lines) + "\n"


def render_recommend(recommend: dict) -> list[str]:
    first = next(iter(recommend.values()))
    rows = []
    for generator, report in recommend.items():
        for method, m in report["methods"].items():
            if generator != "sft" and not method.startswith("generate"):
                continue  # the same ranking whatever the generator
            rows.append([method if method.startswith("generate") else f"{method} (no generator)",
                         generator if method.startswith("generate") else "-",
                         *(f"{m[k]:.4f}" for k in ("hr@1", "hr@5", "hr@10", "ndcg@10")),
                         f"{report['true_fit'].get('top1_' + method, float('nan')):.3f}",
                         f"{report['true_fit']['generated_jd']:.3f}" if method.startswith("generate") else "-"])
    return ["## Job recommendation with the SFT and the RL generators (`genrec evaluate-jobs`)", "",
            f"{first['cvs']} test-split CVs, full ranking over {first['jds']} real JDs; the target is each CV's best "
            "matched JD (recruiter labels). The generated JD is embedded (minilm) to retrieve real JDs, then the "
            "tfidf reward reranks the top 50. True fit: of the top-ranked real JD, and of the generated JD itself.", "",
            *table(["method", "generator", "HR@1", "HR@5", "HR@10", "NDCG@10", "true fit of the top JD",
                    "true fit of the generated JD"], rows, "llrrrrrr"), ""]


def render_agreement(agreement: dict) -> list[str]:
    kinds = sorted(next(iter(agreement.values()))["by_kind"])
    rows = []
    for name, a in agreement.items():
        s = a["samples"]
        rows.append([name, f"{s['within_cv_spearman']:.3f}", f"{s['spearman']:.3f}", f"{s['best_of_n_fit']:.3f}",
                     f"{s['between_cv_share']:.2f}", f"{a['pairwise_acc']:.3f}",
                     *(f"{a['by_kind'][k]:.3f}" for k in kinds)])
    first = next(iter(agreement.values()))["samples"]
    return ["## How each reward ranks the SFT generator's own JDs", "",
            f"{first['groups']} test-split CVs x {AGREEMENT_SAMPLES} samples. A random sample has true fit "
            f"{first['mean_fit']:.3f}; the best of {AGREEMENT_SAMPLES} by the true fit {first['oracle_best_of_n_fit']:.3f}. "
            "Within-CV Spearman is what RL compares (responses to one CV); between-CV share is the part of the "
            "score's variance a value head must learn first. Pairwise accuracy is on the test preference rows, "
            "by negative kind; the true_fit row is the oracle's accuracy on the same rows (recruiter labels are noisy).", "",
            *table(["reward", "within-CV Spearman", "Spearman", f"true fit of its best of {AGREEMENT_SAMPLES}",
                    "between-CV share", "pairwise acc", *kinds], rows, "l" + "r" * (5 + len(kinds))), ""]


def render_runs(result: dict) -> list[str]:
    base, groups = result["base"], {}
    held_out_cvs = next(iter(result["runs"].values()))["evals"][0]["responses"] // base["eval_samples"]
    for name, run in result["runs"].items():
        groups.setdefault((run["method"], run["reward"], run.get("tag", "")), []).append(run)
    rows, curves = [], []
    for (method, reward, tag), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        changes = [r["evals"][-1]["true_fit"] - r["evals"][0]["true_fit"] for r in runs]
        before = _mean([r["evals"][0]["true_fit"] for r in runs])
        after = _mean([r["evals"][-1]["true_fit"] for r in runs])
        length_ratio = _mean([r["evals"][-1]["response_length"] / r["evals"][0]["response_length"] for r in runs])
        reward_text = "(the true fit)" if reward == "true_fit" else \
            f"{_mean([r['evals'][0]['reward_mean'] for r in runs]):.3f} -> {_mean([r['evals'][-1]['reward_mean'] for r in runs]):.3f}"
        its = runs[0]["overrides"]["iterations"]
        changed = {k: v for k, v in runs[0]["overrides"].items()  # what differs from the method's own setting
                   if k not in ("reward", "reward_path", "iterations", "seed") and METHODS[method].get(k, base.get(k)) != v}
        setting = ", ".join(f"{k} {v}" for k, v in changed.items()) or "-"
        rows.append([method, reward, setting, f"{len(runs)} ({', '.join(str(r['seed']) for r in runs)})", its,
                     reward_text, f"{before:.3f} -> {after:.3f}", f"{_mean(changes):+.3f}", f"{min(changes):+.3f}",
                     ", ".join(f"{c:+.3f}" for c in changes), f"{length_ratio:.2f}",
                     f"{_mean([r['kl_last'] for r in runs]):.2f}", f"{_mean([r['wall_s'] for r in runs]):.0f}"])
        points = list(zip(*[[e["true_fit"] for e in r["evals"]] for r in runs]))
        steps = [e["iteration"] for e in runs[0]["evals"]]
        curves.append(f"- {method}, {reward}{', ' + setting if changed else ''}, {its} iterations: " + ", ".join(f"{s}: {_mean(p):.3f}" for s, p in zip(steps, points)))
    return ["## RL from the SFT generator", "",
            f"48 responses per iteration (ppo: 48 CVs x 1; grpo, rloo: 12 CVs x {GROUP}), lr {base['lr']}, "
            f"initial KL coefficient {base['init_kl_coef']} (adaptive), scores normalised. Held-out: "
            f"{held_out_cvs} test CVs x {base['eval_samples']} samples. Length ratio: JD length after / before.", "",
            *table(["method", "reward", "setting", "seeds", "iterations", "learned reward before -> after",
                    "true fit before -> after", "mean change", "worst seed", "per seed", "length ratio",
                    "KL (last iteration)", "wall s"], rows, "llllrllrrlrrr"),
            "", "Held-out true fit at each evaluation (iteration: mean over seeds):", "", *curves, ""]


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["agreement", "rl", "recommend", "report"], default="report")
    parser.add_argument("--runs", default="", help="recommend: RL runs whose final generator to compare with SFT's")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rewards", default="tfidf")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=base_config()["iterations"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="rl: PPOConfig overrides of every run (numbers as JSON), e.g. lr=2e-4")
    parser.add_argument("--tag", default="", help="rl: a name for the --set overrides, part of the run names")
    add_render_flag(parser, "ppo_market.md")
    args = parser.parse_args()
    if args.render:
        render_results(RESULTS.with_suffix(".json"), render_markdown)
        return
    if args.command in ("agreement", "rl", "recommend"):
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        build_market()
        ray.shutdown()
    if args.command == "agreement":
        agreement()
    elif args.command == "recommend":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        recommend([r for r in args.runs.split(",") if r])
        ray.shutdown()
    elif args.command == "rl":
        extra = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
        if extra and not args.tag:
            parser.error("--set needs a --tag to name its runs")
        run_rl(args.methods.split(","), args.rewards.split(","), [int(s) for s in args.seeds.split(",")],
               args.iterations, args.tag, extra)
    print(write_results(RESULTS.with_suffix(".json"), collect(), render_markdown))


if __name__ == "__main__":
    main()
