"""Serving load: POST /v1/recommend on loopback against three servers in the same run, same model,
same requests:

  batched    genrec's Ray Serve app, Recommender with @serve.batch (max_batch_size 16)
  unbatched  the same app with max_batch_size 1 (one beam search per request)
  plain      the same FastAPI app (genrec.serve.api.create_api, same validation) under uvicorn in its
             own process, no Ray: each request runs its own beam search in a worker thread, as a sync
             FastAPI endpoint would

Each server gets the same 2,000 requests (real test-split histories of a synthetic catalog, k=10),
spread over concurrency levels 1, 2, 4, 8, 16 and 32 (closed loop: each of the N clients sends its
next request when the last one is answered); throughput and p50/p95/p99 latency over all of them and
per level. Every model process computes with one torch thread (Ray gives a num_cpus=1 replica
OMP_NUM_THREADS=1; the plain server is set to match), one replica, no autoscaling.

    python bench/serve_load.py                  # writes bench/results/serve_load.json and .md
    python bench/serve_load.py --requests 300   # a quick look
    python bench/serve_load.py --render         # rewrite serve_load.md from serve_load.json

The model is the offline tiny Llama (random weights: decoding cost does not depend on training).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time

import numpy as np

from common import RESULTS, WORK as BENCH_WORK, add_render_flag, generated_by, render_results, table, write_results

WORK = BENCH_WORK / "serve_load"
LEVELS = (1, 2, 4, 8, 16, 32)
SHARES = (0.05, 0.075, 0.125, 0.175, 0.25, 0.325)  # of the requests per level: more where it is fast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- data and model
def make_inputs(args) -> list[dict]:
    """A prepared synthetic catalog and a tiny checkpoint in bench/work; request bodies from its test rows."""
    import pyarrow.parquet as pq

    from genrec.config import PrepareConfig, SourceConfig, SynthInteractionsConfig
    from genrec.data.prepare import prepare
    from genrec.data.synth import synth_interactions
    from genrec.config import TinyModel
    from genrec.models.loading import load_model_and_tokenizer, save_checkpoint

    prepared, ckpt = WORK / "prepared", WORK / "ckpt"
    if not (prepared / "catalog.parquet").exists():
        synth = synth_interactions(SynthInteractionsConfig(out_dir=str(WORK / "synth"), num_users=args.users,
                                                           num_items=args.items))
        prepare(PrepareConfig(source=SourceConfig(format="table", path=synth["interactions_path"],
                                                  catalog_path=synth["catalog_path"]),
                              out_dir=str(prepared), history_len=10, samples_per_user=1))
    if not (ckpt / "genrec.json").exists():
        titles = pq.read_table(prepared / "catalog.parquet").column("title").to_pylist()
        model, tokenizer = load_model_and_tokenizer(
            "tiny", texts=titles, device="cpu",
            tiny_size=TinyModel(vocab_size=2048, hidden=args.hidden, layers=args.layers, heads=4))
        save_checkpoint(ckpt, model, tokenizer, "sft", {"model": "tiny"}, {})
    histories = pq.read_table(prepared / "test", columns=["history_item_ids"]).column("history_item_ids").to_pylist()
    rng = random.Random(0)
    return [{"history": rng.choice(histories), "k": args.k} for _ in range(args.requests)]


def serve_overrides(args, port: int) -> list[str]:
    return [f"port={port}", "blocking=false", f"recommender.checkpoint_dir={WORK / 'ckpt'}",
            f"recommender.data_dir={WORK / 'prepared'}", f"recommender.num_beams={args.beams}",
            "recommender.num_cpus=1", "recommender.max_ongoing_requests=64", "ingress_max_ongoing_requests=256"]


# ------------------------------------------------------------------------------------- servers
def plain_server(port: int, overrides: list[str]) -> None:
    """The baseline: FastAPI + transformers in one process under uvicorn, no Ray."""
    import torch
    import uvicorn

    from genrec.config import ServeConfig

    from genrec.config_loader import load_config
    from genrec.serve.api import Backends, LocalBackend, create_api
    from genrec.serve.recommender import RecommenderModel

    torch.set_num_threads(1)
    cfg = load_config(ServeConfig, None, overrides)
    model = RecommenderModel(cfg.recommender)

    class Local:
        def ping(self):
            return True

        def info(self):
            return model.info()

        async def recommend(self, history, k, exclude_history):
            checked = model.check(history, k, exclude_history)
            if not hasattr(checked, "history"):
                return checked.as_dict()
            return (await asyncio.to_thread(model.rank, [checked]))[0]

    app = create_api(cfg, Backends(recommender=LocalBackend(Local())))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def wait_ready(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy in {timeout_s} s")


# ---------------------------------------------------------------------------------------- load
async def run_level(url: str, bodies: list[dict], concurrency: int) -> dict:
    import aiohttp

    latencies, errors, queue = [], [], list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def client() -> None:
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/recommend", json=body) as response:
                        payload = await response.json()
                        ok = response.status == 200 and len(payload["items"]) == body["k"]
                except Exception as e:  # counted, reported: a load test must not hide failures
                    ok, payload = False, repr(e)
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors.append(str(payload)[:200])

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(bodies), "wall_s": wall, "latencies": latencies,
            "errors": len(errors), "error_examples": errors[:3]}


def measure(url: str, bodies: list[dict], warmup: int) -> dict:
    asyncio.run(run_level(url, bodies[:warmup], 4))  # compile paths, fill caches; not counted
    counts = np.floor(np.array(SHARES) * len(bodies)).astype(int)
    counts[-1] = len(bodies) - counts[:-1].sum()
    levels, start = [], 0
    for concurrency, count in zip(LEVELS, counts):
        levels.append(asyncio.run(run_level(url, bodies[start:start + count], concurrency)))
        start += count
        print(f"  c={concurrency:2d}: {count} requests, {count / levels[-1]['wall_s']:.1f} req/s, "
              f"p50 {np.percentile(levels[-1]['latencies'], 50) * 1e3:.0f} ms, errors {levels[-1]['errors']}",
              flush=True)
    every = np.concatenate([level["latencies"] for level in levels])
    summary = {"rps": len(every) / sum(level["wall_s"] for level in levels), **percentiles(every),
               "errors": int(sum(level["errors"] for level in levels)), "requests": int(len(every)),
               "error_examples": [e for level in levels for e in level["error_examples"]][:3], "levels": {}}
    for level in levels:
        summary["levels"][str(level["concurrency"])] = {
            "requests": level["requests"], "rps": level["requests"] / level["wall_s"],
            **percentiles(np.array(level["latencies"])), "errors": level["errors"]}
    return summary


def model_only(args, bodies: list[dict]) -> dict:
    """ms per request of the beam search alone at batch 1, 4 and 16 (one torch thread, this process):
    what batching can save before any HTTP is involved."""
    import torch

    from genrec.config import ServeConfig

    from genrec.config_loader import load_config
    from genrec.serve.recommender import RecommenderModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = RecommenderModel(load_config(ServeConfig, None, serve_overrides(args, 8000)).recommender)
    out = {}
    for size in (1, 4, 16):
        batch = [model.check(b["history"], b["k"], False) for b in bodies[:size]]
        model.rank(batch)  # warm-up
        started, reps = time.perf_counter(), max(2, 32 // size)
        for _ in range(reps):
            model.rank(batch)
        out[str(size)] = (time.perf_counter() - started) / reps / size * 1e3
    torch.set_num_threads(threads)
    return out


def percentiles(latencies: np.ndarray) -> dict:
    return {f"p{q}_ms": float(np.percentile(latencies, q) * 1e3) for q in (50, 95, 99)}


# ------------------------------------------------------------------------------------------ main
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The catalog, model and decoding of make_inputs and serve_overrides (also bench/serve_faults.py's)."""
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per server")
    parser.add_argument("--warmup", type=int, default=40)
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size of the batched server")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="batch_wait_timeout of the batched server")
    parser.add_argument("--plain-server", type=int, default=0, help=argparse.SUPPRESS)  # internal: run the baseline
    parser.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    add_render_flag(parser, "the markdown beside --out")
    args = parser.parse_args()
    if args.render:
        render_results(args.out, render_markdown)
        return
    if args.plain_server:
        plain_server(args.plain_server, json.loads(os.environ["GENREC_PLAIN_OVERRIDES"]))
        return

    import httpx
    import ray
    from ray import serve

    from genrec.config import ServeConfig

    from genrec.config_loader import load_config
    from genrec.serve.launch import start_serve

    load_at_start = os.getloadavg()[0]  # the box may be shared: say how busy it was
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    bodies = make_inputs(args)
    results: dict = {"model_only_ms_per_request": model_only(args, bodies)}
    print("model only, ms per request by batch size:", results["model_only_ms_per_request"], flush=True)

    port = free_port()
    for name, batch in (("batched", args.batch), ("unbatched", 1)):
        overrides = serve_overrides(args, port) + [f"recommender.max_batch_size={batch}",
                                                   f"recommender.batch_wait_timeout_s={args.wait_ms / 1e3 if batch > 1 else 0}"]
        print(f"{name}: starting Serve", flush=True)
        url = start_serve(load_config(ServeConfig, None, overrides))
        wait_ready(url)
        results[name] = measure(url, bodies, args.warmup)
        # The replica counts the batches it formed: evidence that batching happened (or did not).
        results[name]["batching"] = httpx.get(f"{url}/v1/models", timeout=30).json()["recommender"]["batching"]
    serve.shutdown()
    ray.shutdown()  # the plain server gets the machine to itself, as the Serve runs did

    port = free_port()
    env = dict(os.environ, GENREC_PLAIN_OVERRIDES=json.dumps(serve_overrides(args, port)), OMP_NUM_THREADS="1")
    print("plain: starting uvicorn", flush=True)
    server = subprocess.Popen([sys.executable, __file__, "--plain-server", str(port)], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        results["plain"] = measure(f"http://127.0.0.1:{port}", bodies, args.warmup)
    finally:
        server.terminate()
        server.wait(30)

    results["setup"] = {
        "requests_per_server": args.requests, "levels": list(LEVELS), "k": args.k, "num_beams": args.beams,
        "catalog_items": args.items, "model": f"tiny Llama, hidden {args.hidden}, {args.layers} layers, random weights",
        "batched": {"max_batch_size": args.batch, "batch_wait_timeout_ms": args.wait_ms},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch_threads_per_model_process": 1,
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
    }
    results["ratios"] = {"batched_over_plain_rps": results["batched"]["rps"] / results["plain"]["rps"],
                         "batched_over_unbatched_rps": results["batched"]["rps"] / results["unbatched"]["rps"]}
    print(write_results(args.out, results, render_markdown))


def render_markdown(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# Serving load: POST /v1/recommend on loopback", "",
        generated_by("python bench/serve_load.py --render"), "",
        f"{setup['requests_per_server']} requests per server over concurrency {setup['levels']}; k={setup['k']}, "
        f"{setup['num_beams']} beams, {setup['catalog_items']} catalog items; {setup['model']}; "
        f"{setup['machine']}, one torch thread per model process. Batched: max_batch_size "
        f"{setup['batched']['max_batch_size']}, wait {setup['batched']['batch_wait_timeout_ms']} ms. "
        f"Load average (1 min) at start / end: {setup['load_average_1min']['start']:.1f} / "
        f"{setup['load_average_1min']['end']:.1f} (other jobs share the machine: compare rows of one run only).", "",
    ]
    lines += table(["server", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
                   [[name, f"{r['rps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['p99_ms']:.0f}", r["errors"]]
                    for name, r in ((n, results[n]) for n in ("batched", "unbatched", "plain"))])
    mean = results["batched"]["batching"]["mean_batch_size"]
    lines += ["", f"Mean batch the batched Recommender formed (warm-up included): {mean:.2f} requests.", "",
              "Beam search alone, ms per request by batch size (no HTTP): " + ", ".join(
                  f"{size}: {ms:.1f}" for size, ms in results["model_only_ms_per_request"].items()) + "."]
    lines += ["", f"batched / plain throughput: {results['ratios']['batched_over_plain_rps']:.2f}x; "
              f"batched / unbatched: {results['ratios']['batched_over_unbatched_rps']:.2f}x", "",
              "Per concurrency level (req/s, p50 ms, p99 ms):", ""]
    lines += table(["concurrency", "batched", "unbatched", "plain"],
                   [[level] + [f"{results[n]['levels'][level]['rps']:.1f}, {results[n]['levels'][level]['p50_ms']:.0f}, "
                               f"{results[n]['levels'][level]['p99_ms']:.0f}" for n in ("batched", "unbatched", "plain")]
                    for level in map(str, setup["levels"])], "rlll")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
