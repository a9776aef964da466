"""`genrec demo`: every stage on the embedded default (local Ray, synthetic data, tiny model).

Stages are added here as they land; each reads what the one before it wrote, in one run folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from genrec.config import EvaluateConfig, PrepareConfig, SFTConfig, SourceConfig, SynthInteractionsConfig


def run_demo(out: str) -> dict:
    run = Path(out)
    timings: dict[str, float] = {}
    summary: dict = {}

    started = time.time()
    from genrec.data.synth import synth_interactions

    synth = SynthInteractionsConfig(out_dir=str(run / "synth"))
    summary["synth"] = synth_interactions(synth)
    timings["synth"] = time.time() - started

    started = time.time()
    from genrec.data.prepare import prepare

    prepared = PrepareConfig(
        source=SourceConfig(format="table", path=str(run / "synth" / "interactions.parquet"),
                            catalog_path=str(run / "synth" / "catalog.parquet")),
        out_dir=str(run / "prepared"),
    )
    stats = prepare(prepared)
    timings["prepare"] = time.time() - started
    summary["prepare"] = {k: stats[k] for k in ("users", "items", "interactions", "rows", "sequence_length")}

    started = time.time()
    from genrec.train.launch import train_sft

    # About three minutes on 2 CPUs: 150 steps of 2 x 4096 tokens (a third of an epoch).
    sft = SFTConfig(data_dir=str(run / "prepared"), out_dir=str(run / "sft"), model="tiny", max_len=512,
                    micro_batch_tokens=4096, lr=1e-3, warmup_steps=15, max_steps=150, eval_every=50,
                    save_every=50, log_every=25, num_workers=2)
    final = train_sft(sft)
    timings["sft"] = time.time() - started
    reports = [json.loads(line) for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    valid = [m["valid_loss"] for m in reports if "valid_loss" in m]
    summary["sft"] = {"steps": final["step"], "valid_loss_start": valid[0], "valid_loss_end": valid[-1],
                      "real_tokens_per_s": final.get("real_tokens_per_s"), "model": str(run / "sft" / "final")}

    started = time.time()
    from genrec.rec.evaluate import evaluate

    # Constrained beam search on CPU ranks ~10 users/s here, so the demo scores the first 400 test
    # users by id; `genrec evaluate max_users=0` scores all of them.
    evaluated = {
        "genrec": evaluate(EvaluateConfig(data_dir=str(run / "prepared"), checkpoint_dir=str(run / "sft" / "final"),
                                          out_dir=str(run / "eval" / "genrec"), max_users=400, num_actors=2)),
        "pop": evaluate(EvaluateConfig(data_dir=str(run / "prepared"), model="pop", out_dir=str(run / "eval" / "pop"))),
    }
    timings["evaluate"] = time.time() - started
    summary["evaluate"] = {name: {"users": r["users"], **{k: round(r["metrics"][k], 4) for k in ("hr@10", "ndcg@10")},
                                  "hallucination_rate": r["hallucination_rate"]} for name, r in evaluated.items()}

    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_table(summary)
    return summary


def _print_table(summary: dict) -> None:
    p = summary["prepare"]
    lines = [
        "",
        "| stage | result | seconds |",
        "| --- | --- | --- |",
        f"| synth | {summary['synth'].get('users')} users, {summary['synth'].get('items')} items, "
        f"{summary['synth'].get('interactions')} interactions | {summary['timings_s']['synth']} |",
        f"| prepare | rows train/valid/test {p['rows']['train']}/{p['rows']['valid']}/{p['rows']['test']} "
        f"| {summary['timings_s']['prepare']} |",
        f"| sft (tiny, 2 workers) | {summary['sft']['steps']} steps, validation loss "
        f"{summary['sft']['valid_loss_start']:.3f} -> {summary['sft']['valid_loss_end']:.3f} "
        f"| {summary['timings_s']['sft']} |",
    ]
    for name, e in summary["evaluate"].items():
        lines.append(f"| evaluate {name} ({e['users']} test users) | HR@10 {e['hr@10']:.4f}, NDCG@10 {e['ndcg@10']:.4f}, "
                     f"hallucinated {e['hallucination_rate']:.0%} | |")
    lines += [
        f"| (evaluate, both) | | {summary['timings_s']['evaluate']} |",
        "",
    ]
    print("\n".join(lines))
