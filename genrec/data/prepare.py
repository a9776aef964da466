"""The prepare stage: any reader's interactions -> train/ valid/ test/ prompt parquet, on Ray Data.

    read chunks -> [k-core] -> write each chunk's rows into user-hash partition files
                -> one task per partition: order, split, prompts -> parquet partitioned by split

Grouping by user needs every interaction of a user in one place. Ray Data's own hash shuffle
(`repartition(keys=...)`) keeps the whole log in the object store behind a barrier and, on 2 CPUs,
its aggregator actors and our map actors could wait on each other for CPUs. Instead each read task
writes its rows straight into `num_partitions` Arrow files by hash of the user (a map-side shuffle
through the output folder's storage, as Spark does), so the first pass streams with only the
chunks in flight in memory. The second pass starts once every chunk is written (a user's last
interaction may be in the last chunk) and reads one partition per task, building its rows with
vectorised Arrow kernels (genrec/data/split.py) while finished ones are written. `out_dir` must
therefore be storage every node sees, as for any Ray Data write on a cluster.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import ray.data

from genrec.config import PrepareConfig

from genrec.config_loader import save_config
from genrec.data import split as split_rows
from genrec.data.readers import read_source
from genrec.data.rejects import Rejects
from genrec.data.templates import get_template
from genrec.runtime import init_ray

log = logging.getLogger("genrec.prepare")

SHORT_USER = f"user with fewer than {split_rows.MIN_INTERACTIONS} interactions"
KCORE = "k-core filter"
SHUFFLE_DIR = "_by_user"
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


@ray.remote(num_cpus=0)
class BlockTally:
    """Sums what each block learns about the data (item counts, sequence lengths, short users)."""

    def __init__(self, num_items: int) -> None:
        self.item_counts = np.zeros(num_items, np.int64)
        self.length_hist = np.zeros(1, np.int64)
        self.short_users = 0
        self.short_interactions = 0

    def add(self, item_counts: np.ndarray, lengths: np.ndarray, short_users: int, short_interactions: int) -> None:
        self.item_counts += item_counts
        hist = np.bincount(lengths) if len(lengths) else np.zeros(1, np.int64)
        if len(hist) > len(self.length_hist):
            hist[: len(self.length_hist)] += self.length_hist
            self.length_hist = hist
        else:
            self.length_hist[: len(hist)] += hist
        self.short_users += short_users
        self.short_interactions += short_interactions

    def get(self) -> dict:
        return dict(
            item_counts=self.item_counts,
            length_hist=self.length_hist,
            short_users=self.short_users,
            short_interactions=self.short_interactions,
        )


def write_user_partitions(block: pa.Table, catalog_ids, num_partitions: int, work_dir: str) -> pa.Table:
    """Map side: split a chunk's interactions by hash of user into one Arrow file per partition.

    Returns one small row per file written (partition, path, rows) instead of the interactions.
    """
    if block.num_rows == 0:
        return pa.table({"partition": pa.array([], pa.int32()), "path": pa.array([], pa.string()),
                         "rows": pa.array([], pa.int64())})
    block = split_rows.with_item_index(block, ray.get(catalog_ids))
    users = block.column("user_id").to_numpy(zero_copy_only=False)
    partition = (pd.util.hash_array(users) % num_partitions).astype(np.int32)
    order = np.argsort(partition, kind="stable")
    counts = np.bincount(partition, minlength=num_partitions)
    block = block.take(pa.array(order))
    written, start, name = [], 0, uuid.uuid4().hex
    for part, count in enumerate(counts):
        if count:
            path = Path(work_dir) / f"{part:05d}" / f"{name}.arrow"
            path.parent.mkdir(parents=True, exist_ok=True)
            with pa.ipc.new_file(path, block.schema, options=IPC_OPTIONS) as writer:
                writer.write_table(block.slice(start, count))
            written.append((part, str(path), int(count)))
        start += count
    part, paths, rows = zip(*written)
    return pa.table({"partition": pa.array(part, pa.int32()), "path": list(paths), "rows": pa.array(rows, pa.int64())})


def split_partition(batch: pa.Table, catalog, template_name: str, spec: split_rows.RowsSpec, tally) -> pa.Table:
    """Reduce side: every user of one partition -> their prompt rows."""
    catalog = ray.get(catalog)
    (paths,) = batch.column("paths").to_pylist()
    block = pa.concat_tables(pa.ipc.open_file(path).read_all() for path in paths)
    result = split_rows.build_rows(
        block, catalog.column("item_id").combine_chunks(), catalog.column("title").combine_chunks(),
        get_template(template_name), spec,
    )
    # Wait for the tally so its totals are complete when the write finishes.
    ray.get(tally.add.remote(result.item_counts, result.lengths, result.short_users, result.short_interactions))
    return result.rows


def kcore_filter(ds: ray.data.Dataset, k: int) -> tuple[ray.data.Dataset, int]:
    """Drop users and items with fewer than k interactions until none is left; returns rows dropped.

    Iterates because dropping items can push users under k and back. Materialises the
    interactions once (they are needed for every round). Counts are summed per block and then in
    the driver, which is cheaper here than Ray Data's groupby shuffle.
    """
    ds = ds.materialize()
    start = current = ds.count()
    while True:
        users, items = _keys_with_count_at_least(ds, k)
        ds = ds.map_batches(_keep_keys, fn_args=(users, items), batch_format="pyarrow").materialize()
        after = ds.count()
        if after == current:
            return ds, start - after
        current = after


def _block_counts(block: pa.Table) -> pa.Table:
    """Interactions per user and per item in one block (column `kind`: 0 user, 1 item)."""
    parts = []
    for kind, column in enumerate(("user_id", "item_id")):
        counts = block.group_by(column).aggregate([(column, "count")])
        parts.append(pa.table({"kind": pa.array([kind] * counts.num_rows, pa.int8()),
                               "key": counts.column(column), "n": counts.column(f"{column}_count")}))
    return pa.concat_tables(parts)


def _keys_with_count_at_least(ds: ray.data.Dataset, k: int) -> tuple[pa.Array, pa.Array]:
    blocks = ray.get(ds.map_batches(_block_counts, batch_format="pyarrow").to_arrow_refs())
    totals = pa.concat_tables(blocks).group_by(["kind", "key"]).aggregate([("n", "sum")])
    keep = totals.filter(pc.greater_equal(totals.column("n_sum"), k))
    users = keep.filter(pc.equal(keep.column("kind"), 0)).column("key").combine_chunks()
    items = keep.filter(pc.equal(keep.column("kind"), 1)).column("key").combine_chunks()
    return users, items


def _keep_keys(block: pa.Table, users: pa.Array, items: pa.Array) -> pa.Table:
    keep = pc.and_(pc.is_in(block.column("user_id"), users), pc.is_in(block.column("item_id"), items))
    return block.filter(keep)


def prepare(config: PrepareConfig) -> dict:
    """Run the prepare stage; returns the stats also written to `out_dir/stats.json`."""
    init_ray(config.object_store_gb)
    started = time.time()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*split_rows.SPLIT_NAMES, "_rows", SHUFFLE_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    save_config(config, out / "config.yaml")

    source = read_source(config.source)
    catalog = source.catalog
    interactions = source.interactions
    kcore_dropped = 0
    if config.kcore > 0:
        interactions, kcore_dropped = kcore_filter(interactions, config.kcore)

    spec = split_rows.RowsSpec(config.history_len, config.samples_per_user, config.domain, config.seed)
    catalog_ref = ray.put(catalog)
    catalog_ids_ref = ray.put(catalog.column("item_id").combine_chunks())

    pieces = interactions.map_batches(
        write_user_partitions, batch_size=None, batch_format="pyarrow",
        fn_kwargs=dict(catalog_ids=catalog_ids_ref, num_partitions=_num_partitions(config), work_dir=str(out / SHUFFLE_DIR)),
    ).take_all()
    by_partition = defaultdict(list)
    for piece in pieces:
        by_partition[piece["partition"]].append(piece["path"])

    tally = BlockTally.remote(catalog.num_rows)
    if by_partition:
        partitions = [{"paths": paths} for _, paths in sorted(by_partition.items())]
        rows = ray.data.from_items(partitions, override_num_blocks=len(partitions)).map_batches(
            split_partition, batch_size=1, batch_format="pyarrow",
            fn_kwargs=dict(catalog=catalog_ref, template_name="genrec", spec=spec, tally=tally),
        )
        rows.write_parquet(str(out / "_rows"), partition_cols=["split"])
    for name in split_rows.SPLIT_NAMES:
        written = out / "_rows" / f"split={name}"
        if written.exists():
            written.rename(out / name)
        else:
            (out / name).mkdir()
    shutil.rmtree(out / "_rows", ignore_errors=True)
    shutil.rmtree(out / SHUFFLE_DIR, ignore_errors=True)
    pq.write_table(catalog, out / "catalog.parquet")

    reader_rejects = ray.get(source.log.get.remote())
    stats = _stats(out, catalog, ray.get(tally.get.remote()), reader_rejects, source.catalog_rejects, kcore_dropped)
    stats["wall_s"] = round(time.time() - started, 2)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("prepared %s: %s", out, json.dumps({k: stats[k] for k in ("users", "items", "interactions", "rows")}))
    return stats


def _num_partitions(config: PrepareConfig) -> int:
    """Partitions of the user shuffle, from the input's size on disk (counting the rows of a lazily
    read dataset would read it twice): about 8 MiB of input each, at least two per CPU."""
    if config.num_partitions > 0:
        return config.num_partitions
    path = Path(config.source.path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files if p.exists())
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(2 * cpus, min(512, size // (8 * 1024**2)))


def _stats(out: Path, catalog: pa.Table, tally: dict, reader_rejects: Rejects, catalog_rejects: Rejects,
           kcore_dropped: int) -> dict:
    """What stats.json reports: sizes, sequence lengths, rows per split, and every drop by reason."""
    hist = tally["length_hist"]
    lengths = np.repeat(np.arange(len(hist)), hist)
    dropped = Rejects().merge(reader_rejects)
    dropped.add(KCORE, "interactions of users or items under k", n=kcore_dropped)
    dropped.add(SHORT_USER, f"{tally['short_users']} users", n=tally["short_interactions"])
    return {
        "users": int(len(lengths)),
        "items": int((tally["item_counts"] > 0).sum()),
        "interactions": int(tally["item_counts"].sum()),
        "catalog_items": catalog.num_rows,
        "sequence_length": _describe(lengths),
        "rows": {name: pads.dataset(out / name, format="parquet").count_rows() for name in split_rows.SPLIT_NAMES},
        "short_users_dropped": tally["short_users"],
        "interactions_dropped": dropped.as_dict(),
        "catalog_rows_dropped": catalog_rejects.as_dict(),
    }


def _describe(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p90": 0.0}
    return {
        "min": int(values.min()),
        "max": int(values.max()),
        "mean": round(float(values.mean()), 3),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
    }
