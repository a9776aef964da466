"""Serving through a replica's death: POST /v1/recommend at a steady load while the only Recommender
replica is killed, on loopback.

genrec's Ray Serve app (the model and requests of bench/serve_load.py: a tiny Llama with random
weights over a 1,000-item synthetic catalog, real test-split histories, k=10, 10 beams), one
Recommender replica. `--clients` closed-loop clients send requests for `--seconds`; `--kill-at`
seconds in, the replica's actor is killed (ray.kill, as a crashed process or a lost node would end
it) and Serve starts another. Every request is timed and classed: 200, 503 (the app's answer while
no replica can take it, with Retry-After), another error, or no answer within the client's 60 s
timeout (hung). The report splits the run into before the kill, during (the kill until the first 200
from the new replica) and after, with p50/p99 latency of the 200s in each.

    python bench/serve_faults.py                 # writes bench/results/serve_faults.json and .md
    python bench/serve_faults.py --render        # rewrite serve_faults.md from serve_faults.json
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

import numpy as np

from common import RESULTS, add_render_flag, generated_by, render_results, table, write_results
from serve_load import add_model_arguments, free_port, make_inputs, serve_overrides, wait_ready

CLIENT_TIMEOUT_S = 60


async def load(url: str, bodies: list[dict], clients: int, seconds: float, kill_at: float, kill) -> list[dict]:
    """Every request: {start, latency, outcome}; `kill()` runs once, kill_at seconds in."""
    import aiohttp

    records, t0 = [], time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:

        async def client(index: int) -> None:
            i = index
            while time.perf_counter() - t0 < seconds:
                body, started = bodies[i % len(bodies)], time.perf_counter()
                i += clients
                try:
                    async with session.post(f"{url}/v1/recommend", json=body) as response:
                        await response.read()
                        outcome = str(response.status)
                        if response.status == 503 and response.headers.get("Retry-After") is None:
                            outcome = "503 without Retry-After"
                except asyncio.TimeoutError:
                    outcome = "hung"
                except aiohttp.ClientError as e:  # counted, reported: a fault test must not hide failures
                    outcome = type(e).__name__
                records.append({"start": started - t0, "latency": time.perf_counter() - started, "outcome": outcome})
                if outcome != "200":
                    await asyncio.sleep(0.05)  # a client backs off a little, as Retry-After asks

        async def killer() -> None:
            await asyncio.sleep(kill_at)
            await asyncio.to_thread(kill)

        killing = asyncio.ensure_future(killer())
        await asyncio.gather(*(client(k) for k in range(clients)))
        killing.cancel()  # (a kill_at past the end never fires)
    return records


def replica_actor(deployment: str):
    import ray

    (name, namespace), = [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
                          if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]]
    return ray.get_actor(name, namespace=namespace)


def windows(records: list[dict], kill_at: float) -> dict:
    """before / during / after the kill; `during` ends at the first 200 that started after the kill."""
    recovered = min((r["start"] + r["latency"] for r in records if r["start"] > kill_at and r["outcome"] == "200"),
                    default=float("inf"))
    spans = {"before": lambda r: r["start"] < kill_at,
             "during": lambda r: kill_at <= r["start"] < recovered,
             "after": lambda r: r["start"] >= recovered}
    out = {}
    for name, inside in spans.items():
        chosen = [r for r in records if inside(r)]
        ok = np.array([r["latency"] for r in chosen if r["outcome"] == "200"])
        outcomes: dict[str, int] = {}
        for r in chosen:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        out[name] = {"requests": len(chosen), "outcomes": outcomes,
                     "p50_ms": float(np.percentile(ok, 50) * 1e3) if len(ok) else None,
                     "p99_ms": float(np.percentile(ok, 99) * 1e3) if len(ok) else None}
    out["recovery_s"] = recovered - kill_at if recovered != float("inf") else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--kill-at", type=float, default=20)
    parser.add_argument("--requests", type=int, default=500, help="distinct request bodies, reused in turn")
    add_model_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS / "serve_faults.json"))
    add_render_flag(parser, "the markdown beside --out")
    args = parser.parse_args()
    if args.render:
        render_results(args.out, render_markdown)
        return

    import ray
    from ray import serve

    from genrec.config import ServeConfig
    from genrec.config_loader import load_config
    from genrec.serve.launch import start_serve

    load_at_start = os.getloadavg()[0]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    bodies = make_inputs(args)
    url = start_serve(load_config(ServeConfig, None, serve_overrides(args, free_port())))
    wait_ready(url)
    asyncio.run(load(url, bodies[:20], 2, 3, 1e9, lambda: None))  # warm-up, not counted
    killed = {}

    def kill() -> None:
        killed["at"] = time.strftime("%H:%M:%S")
        ray.kill(replica_actor("Recommender"), no_restart=True)

    records = asyncio.run(load(url, bodies, args.clients, args.seconds, args.kill_at, kill))
    serve.shutdown()
    ray.shutdown()
    failed = [r for r in records if r["outcome"] != "200"]
    results = {
        "setup": {"clients": args.clients, "seconds": args.seconds, "kill_at_s": args.kill_at, "k": args.k,
                  "num_beams": args.beams, "catalog_items": args.items, "client_timeout_s": CLIENT_TIMEOUT_S,
                  "model": f"tiny Llama, hidden {args.hidden}, {args.layers} layers, random weights",
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
                  "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]}},
        "requests": len(records), "failed": len(failed), "failed_share": len(failed) / max(1, len(records)),
        "hung": sum(r["outcome"] == "hung" for r in records), "windows": windows(records, args.kill_at),
    }
    print(write_results(args.out, results, render_markdown))


def render_markdown(results: dict) -> str:
    setup, w = results["setup"], results["windows"]
    lines = [
        "# Serving through a replica's death: POST /v1/recommend on loopback", "",
        generated_by("python bench/serve_faults.py --render"), "",
        f"{setup['date']}, {setup['machine']}; {setup['model']}, {setup['catalog_items']} catalog items, k={setup['k']}, "
        f"{setup['num_beams']} beams, one Recommender replica. {setup['clients']} closed-loop clients for "
        f"{setup['seconds']:g} s; the replica's actor killed {setup['kill_at_s']:g} s in. Load average (1 min) at "
        f"start / end: {setup['load_average_1min']['start']:.1f} / {setup['load_average_1min']['end']:.1f}.", "",
        f"{results['requests']} requests: {results['failed']} not answered 200 "
        f"({100 * results['failed_share']:.1f}%), {results['hung']} hung (no answer in {setup['client_timeout_s']} s). "
        f"Serve answered from a new replica {w['recovery_s']:.1f} s after the kill." if w["recovery_s"] is not None else
        f"{results['requests']} requests: no answer from a new replica before the run ended.", "",
    ]
    rows = []
    for name in ("before", "during", "after"):
        part = w[name]
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(part["outcomes"].items())) or "-"
        rows.append([name, part["requests"], outcomes, "-" if part["p50_ms"] is None else f"{part['p50_ms']:.0f}",
                     "-" if part["p99_ms"] is None else f"{part['p99_ms']:.0f}"])
    lines += ["Windows by the time a request started: a request in flight when the replica died counts in `before`.", ""]
    lines += table(["window", "requests", "outcomes (HTTP status)", "p50 ms of 200s", "p99 ms of 200s"], rows, "lrlrr")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
