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
def start_serve_batch_app(cfg) -> str:
    """The peer: genrec's app with its Recommender batching through Ray Serve's own @serve.batch
    (same max_batch_size and wait) instead of genrec's Batcher; returns the base URL."""
    from ray import serve

    from genrec.serve.deployments import GenrecAPI, deployment_options
    from genrec.serve.recommender import RecommenderModel

    @serve.deployment
    class ServeBatchRecommender:
        def __init__(self, recommender_cfg) -> None:
            self.model = RecommenderModel(recommender_cfg)
            self.batches = self.requests = 0

        def reconfigure(self, user_config: dict) -> None:
            self.settings = user_config
            self.rank.set_max_batch_size(int(user_config["max_batch_size"]))
            self.rank.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

        def ping(self) -> bool:
            return True

        def info(self) -> dict:
            return dict(self.model.info(), batching=dict(self.settings, batches=self.batches, requests=self.requests,
                                                         mean_batch_size=self.requests / max(1, self.batches)))

        async def recommend(self, history: list, k: int, exclude_history: bool) -> dict:
            checked = self.model.check(history, k, exclude_history)
            return checked.as_dict() if not hasattr(checked, "history") else await self.rank(checked)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def rank(self, batch: list) -> list[dict]:
            self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            return await asyncio.to_thread(self.model.rank, batch)

    recommender = ServeBatchRecommender.options(**deployment_options(cfg.recommender)).bind(cfg.recommender)
    ingress = GenrecAPI.options(max_ongoing_requests=cfg.ingress_max_ongoing_requests, ray_actor_options={"num_cpus": 0})
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(ingress.bind(cfg, recommender), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return f"http://{cfg.host}:{cfg.port}"


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


def batching_counts(url: str) -> dict | None:
    """The Recommender's batch counters (/v1/models), or None for a server without them (plain)."""
    import httpx

    return httpx.get(f"{url}/v1/models", timeout=30).json()["recommender"].get("batching")


def measure(url: str, bodies: list[dict], warmup: int) -> dict:
    asyncio.run(run_level(url, bodies[:warmup], 4))  # compile paths, fill caches; not counted
    counts = np.floor(np.array(SHARES) * len(bodies)).astype(int)
    counts[-1] = len(bodies) - counts[:-1].sum()
    levels, start = [], 0
    for concurrency, count in zip(LEVELS, counts):
        before = batching_counts(url)
        levels.append(asyncio.run(run_level(url, bodies[start:start + count], concurrency)))
        after = batching_counts(url)
        if before is not None:  # requests per model call at this level alone
            levels[-1]["mean_batch_size"] = ((after["requests"] - before["requests"])
                                             / max(1, after["batches"] - before["batches"]))
        start += count
        print(f"  c={concurrency:2d}: {count} requests, {count / levels[-1]['wall_s']:.1f} req/s, "
              f"p50 {np.percentile(levels[-1]['latencies'], 50) * 1e3:.0f} ms, errors {levels[-1]['errors']}"
              + (f", mean batch {levels[-1]['mean_batch_size']:.1f}" if before is not None else ""), flush=True)
    every = np.concatenate([level["latencies"] for level in levels])
    summary = {"rps": len(every) / sum(level["wall_s"] for level in levels), **percentiles(every),
               "errors": int(sum(level["errors"] for level in levels)), "requests": int(len(every)),
               "error_examples": [e for level in levels for e in level["error_examples"]][:3], "levels": {}}
    for level in levels:
        summary["levels"][str(level["concurrency"])] = {
            "requests": level["requests"], "rps": level["requests"] / level["wall_s"],
            **percentiles(np.array(level["latencies"])), "errors": level["errors"],
            **({"mean_batch_size": level["mean_batch_size"]} if "mean_batch_size" in level else {})}
    return summary


def model_only(args, bodies: list[dict]) -> dict:
    """ms per request of the beam search alone at batch 1, 4 and 16 (one torch thread, this process):
    what batching can save before any HTTP is involved. Every size ranks the same 16 requests (a
    request's cost depends on its history and the titles its beams walk), in batches of that size."""
    import torch

    from genrec.config import ServeConfig

    from genrec.config_loader import load_config
    from genrec.serve.recommender import RecommenderModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = RecommenderModel(load_config(ServeConfig, None, serve_overrides(args, 8000)).recommender)
    requests = [model.check(b["history"], b["k"], False) for b in bodies[:16]]
    model.rank(requests)  # warm-up
    out = {}
    for size in (1, 4, 16):
        started = time.perf_counter()
        for _ in range(2):
            for first in range(0, len(requests), size):
                model.rank(requests[first:first + size])
        out[str(size)] = (time.perf_counter() - started) / (2 * len(requests)) * 1e3
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
    for name, batch in (("batched", args.batch), ("serve.batch", args.batch), ("unbatched", 1)):
        overrides = serve_overrides(args, port) + [f"recommender.max_batch_size={batch}",
                                                   f"recommender.batch_wait_timeout_s={args.wait_ms / 1e3 if batch > 1 else 0}"]
        print(f"{name}: starting Serve", flush=True)
        cfg = load_config(ServeConfig, None, overrides)
        url = start_serve_batch_app(cfg) if name == "serve.batch" else start_serve(cfg)
        wait_ready(url)
        results[name] = measure(url, bodies, args.warmup)
        # The replica counts the batches it formed: evidence that batching happened (or did not).
        results[name]["batching"] = batching_counts(url)
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
    results["batched_rps_over"] = {name: results["batched"]["rps"] / results[name]["rps"]
                                   for name in ("serve.batch", "unbatched", "plain")}
    print(write_results(args.out, results, render_markdown))


SERVERS = ("batched", "serve.batch", "unbatched", "plain")


def render_markdown(results: dict) -> str:
    setup = results["setup"]
    servers = [name for name in SERVERS if name in results]
    lines = [
        "# Serving load: POST /v1/recommend on loopback", "",
        generated_by("python bench/serve_load.py --render"), "",
        f"{setup['requests_per_server']} requests per server over concurrency {setup['levels']}; k={setup['k']}, "
        f"{setup['num_beams']} beams, {setup['catalog_items']} catalog items; {setup['model']}; "
        f"{setup['machine']}, one torch thread per model process. Batched (genrec's Batcher) and serve.batch "
        f"(Ray Serve's @serve.batch): max_batch_size {setup['batched']['max_batch_size']}, wait "
        f"{setup['batched']['batch_wait_timeout_ms']} ms. Load average (1 min) at start / end: "
        f"{setup['load_average_1min']['start']:.1f} / {setup['load_average_1min']['end']:.1f} "
        "(other jobs share the machine: compare rows of one run only).", "",
    ]
    lines += table(["server", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "mean batch"],
                   [[name, f"{r['rps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['p99_ms']:.0f}", r["errors"],
                     f"{r['batching']['mean_batch_size']:.2f}" if r.get("batching") else ""]
                    for name, r in ((n, results[n]) for n in servers)])
    lines += ["", "Mean batch: requests per model call over the whole run, warm-up included.", "",
              "Beam search alone, ms per request by batch size (no HTTP; the same 16 requests at each size): "
              + ", ".join(f"{size}: {ms:.1f}" for size, ms in results["model_only_ms_per_request"].items()) + "."]
    lines += ["", "Throughput, batched / " + "; batched / ".join(
        f"{name}: {ratio:.2f}x" for name, ratio in results["batched_rps_over"].items()),
        "", "Per concurrency level (req/s, p50 ms, p99 ms; mean batch where the server batches):", ""]

    def cell(name: str, level: str) -> str:
        r = results[name]["levels"][level]
        return f"{r['rps']:.1f}, {r['p50_ms']:.0f}, {r['p99_ms']:.0f}" + (
            f"; {r['mean_batch_size']:.1f}" if "mean_batch_size" in r and name != "unbatched" else "")

    lines += table(["concurrency", *servers], [[level] + [cell(name, level) for name in servers]
                                                for level in map(str, setup["levels"])], "r" + "l" * len(servers))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
