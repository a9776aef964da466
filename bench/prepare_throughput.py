"""Prepare-stage throughput: genrec's Ray Data prepare beside plain pandas, same data, same run.

    .venv/bin/python bench/prepare_throughput.py                      # 25M interactions, 160k users
    .venv/bin/python bench/prepare_throughput.py --interactions 1000000 --users 8000 --items 5000

1. A synthetic log (genrec.data.synth.generate) is written once to --work as interactions.parquet
   and catalog.parquet, the `table` reader's input; it is regenerated only when the scale changes.
2. Each contender runs in its own fresh subprocess, one after the other, on the same files:
   genrec = genrec.data.prepare.prepare() with a local Ray it starts itself (start-up included);
   pandas = the same steps in one process (pandas_prepare below).
3. The parent samples the summed PSS of the subprocess and all its descendants (for genrec: the
   raylet, GCS, workers, and the object store's shared memory as they map it) and keeps the peak.
4. The two outputs are compared (rows per split; identical rows for a sample of users), and the
   figures go to --out/prepare_throughput.json and .md (`--render` rewrites the .md from the JSON).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from common import ROOT, add_render_flag, cpu_model, generated_by, render_results, table, usable_cpus, versions, \
    write_results

GIB = 1024**3
SPLITS = ("train", "valid", "test")
NUM_GENRES = 12
# One fixed paraphrase for the pandas peer (genrec hashes a paraphrase per row; that is not compared).
INSTRUCTION = "Given the items this user interacted with, in order, predict the next item."


# ------------------------------------------------------------------------------------------- data
def data_meta(args) -> dict:
    """What decides the synthetic files' content: same meta = same files, so they are reused."""
    mean_len = args.interactions / args.users
    # synth wants mean_len <= (min_len + max_len) / 2; the default law puts the mean a third of
    # the way from min_len to max_len, which gives a long tail without an extreme max.
    min_len = args.min_len
    max_len = max(min_len + 1, math.ceil(min_len + 3 * (mean_len - min_len)))
    return {
        "num_users": args.users, "num_items": args.items, "num_genres": NUM_GENRES,
        "min_len": min_len, "max_len": max_len, "mean_len": mean_len, "seed": args.seed,
        "log_order": args.log_order,
    }


def ensure_data(args) -> dict:
    data_dir = Path(args.work) / "data"
    meta_path = data_dir / "meta.json"
    want = data_meta(args)
    if meta_path.exists():
        have = json.loads(meta_path.read_text())
        if have.get("params") == want and all((data_dir / f).exists() for f in ("interactions.parquet", "catalog.parquet")):
            print(f"data: reusing {data_dir} ({have['interactions']:,} interactions)", flush=True)
            return have
    print(f"data: generating {want} into {data_dir} ...", flush=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    # In a subprocess, so the generator's tables are gone before anything is measured.
    run_child(["gen", "--work", str(args.work), "--params", json.dumps(want)], Path(args.work) / "logs" / "gen.log")
    return json.loads(meta_path.read_text())


def child_gen(work: Path, params: dict) -> None:
    import pyarrow.parquet as pq

    from genrec.data.synth import generate

    started = time.perf_counter()
    p = dict(params)
    log_order = p.pop("log_order")
    interactions, catalog = generate(**p)
    if log_order == "time":
        # A real log arrives in time order, users interleaved. Arrow's sort is stable, so a user's
        # interactions logged in the same second keep their order.
        interactions = interactions.sort_by("timestamp")
    data_dir = work / "data"
    pq.write_table(interactions, data_dir / "interactions.parquet")
    pq.write_table(catalog, data_dir / "catalog.parquet")
    meta = {
        "params": params,
        "interactions": interactions.num_rows,
        "users": len(interactions.column("user_id").unique()),
        "catalog_items": catalog.num_rows,
        "catalog_columns": catalog.column_names,
        "interactions_mib": round((data_dir / "interactions.parquet").stat().st_size / 2**20, 1),
        "generate_s": round(time.perf_counter() - started, 1),
    }
    (data_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------------------- contenders
def child_genrec(work: Path, args: dict) -> dict:
    import ray

    from genrec.config import PrepareConfig, SourceConfig
    from genrec.data.prepare import prepare

    data_dir = work / "data"
    config = PrepareConfig(
        source=SourceConfig(
            format="table", path=str(data_dir / "interactions.parquet"), catalog_path=str(data_dir / "catalog.parquet"),
        ),
        out_dir=str(work / "out_genrec"),
        kcore=0,
        history_len=args["history_len"],
        samples_per_user=args["samples_per_user"],
        object_store_gb=args["object_store_gb"],
        num_partitions=args["num_partitions"],
    )
    started = time.perf_counter()
    stats = prepare(config)  # starts its own local Ray: start-up is part of the wall time
    wall = time.perf_counter() - started
    ray.shutdown()
    return {
        "wall_s": wall,
        "prepare_s_without_ray_start": stats["wall_s"],  # prepare's own clock, started after init_ray
        "ray_start_s": round(wall - stats["wall_s"], 2),
        "rows": stats["rows"],
        "short_users_dropped": stats["short_users_dropped"],
        "interactions_dropped": stats["interactions_dropped"]["counts"],
        "object_store_gb": args["object_store_gb"],
        "num_partitions": args["num_partitions"] or "auto",
    }


def child_pandas(work: Path, args: dict) -> dict:
    importlib.import_module("pandas")  # imports are outside the timing, as for genrec

    data_dir = work / "data"
    started = time.perf_counter()
    result = pandas_prepare(
        data_dir / "interactions.parquet", data_dir / "catalog.parquet", work / "out_pandas",
        args["history_len"], args["samples_per_user"],
    )
    result["wall_s"] = time.perf_counter() - started
    return result


def pandas_prepare(interactions_path: Path, catalog_path: Path, out_dir: Path, history_len: int,
                   samples_per_user: int | str) -> dict:
    """genrec's prepare (table reader, kcore=0), written as one would in pandas, in one process.

    Leave-one-out per user ordered by (timestamp, source order): test = last, valid = second-last,
    train targets = positions 1..n-3 (the last `samples_per_user` of them); history = the last
    `history_len` items before the target; users with fewer than 3 interactions are dropped.
    """
    import pandas as pd

    log = pd.read_parquet(interactions_path, columns=["user_id", "item_id", "timestamp"])
    catalog = pd.read_parquet(catalog_path, columns=["item_id", "title"])
    log["order"] = np.arange(len(log), dtype=np.int64)  # source order breaks timestamp ties

    # Items missing from the catalog are counted and dropped; the rest become catalog row numbers.
    item = pd.Index(catalog["item_id"]).get_indexer(log["item_id"])
    known = item >= 0
    unknown_items = int((~known).sum())
    log = log.loc[known, ["user_id", "timestamp", "order"]]
    log["item"] = item[known]

    log = log.sort_values(["user_id", "timestamp", "order"], ignore_index=True)
    by_user = log.groupby("user_id", sort=False)
    pos = by_user.cumcount().to_numpy()
    n = by_user["item"].transform("size").to_numpy()
    user_sizes = by_user.size()
    short = user_sizes < 3
    short_users, short_interactions = int(short.sum()), int(user_sizes[short].sum())

    # Target rows: train positions max(1, n-2-N)..n-3, then n-2 (valid), n-1 (test).
    first = np.ones_like(n) if samples_per_user == "all" else np.maximum(1, n - 2 - int(samples_per_user))
    target = np.flatnonzero((n >= 3) & (pos >= first))
    t_pos, t_n = pos[target], n[target]
    split = np.where(t_pos == t_n - 1, 2, np.where(t_pos == t_n - 2, 1, 0))

    # History of each target: the rows target-h .. target-1 of the sorted log, h = min(pos, H).
    h = np.minimum(t_pos, history_len)
    offsets = np.concatenate([[0], np.cumsum(h)])
    flat = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - (target - h), h)
    item_np = log["item"].to_numpy()
    hist_items, target_items = item_np[flat], item_np[target]
    user_ids = log["user_id"].take(target).to_numpy()
    del log, by_user, pos, n, item_np, flat  # the log is no longer needed: free it before the strings

    titles = catalog["title"].to_numpy(dtype=object)
    ids = catalog["item_id"].to_numpy(dtype=object)
    hist_titles = titles[hist_items].tolist()
    hist_ids = ids[hist_items].tolist()
    bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    rows = pd.DataFrame({
        "user_id": user_ids,
        "history_item_ids": [hist_ids[a:b] for a, b in bounds],
        "target_item_id": ids[target_items],
        "instruction": INSTRUCTION,
        "input": [", ".join(hist_titles[a:b]) for a, b in bounds],
        "output": titles[target_items],
        "position": t_pos.astype(np.int32),
    })
    del hist_titles, hist_ids, bounds, user_ids
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for code, name in enumerate(SPLITS):
        part = rows[split == code]
        part.to_parquet(out_dir / f"{name}.parquet", index=False)
        counts[name] = len(part)
    return {
        "rows": counts,
        "short_users_dropped": short_users,
        "short_interactions_dropped": short_interactions,
        "unknown_items_dropped": unknown_items,
    }


# ------------------------------------------------------------------------------------ measurement
def child_env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # always a fresh local Ray, started (and timed) by the contender
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(child_args: list[str], log_path: Path, sample_s: float | None = None) -> dict:
    """Run this script as `--child ...`; with sample_s, sample the process tree's memory meanwhile."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *child_args]
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        memory = TreeMemory(proc.pid)
        try:
            while proc.poll() is None:
                if not sample_s:
                    time.sleep(0.5)
                    continue
                cost = memory.sample()
                # Reading PSS walks page tables (~10 ms per GiB resident): sleep at least 3x what a
                # sample took, so the sampler never takes more than a quarter of one core.
                time.sleep(max(sample_s - cost, 3 * cost))
            if sample_s:
                memory.drain()
        except BaseException:
            proc.kill()
            raise
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"child {' '.join(child_args[:1])} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return {"process_s": elapsed, **(memory.summary() if sample_s else {})}


class TreeMemory:
    """Peak of the summed PSS of a process and all its descendants, sampled by the caller.

    PSS splits each shared page between the processes that map it, so the sum counts shared
    memory (Ray's object store in /dev/shm, shared libraries) once. Processes seen once are kept
    and sampled until they exit, even if they leave the tree (reparented to init).
    """

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.peak = 0
        self.peak_at = 0.0
        self.peak_breakdown: dict[str, float] = {}
        self.max_processes = 0
        self.samples = 0
        self.sampler_cpu_s = 0.0
        self.started = time.perf_counter()
        self.pss_ok = True

    def _processes(self) -> list[psutil.Process]:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                self.seen.setdefault((p.pid, p.create_time()), p)
            except psutil.NoSuchProcess:
                pass
        return [p for p in self.seen.values() if _alive(p)]

    def _memory(self, p: psutil.Process) -> int:
        try:
            if self.pss_ok:
                try:
                    return p.memory_full_info().pss
                except (psutil.AccessDenied, AttributeError):
                    self.pss_ok = False  # no smaps here: fall back to RSS (double-counts shared pages)
            return p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return 0

    def sample(self) -> float:
        """Take one sample; returns the seconds it took."""
        begin = time.perf_counter()
        cpu_begin = time.process_time()
        procs = self._processes()
        sizes = []
        for p in procs:
            try:
                name = p.name()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            sizes.append((name, self._memory(p)))
        total = sum(s for _, s in sizes)
        self.samples += 1
        self.max_processes = max(self.max_processes, len(sizes))
        if total > self.peak:
            self.peak, self.peak_at = total, time.perf_counter() - self.started
            breakdown: dict[str, float] = {}
            for name, s in sizes:
                breakdown[name] = breakdown.get(name, 0) + s
            self.peak_breakdown = {k: round(v / GIB, 3) for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])}
        self.sampler_cpu_s += time.process_time() - cpu_begin
        return time.perf_counter() - begin

    def drain(self, timeout_s: float = 30.0) -> None:
        """After the root exits, keep sampling stragglers (e.g. Ray processes still shutting down)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline and any(_alive(p) for p in self.seen.values()):
            self.sample()
            time.sleep(0.2)

    def summary(self) -> dict:
        return {
            "peak_rss_gib": round(self.peak / GIB, 3),
            "peak_at_s": round(self.peak_at, 1),
            "peak_breakdown_gib": dict(list(self.peak_breakdown.items())[:8]),
            "memory_measure": "PSS summed over the process tree" if self.pss_ok else "RSS summed over the process tree",
            "max_processes": self.max_processes,
            "memory_samples": self.samples,
            "memory_sample_every_s": round((time.perf_counter() - self.started) / max(1, self.samples), 3),
            "sampler_cpu_s": round(self.sampler_cpu_s, 2),  # the parent's CPU time spent sampling
        }


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def measure(name: str, args, meta: dict) -> dict:
    work = Path(args.work)
    result_path = work / f"result_{name}.json"
    result_path.unlink(missing_ok=True)
    child_args = {"history_len": args.history_len, "samples_per_user": args.samples_per_user,
                  "object_store_gb": args.object_store_gb, "num_partitions": args.num_partitions}
    shutil.rmtree(work / f"out_{name}", ignore_errors=True)
    print(f"{name}: running ...", flush=True)
    outside = run_child(
        [name, "--work", str(work), "--params", json.dumps(child_args), "--result", str(result_path)],
        work / "logs" / f"{name}.log", sample_s=args.sample_s,
    )
    inside = json.loads(result_path.read_text())
    wall = inside.pop("wall_s")
    result = {
        "wall_s": round(wall, 2),
        "peak_rss_gib": outside.pop("peak_rss_gib"),
        "interactions_per_s": round(meta["interactions"] / wall),
        **inside,
        "process_s": round(outside.pop("process_s"), 2),  # interpreter start, imports, Ray shutdown included
        **outside,
    }
    print(f"{name}: {result['wall_s']} s, peak {result['peak_rss_gib']} GiB, "
          f"{result['interactions_per_s']:,} interactions/s, rows {result['rows']}", flush=True)
    return result


# ------------------------------------------------------------------------------------- agreement
def compare_outputs(work: Path, sample_users: int, seed: int) -> dict:
    """Rows per split, and identical rows (history ids, target, input, output) for sampled users."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    cols = ["user_id", "position", "history_item_ids", "target_item_id", "input", "output"]
    report: dict = {"rows_equal": True, "sample_equal": True, "mismatches": []}
    users = None
    for split in SPLITS:
        g = pads.dataset(work / "out_genrec" / split, format="parquet")
        p = pads.dataset(work / "out_pandas" / f"{split}.parquet", format="parquet")
        if g.count_rows() != p.count_rows():
            report["rows_equal"] = False
            report["mismatches"].append(f"{split}: genrec {g.count_rows()} rows, pandas {p.count_rows()}")
        if users is None:
            all_users = pc.unique(p.to_table(columns=["user_id"]).column("user_id")).to_pylist()
            rng = np.random.default_rng(seed)
            users = pa.array(sorted(rng.choice(all_users, min(sample_users, len(all_users)), replace=False).tolist()))
            report["sampled_users"] = len(users)
        wanted = pc.field("user_id").isin(users)
        got = {}
        for name, ds in (("genrec", g), ("pandas", p)):
            t = ds.to_table(columns=cols, filter=wanted)
            got[name] = sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in t.to_pylist())
        if got["genrec"] != got["pandas"]:
            report["sample_equal"] = False
            diff = next((a, b) for a, b in zip(got["genrec"] + [None], got["pandas"] + [None]) if a != b)
            report["mismatches"].append(f"{split}: first differing row genrec={str(diff[0])[:300]} pandas={str(diff[1])[:300]}")
        report.setdefault("sampled_rows", {})[split] = len(got["pandas"])
    report["agree"] = report["rows_equal"] and report["sample_equal"]
    return report


# ------------------------------------------------------------------------------------------ report
def machine_info() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "cpu_model": cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "available_ram_gib_at_start": round(psutil.virtual_memory().available / GIB, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        **versions("python", "ray", "pyarrow", "pandas", "numpy", "psutil"),
    }


def render_markdown(results: dict) -> str:
    g, p, d, m = results.get("genrec"), results.get("pandas"), results["data"], results["machine"]
    st = results["settings"]
    lines = [
        "# Prepare throughput: genrec (Ray Data) vs plain pandas",
        "",
        generated_by("python bench/prepare_throughput.py --render"),
        "",
        f"Command: `{results['command']}`",
        "",
        f"Data: synthetic log of {d['interactions']:,} interactions, {d['users']:,} users, "
        f"{d['catalog_items']:,} catalog items (genrec.data.synth, seed {d['params']['seed']}, log lengths "
        f"{d['params']['min_len']}..{d['params']['max_len']}, rows in {d['params']['log_order']} order, "
        f"{d['interactions_mib']} MiB of parquet); `table` reader, kcore=0, "
        f"samples_per_user={st['samples_per_user']}, history_len={st['history_len']}.",
        "",
    ]
    rows = []
    for name, r in (("genrec", g), ("pandas", p)):
        if not r:
            rows.append([name, "not run", "", "", "", "", "", ""])
            continue
        rows.append([name, f"{r['wall_s']:.1f}", r["ray_start_s"] if "ray_start_s" in r else "-", f"{r['peak_rss_gib']:.2f}",
                     f"{r['interactions_per_s']:,.0f}", *(f"{r['rows'][s]:,}" for s in SPLITS)])
    lines += table(["contender", "wall s", "of which Ray start s", "peak memory GiB", "interactions/s", "train rows", "valid rows",
                    "test rows"], rows)
    lines.append("")
    if results.get("speedup_vs_pandas") is not None:
        lines.append(f"Speedup vs pandas (pandas wall / genrec wall): **{results['speedup_vs_pandas']:.2f}x**.")
    goals = results.get("goals", {})
    if goals:
        lines.append(f"Goal, genrec peak memory under 6 GiB: {'met' if goals['peak_under_6_gib'] else 'NOT met'}.")
    if "wall_no_worse_than_pandas" in goals:
        lines.append(f"Goal, genrec wall time no worse than pandas: "
                     f"{'met' if goals['wall_no_worse_than_pandas'] else 'NOT met'}.")
    if results.get("agreement"):
        a = results["agreement"]
        lines.append(
            f"Outputs agree: {'yes' if a['agree'] else 'NO'} (rows per split equal: {a['rows_equal']}; identical "
            f"history ids, target, input and output for every row of {a.get('sampled_users', 0)} sampled users: "
            f"{a['sample_equal']})." + "".join(f"\n- {x}" for x in a["mismatches"])
        )
    elif not (g and p):
        lines.append("Only one contender ran (--only): no speedup and no output comparison.")
    lines += [
        "",
        "How it is measured:",
        "",
        "- Each contender runs in its own fresh subprocess, one after the other, on the same parquet files.",
        "- Wall time is measured inside the subprocess around the whole prepare, imports excluded. For genrec "
        "that is `genrec.data.prepare.prepare(PrepareConfig(...))`, which starts its own local Ray, so Ray "
        "start-up is included (shown apart: wall minus the time prepare measures after `init_ray`).",
        "- Peak memory (`peak_rss_gib`) is the peak over time of the **PSS summed over the whole process "
        "tree**: the subprocess and all its descendants (for genrec the raylet with the object store, GCS, "
        "Ray Data workers and actors). PSS splits each shared page between the processes mapping it, so the "
        "object store's shared memory and shared libraries count once. The parent samples it every "
        f"{st['sample_s']} s, or every 4x a sample's own duration when that is longer (reading PSS walks page "
        "tables); the effective interval and the sampler's CPU time are in the JSON.",
        f"- genrec: `object_store_gb={st['object_store_gb']}` (Ray's object store capped at "
        f"{st['object_store_gb']} GiB; Ray spills beyond it), `num_partitions={st['num_partitions']}`.",
        "- pandas: read both parquet files, drop interactions of unknown items (counted), stable sort by "
        "(user, timestamp, source order), groupby/cumcount positions, leave-one-out targets, histories by index "
        "arithmetic, `\", \".join` of titles in a list comprehension, one parquet file per split.",
        "",
        f"Machine: {m['cpus_usable']} usable cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, load average at start "
        f"{m['load_avg_at_start']} (the machine may be shared); Python {m['python']}, Ray {m['ray']}, "
        f"pyarrow {m['pyarrow']}, pandas {m['pandas']}, numpy {m['numpy']}.",
    ]
    for name, r in (("genrec", g), ("pandas", p)):
        if r and r.get("peak_breakdown_gib"):
            lines.append(f"\n{name} memory at its peak ({r['peak_at_s']} s after the subprocess started), "
                         "GiB by process name: " + ", ".join(f"{k} {v}" for k, v in r["peak_breakdown_gib"].items()))
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--users", type=int, default=160_000, help="synthetic users")
    ap.add_argument("--items", type=int, default=60_000, help="catalog items")
    ap.add_argument("--interactions", type=int, default=25_000_000, help="target total (sets synth's mean_len)")
    ap.add_argument("--samples-per-user", default="10", help="an integer or 'all'")
    ap.add_argument("--history-len", type=int, default=20, help="history truncated to the last H items")
    ap.add_argument("--object-store-gb", type=float, default=2.0, help="cap on Ray's object store for genrec")
    ap.add_argument("--num-partitions", type=int, default=0, help="genrec's hash partitions by user (0 = its default)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "work"), help="data and outputs (gitignored)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the JSON and .md go")
    ap.add_argument("--only", choices=["genrec", "pandas"], help="run one contender (no speedup then)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic data and user sample seed")
    ap.add_argument("--min-len", type=int, default=5,
                    help="shortest synthetic log (below 3 exercises the dropping of short users)")
    ap.add_argument("--log-order", choices=["time", "user"], default="time",
                    help="row order of interactions.parquet: time (users interleaved, like a real log) or by user")
    ap.add_argument("--sample-s", type=float, default=0.5,
                    help="memory sampling interval (stretched to 4x a sample's own duration when that is longer)")
    ap.add_argument("--check-users", type=int, default=500, help="users whose rows are compared exactly")
    add_render_flag(ap, "prepare_throughput.md in --out")
    args = ap.parse_args(argv)
    if args.samples_per_user != "all":
        args.samples_per_user = int(args.samples_per_user)
    return args


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["gen", "genrec", "pandas"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--params", required=True)
    ap.add_argument("--result")
    a = ap.parse_args(argv)
    work, params = Path(a.work), json.loads(a.params)
    if a.kind == "gen":
        child_gen(work, params)
        return
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = (child_genrec if a.kind == "genrec" else child_pandas)(work, params)
    Path(a.result).write_text(json.dumps(result, indent=2))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return
    args = parse_args(argv)
    if args.render:
        render_results(Path(args.out) / "prepare_throughput.json", render_markdown)
        return
    work = Path(args.work)
    machine = machine_info()
    meta = ensure_data(args)
    results: dict = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/prepare_throughput.py", *argv]),
        "machine": machine,
        "data": meta,
        "settings": {"samples_per_user": args.samples_per_user, "history_len": args.history_len,
                     "object_store_gb": args.object_store_gb, "num_partitions": args.num_partitions or "auto",
                     "sample_s": args.sample_s, "kcore": 0},
    }
    for name in ("genrec", "pandas"):
        if args.only in (None, name):
            results[name] = measure(name, args, meta)
    g, p = results.get("genrec"), results.get("pandas")
    results["speedup_vs_pandas"] = round(p["wall_s"] / g["wall_s"], 3) if g and p else None
    if g:
        results["goals"] = {"peak_under_6_gib": g["peak_rss_gib"] < 6.0}
        if p:
            results["goals"]["wall_no_worse_than_pandas"] = g["wall_s"] <= p["wall_s"]
    if g and p:  # both written in this run, from the same files
        results["agreement"] = agreement = compare_outputs(work, args.check_users, args.seed)
        if g["short_users_dropped"] != p["short_users_dropped"]:
            agreement["agree"] = False
            agreement["mismatches"].append(f"short users dropped: genrec {g['short_users_dropped']}, "
                                           f"pandas {p['short_users_dropped']}")
        print(f"agreement: {results['agreement']}", flush=True)
    write_results(Path(args.out) / "prepare_throughput.json", results, render_markdown)
    print(f"wrote {Path(args.out) / 'prepare_throughput.json'} and .md", flush=True)
    if results.get("agreement") and not results["agreement"]["agree"]:
        raise SystemExit("genrec and pandas outputs differ (see the report)")


if __name__ == "__main__":
    main(sys.argv[1:])
