"""Item-token models whose item embeddings start from the titles (`item_init`), against the same model
from random init: HR@10 / NDCG@10 over all test users and over the long tail (test users whose
target item is seen fewer than 5 times in training).

    python bench/item_init.py                                  # ML-100K; writes bench/results/item_init.{json,md}
    python bench/item_init.py --inits random,minilm --epochs 20 --seeds 0
    python bench/item_init.py --data toys --inits minilm,random   # bench/results/item_init_toys.{json,md}
    python bench/item_init.py --render                         # every item_init*.md from its JSON

Per data set: `genrec prepare` (ML-100K: configs/prepare_ml100k.yaml with samples_per_user=1 and
history_len=50; Toys: configs/prepare_toys_sequence.yaml) into bench/work/item_init/<data>/prepared,
then for each init and seed `genrec train-sft` (format=item_ids, item_tokens=true; ML-100K: the
RECIPE below, Toys: configs/sft_toys_item_ids.yaml; best checkpoint by validation HR@10 over every
validation user) and `genrec evaluate` on the test split (every user, full ranking by one softmax
over the item tokens). Counts of the long tail come from the training parts, as the most-popular
baseline counts (genrec.rec.baselines).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common import RESULTS, ROOT, WORK, add_render_flag, generated_by, relative, render_results, table, utc_now, \
    versions, write_results

OUT = WORK / "item_init"
TAIL = 5  # a long-tail item: fewer than this many training interactions
RECIPE = dict(model="tiny", format="item_ids", item_tokens=True, max_len=128, micro_batch_tokens=4096, lr=2e-3,
              warmup_steps=50, weight_decay=0.0, log_every=50, save_every=0, valid_rows=0,
              tiny=dict(vocab_size=4096, hidden=64, layers=2, heads=2, dropout=0.1, embedding_dropout=0.2),
              ray_train=dict(num_workers=1, cpus_per_worker=2))


# data set -> (its prepare config and overrides, its SFT config: None for RECIPE)
DATA = {
    "ml100k": ("prepare_ml100k.yaml", ["samples_per_user=1", "history_len=50"], None),
    "toys": ("prepare_toys_sequence.yaml", [], "sft_toys_item_ids.yaml"),
}


# data set -> its random-init model measured before in this harness with the same SFT config: (results
# file, row). Used when a run has no random row of its own.
RANDOM_TWINS = {"toys": ("quality_toys.json", "genrec_cli")}


def random_twin(data: str) -> dict | None:
    if data not in RANDOM_TWINS:
        return None
    name, row = RANDOM_TWINS[data]
    twin = json.loads((RESULTS / name).read_text())[row]
    return {"source": f"bench/results/{name}", "row": row, "date": twin["date"], "hr@10": twin["hr@10"],
            "ndcg@10": twin["ndcg@10"], "valid_hr@10": twin.get("best_valid_hr@10"), "train_s": twin["train_s"]}


def results_path(data: str) -> Path:
    return RESULTS / ("item_init.json" if data == "ml100k" else f"item_init_{data}.json")


def recipe_of(data: str) -> dict:
    """The SFT settings every init of `data` trains with (data_dir, out_dir and item_init set per run)."""
    sft_config = DATA[data][2]
    if sft_config is None:
        return dict(RECIPE)
    import yaml

    recipe = yaml.safe_load((ROOT / "configs" / sft_config).read_text())
    return {k: v for k, v in recipe.items() if k not in ("data_dir", "out_dir")}


def prepare_data(data: str) -> Path:
    from genrec.config import PrepareConfig
    from genrec.config_loader import load_config
    from genrec.data.prepare import prepare

    config, overrides, _ = DATA[data]
    target = OUT / data / "prepared"
    if not (target / "stats.json").exists():
        prepare(load_config(PrepareConfig, ROOT / "configs" / config, [f"out_dir={target}", *overrides]))
    return target


def train_and_evaluate(prepared: Path, recipe: dict, init: str, seed: int) -> dict:
    from genrec.config import EvaluateConfig, SFTConfig
    from genrec.config_loader import from_dict
    from genrec.rec.evaluate import evaluate
    from genrec.train.launch import train_sft

    run = prepared.parent / f"{init}_s{seed}"
    if not (run / "sft" / "final" / "genrec.json").exists():
        started = time.perf_counter()
        users = len(pq.read_table(prepared / "valid", columns=["user_id"]))
        train_sft(from_dict(SFTConfig, dict(recipe, data_dir=str(prepared), out_dir=str(run / "sft"), item_init=init,
                                            seed=seed, valid_rank_users=users)))
        (run / "train_s.json").write_text(json.dumps({"train_s": time.perf_counter() - started}))
    train_s = trained_seconds(run)
    report = evaluate(EvaluateConfig(data_dir=str(prepared), checkpoint_dir=str(run / "sft" / "best"), split="test",
                                     out_dir=str(run / "eval"), ks=[10], top_k=10, max_len=recipe["max_len"]))
    best = json.loads((run / "sft" / "best" / "genrec.json").read_text())["metrics"]
    return {"init": init, "seed": seed, "train_s": train_s, "best_step": best.get("step"),
            "valid_hr@10": best.get("valid_hr@10"), **split_metrics(prepared, run / "eval" / "per_user.parquet"),
            "overall_reported": report["metrics"]}


def trained_seconds(run: Path) -> float:
    """The train-sft wall time of a run: measured around the call (train_s.json), or for a run that a
    killed bench left behind, from its folder (config.yaml is written first, final/genrec.json last)."""
    if (run / "train_s.json").exists():
        return json.loads((run / "train_s.json").read_text())["train_s"]
    return (run / "sft" / "final" / "genrec.json").stat().st_mtime - (run / "sft" / "config.yaml").stat().st_mtime


def split_metrics(prepared: Path, per_user_path: Path) -> dict:
    """HR@10 and NDCG@10 over all test users and over those whose target is a long-tail item."""
    from genrec.rec.baselines import MostPopular, load_sequences
    from genrec.rec.metrics import hit_rate_at_k, ndcg_at_k

    sequences = load_sequences(prepared)
    counts = MostPopular(len(sequences.item_ids)).fit(sequences.training_parts()).counts
    index = {item: i for i, item in enumerate(sequences.item_ids)}
    per_user = pq.read_table(per_user_path)
    ranked = np.array(per_user.column("ranked_items").to_pylist(), dtype=np.int64)
    targets = np.array([index[str(t)] for t in per_user.column("target_item_id").to_pylist()], dtype=np.int64)
    tail = counts[targets] < TAIL
    out = {"users": int(len(targets)), "tail_users": int(tail.sum())}
    for name, mask in (("all", np.ones_like(tail)), ("tail", tail)):
        out[f"{name}_hr@10"] = hit_rate_at_k(ranked[mask], targets[mask], 10) if mask.any() else None
        out[f"{name}_ndcg@10"] = ndcg_at_k(ranked[mask], targets[mask], 10) if mask.any() else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="ml100k", choices=sorted(DATA))
    parser.add_argument("--inits", default="random,minilm,smollm2-135m")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, help="default: 60 on ML-100K, the SFT config's on Toys")
    parser.add_argument("--eval-every", type=int, help="default: 100 on ML-100K, the SFT config's on Toys")
    add_render_flag(parser, "bench/results/item_init*.md")
    args = parser.parse_args()
    if args.render:
        for path in sorted(RESULTS.glob("item_init*.json")):
            render_results(path, render_markdown)
        return
    from genrec.runtime import init_ray

    init_ray()
    path = results_path(args.data)
    prepared = prepare_data(args.data)
    recipe = recipe_of(args.data)
    if DATA[args.data][2] is None:
        recipe.update(epochs=60, eval_every=100)
    recipe.update({k: v for k, v in (("epochs", args.epochs), ("eval_every", args.eval_every)) if v is not None})
    rows = [train_and_evaluate(prepared, recipe, init, int(seed))
            for seed in args.seeds.split(",") for init in args.inits.split(",")]
    if path.exists():  # rows of earlier runs with the same data and recipe stay, the new ones replace theirs
        earlier = json.loads(path.read_text())
        if earlier["data"] == args.data and earlier["recipe"] == json.loads(json.dumps(recipe)):
            fresh = {(row["init"], row["seed"]) for row in rows}
            rows = [row for row in earlier["rows"] if (row["init"], row["seed"]) not in fresh] + rows
    results = {"data": args.data, "prepared": relative(prepared), "tail_below": TAIL, "recipe": recipe, "rows": rows,
               "measured": utc_now(), "versions": versions("torch", "transformers", "ray", "python")}
    if not any(row["init"] == "random" for row in rows) and random_twin(args.data):
        results["random_twin"] = random_twin(args.data)
    print(write_results(path, results, render_markdown))


def render_markdown(results: dict) -> str:
    r = results["recipe"]
    order = {init: i for i, init in enumerate(("random", "minilm", "smollm2-135m"))}
    rows = sorted(results["rows"], key=lambda row: (order.get(row["init"], len(order)), row["init"], row["seed"]))
    lines = [
        f"# Item embeddings from titles: {results['data']}", "",
        generated_by("python bench/item_init.py --render"), "",
        f"Measured {results['measured']} on this 2-core CPU ({', '.join(f'{k} {v}' for k, v in results['versions'].items())}). "
        f"`genrec train-sft` format=item_ids, item_tokens=true: tiny Llama hidden {r['tiny']['hidden']}, "
        f"{r['tiny']['layers']} layers, {r['tiny']['heads']} heads, dropout {r['tiny']['dropout']}, embedding dropout "
        f"{r['tiny']['embedding_dropout']}, lr {r['lr']}, {r['epochs']} epochs, max_len {r['max_len']}, micro_batch_tokens "
        f"{r['micro_batch_tokens']}; best checkpoint by validation HR@10 (every {r['eval_every']} steps, every "
        f"validation user). Test split, every user, full ranking by one softmax over the item tokens. Long tail: "
        f"test users whose target item has fewer than {results['tail_below']} training interactions "
        f"({rows[0]['tail_users']} of {rows[0]['users']} users).", "",
        "`item_init`: random is the model's own init; minilm and smollm2-135m start each item's row from its title "
        "mean-pooled by that encoder, PCA-projected to the model width (genrec/models/item_init.py).", "",
    ]
    lines += table(["item_init", "seed", "HR@10", "NDCG@10", "long tail HR@10", "long tail NDCG@10",
                    "valid HR@10", "best step", "train s"],
                   [[row["init"], row["seed"], f"{row['all_hr@10']:.4f}", f"{row['all_ndcg@10']:.4f}",
                     f"{row['tail_hr@10']:.4f}" if row["tail_hr@10"] is not None else "",
                     f"{row['tail_ndcg@10']:.4f}" if row["tail_ndcg@10"] is not None else "",
                     f"{row['valid_hr@10']:.4f}" if row.get("valid_hr@10") is not None else "", row["best_step"],
                     f"{row['train_s']:.0f}"] for row in rows])
    inits = list(dict.fromkeys(row["init"] for row in rows))
    means = []
    for init in inits:
        mine = [row for row in rows if row["init"] == init]
        if len(mine) > 1:
            means.append([init, len(mine)] + [f"{np.mean([row[key] for row in mine]):.4f}" for key in
                                              ("all_hr@10", "all_ndcg@10", "tail_hr@10", "tail_ndcg@10")])
    if means:
        lines += ["", "Mean over seeds:", ""]
        lines += table(["item_init", "seeds", "HR@10", "NDCG@10", "long tail HR@10", "long tail NDCG@10"], means)
    twin = results.get("random_twin")
    if twin:
        best = max(rows, key=lambda row: row["all_hr@10"])
        lines += ["", f"Random init is not rerun here: its twin is the `{twin['row']}` row of {twin['source']}, the "
                      f"same SFT config through `genrec train-sft` and `genrec evaluate` on the same split, measured "
                      f"{twin['date']}: HR@10 {twin['hr@10']:.4f}, NDCG@10 {twin['ndcg@10']:.4f}, best validation HR@10 "
                      f"{twin['valid_hr@10']:.4f} ({twin['train_s']:.0f} s of training, idle machine). "
                      f"{best['init']} against it: {best['all_hr@10'] / twin['hr@10']:.2f}x HR@10, "
                      f"{best['all_ndcg@10'] / twin['ndcg@10']:.2f}x NDCG@10. Its long tail was not measured."]
    lines += ["", "train s: wall time of the train-sft run (title encoding, when not cached, included) on a machine "
                  "that other jobs shared part of the time: not a speed figure."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
