"""cpus_per_worker: SFT and reward-model training speed on one Ray Train CPU worker, 1 core against N.

    python bench/worker_cpus.py                      # this machine's cores; tiny models, synthetic data
    python bench/worker_cpus.py --cpus 1 4 8 --steps 60

Ray sets a worker's OMP_NUM_THREADS, and so torch's thread count, to the CPUs the worker reserves:
Ray Train's default of one CPU a worker leaves the rest of a node idle when a run has fewer workers
than cores. Each setting runs the product's stages (genrec.train.launch.train_sft and
genrec.train.reward.train_reward, one worker, one after another, on the same prepared data in a local
Ray) and reads the throughput they log (metrics.jsonl: tokens_per_s, pairs_per_s), leaving out the
first log window (start-up and warm-up). Results: bench/results/worker_cpus.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from common import RESULTS, add_render_flag, generated_by, render_results, table, write_results


def steady(metrics_file: Path, key: str) -> tuple[float, list]:
    """Median of `key` over the log lines after the first, and the thread counts those lines report."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    rows = [r for r in rows if key in r][1:]
    return statistics.median(r[key] for r in rows), sorted({r["torch_threads"] for r in rows})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, os.cpu_count()])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS), help="folder of worker_cpus.json and .md")
    add_render_flag(parser, "worker_cpus.md")
    args = parser.parse_args(argv)
    if args.render:
        render_results(Path(args.out) / "worker_cpus.json", render_markdown)
        return 0

    from genrec.config import PrepareJobsConfig, RewardConfig, SFTConfig
    from genrec.girl.prepare import prepare_jobs
    from genrec.runtime import start_local_ray
    from genrec.train.launch import METRICS_FILE, train_sft
    from genrec.train.reward import train_reward

    start_local_ray(num_cpus=max(args.cpus), log_to_driver=False, configure_logging=False)
    work = Path(tempfile.mkdtemp(prefix="worker_cpus_"))
    prepare_jobs(PrepareJobsConfig(out_dir=str(work / "jobs"), synth_num_cvs=300, synth_num_jds=150, seed=1))
    log_every = max(1, args.steps // 8)
    # The shapes of the GIRL test's models (tests/test_girl_market.py): what a laptop run trains.
    sft = dict(data_dir=str(work / "jobs" / "sft"), model="tiny", vocab_size=1000, tiny_hidden=96, tiny_layers=2,
               tiny_heads=4, max_len=384, micro_batch_tokens=2048, lr=2e-3, warmup_steps=5, max_steps=args.steps,
               eval_every=0, save_every=0, log_every=log_every, valid_rows=16)
    reward = dict(data_dir=str(work / "jobs"), backbone="tiny", vocab_size=1000, tiny_hidden=64, tiny_layers=2,
                  max_len=192, batch_size=32, lr=1e-3, warmup_steps=5, max_steps=args.steps, log_every=log_every,
                  eval_every=0, save_every=0)
    rows = []
    for cpus in args.cpus:
        train_sft(SFTConfig(**sft, out_dir=str(work / f"sft_{cpus}"), cpus_per_worker=cpus))
        tokens_per_s, sft_threads = steady(work / f"sft_{cpus}" / METRICS_FILE, "tokens_per_s")
        train_reward(RewardConfig(**reward, out_dir=str(work / f"rm_{cpus}"), cpus_per_worker=cpus))
        pairs_per_s, rm_threads = steady(work / f"rm_{cpus}" / "metrics.jsonl", "pairs_per_s")
        rows.append({"cpus_per_worker": cpus, "sft_tokens_per_s": tokens_per_s, "sft_torch_threads": sft_threads,
                     "reward_pairs_per_s": pairs_per_s, "reward_torch_threads": rm_threads})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["sft_speedup"] = row["sft_tokens_per_s"] / rows[0]["sft_tokens_per_s"]
        row["reward_speedup"] = row["reward_pairs_per_s"] / rows[0]["reward_pairs_per_s"]

    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "steps": args.steps,
              "sft": {k: v for k, v in sft.items() if k != "data_dir"},
              "reward": {k: v for k, v in reward.items() if k != "data_dir"}, "rows": rows}
    print(write_results(Path(args.out) / "worker_cpus.json", result, render_markdown))
    return 0


def render_markdown(result: dict) -> str:
    lines = ["# cpus_per_worker: one Ray Train CPU worker, 1 core against more (bench/worker_cpus.py)", "",
             generated_by("python bench/worker_cpus.py --render"), "",
             f"{result['machine']}; {result['steps']} steps each, the first log window left out; SFT: tiny Llama h96 x 2 "
             "layers, 2,048-token micro-batches; reward model: tiny h64 x 2 layers, 32 pairs of 192 tokens a step.", ""]
    lines += table(["cpus_per_worker", "torch threads", "SFT tokens/s", "SFT speedup", "reward pairs/s", "reward speedup"],
                   [[r["cpus_per_worker"], f"{r['sft_torch_threads']} / {r['reward_torch_threads']}",
                     f"{r['sft_tokens_per_s']:,.0f}", f"{r['sft_speedup']:.2f}x", f"{r['reward_pairs_per_s']:,.1f}",
                     f"{r['reward_speedup']:.2f}x"] for r in result["rows"]], "rlrrrr")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
