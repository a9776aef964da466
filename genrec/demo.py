"""`genrec demo`: every stage on the embedded default (local Ray, synthetic data, tiny models).

The stages are configs/pipeline_demo.yaml run by genrec.pipeline (the file a user edits, or submits
with `ray job submit -- python ray_jobs/pipeline.py --config configs/pipeline_demo.yaml`); then the
trained models go behind Ray Serve on 127.0.0.1, sample requests are sent and answered, the page's
URL is printed (in a terminal, Serve stays up for the browser until Enter), Serve shuts down, and
one table sums the run up. Everything lands in the run folder: pipeline.json,
report.md with plots, summary.json.
"""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import genrec

DEMO_CONFIG = Path(genrec.__file__).resolve().parents[1] / "configs" / "pipeline_demo.yaml"


def run_demo(out: str, wait: bool = True) -> dict:
    from genrec.pipeline import load_pipeline, run_pipeline

    if not DEMO_CONFIG.exists():
        raise FileNotFoundError(f"{DEMO_CONFIG} is missing: `genrec demo` runs from a genrec checkout (make demo)")
    run = Path(out).resolve()
    started = time.time()
    pipeline = run_pipeline(load_pipeline(str(DEMO_CONFIG), [f"out_dir={run}"]))
    started_serve = time.time()
    served = serve_and_ask(run, wait)
    summary = {"run": str(run), "stages": _stage_lines(pipeline["stages"]), "serve": served,
               "timings_s": {**{n: s.get("seconds") for n, s in pipeline["stages"].items()},
                             "serve": round(time.time() - started_serve, 1), "total": round(time.time() - started, 1)},
               "report": pipeline.get("report")}
    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(table(summary))
    print(f"Each stage's full result: {run / 'summary.json'}; plots: {summary['report']}", flush=True)
    return summary


def serve_and_ask(run: Path, wait: bool = False) -> dict:
    """The demo's models behind one Serve app on a free loopback port: sample requests, the page's URL,
    then shut down. With `wait` and a terminal on stdin, Serve stays up until Enter; without a
    terminal (CI, a pipe) there is nobody to press it, so it never waits."""
    import httpx
    import pyarrow.parquet as pq
    from ray import serve

    from genrec.config import ServeConfig

    from genrec.config_loader import from_dict
    from genrec.serve.launch import demo_requests, start_serve

    generator = run / "ppo" / "final" if (run / "ppo" / "final").exists() else run / "sft_jobs" / "final"
    # Three model replicas and the ingress on a 2-CPU machine: a fraction of a CPU each, or Serve
    # waits forever for a CPU to schedule the last one.
    cfg = from_dict(ServeConfig, {
        "port": _free_port(), "blocking": False,
        "recommender": {"checkpoint_dir": str(run / "sft" / "best"), "data_dir": str(run / "prepared"),
                        "report_path": str(run / "eval" / "genrec" / "report.json"), "num_beams": 10,
                        "num_cpus": 0.25},
        "generator": {"checkpoint_dir": str(generator), "num_cpus": 0.25},
        "matcher": {"reward_dir": str(run / "reward" / "final"), "generator_dir": str(generator),
                    "jds_path": str(run / "jobs" / "jds.parquet"), "embedder": "tfidf", "num_cpus": 0.25},
    })
    url = start_serve(cfg)
    try:
        test = pq.read_table(run / "prepared" / "test").slice(0, 1).to_pylist()[0]
        catalog = pq.read_table(run / "prepared" / "catalog.parquet", columns=["item_id", "title"])
        titles = dict(zip(catalog.column("item_id").to_pylist(), catalog.column("title").to_pylist()))
        history = list(test["history_item_ids"])[-3:]
        answers = demo_requests(url, history, [titles[i] for i in history])
        cv = pq.read_table(run / "jobs" / "cvs.parquet", columns=["text"]).column("text")[0].as_py()
        jd = pq.read_table(run / "jobs" / "jds.parquet", columns=["text"]).column("text")[0].as_py()
        with httpx.Client(base_url=url, timeout=300) as client:
            for name, path, body in (("generate a JD", "/v1/jobs/generate", {"cv": cv, "max_new_tokens": 64}),
                                     ("score a CV-JD pair", "/v1/jobs/score", {"cv": cv, "jd": jd}),
                                     ("recommend jobs", "/v1/jobs/recommend", {"cv": cv, "k": 3})):
                response = client.post(path, json=body)
                answers[name] = (response.status_code, response.json())
            response = client.get("/v1/catalog/search", params={"q": titles[history[0]][:5], "limit": 5})
            answers["search the catalog"] = (response.status_code, response.json())
        show_page(url, wait)
    finally:
        serve.shutdown()
    return {"url": url, "answers": {name: {"status": s, "body": b} for name, (s, b) in answers.items()}}


def show_page(url: str, wait: bool, stdin=None) -> bool:
    """Print the page's URL; with `wait` and a terminal on stdin, block until Enter (or end of input).
    Returns whether it waited."""
    stdin = stdin or sys.stdin
    print(f"\nTry it in a browser: {url}/ (API docs: {url}/docs)", flush=True)
    if not (wait and stdin.isatty()):
        return False
    print("Serve stays up until you press Enter.", flush=True)
    stdin.readline()
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_lines(stages: dict) -> dict:
    """One short result per stage for the table (the whole results stay in pipeline.json)."""
    lines = {}
    for name, stage in stages.items():
        result = stage.get("result") or {}
        if "skipped" in stage:
            lines[name] = f"skipped: {stage['skipped']}"
        elif stage.get("verb") == "ppo":
            lines[name] = _ppo_line(Path(result["out_dir"]))
        elif "metrics" in result:
            m = result["metrics"]
            lines[name] = (f"{result.get('users')} users: HR@10 {m.get('hr@10', 0):.4f}, NDCG@10 {m.get('ndcg@10', 0):.4f}, "
                           f"hallucinated {result.get('hallucination_rate', 0):.0%}")
        elif "valid_loss" in result:
            lines[name] = f"{result.get('step')} steps, validation loss {result['valid_loss']:.3f}"
        else:
            shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and len(str(v)) < 40}
            lines[name] = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(shown.items())[:6])
    return lines


def _ppo_line(out: Path) -> str:
    """The learned reward and the hidden true fit on held-out CVs before the first update and after
    the last (eval.jsonl; true fit is what the learned reward cannot fool), and the last KL; without
    an evaluation, the first and the last iteration's batch means."""
    from genrec.rl.loop import EVAL_FILE, read_metrics

    rows, evals = read_metrics(out), read_metrics(out, EVAL_FILE)
    if not rows:
        return f"no iterations logged in {out}"
    parts = [f"{len(rows)} iterations"]
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        parts[0] += f"; held-out eval ({last['responses']} responses, updates {first['iteration']} -> {last['iteration']})"
    else:
        first, last = rows[0], rows[-1]
    for key in ("reward_mean", "true_fit"):
        if key in first and key in last:
            parts.append(f"{key} {first[key]:.3f} -> {last[key]:.3f}")
    parts.append(f"kl {rows[-1]['kl']:.2f}")
    return ", ".join(parts)


def table(summary: dict) -> str:
    t = summary["timings_s"]
    rows = ["", "| stage | result | seconds |", "| --- | --- | --- |"]
    rows += [f"| {name} | {line} | {t.get(name)} |" for name, line in summary["stages"].items()]
    for name, answer in summary["serve"]["answers"].items():
        body = json.dumps(answer["body"], default=str)
        rows.append(f"| serve: {name} | {answer['status']} {body[:140]}{'…' if len(body) > 140 else ''} | |")
    rows += [f"| (serve, all requests) | {summary['serve']['url']} | {t['serve']} |",
             f"| total | report: {summary['report']} | {t['total']} |", ""]
    return "\n".join(rows)
