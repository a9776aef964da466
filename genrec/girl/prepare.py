"""`genrec prepare-jobs`: a CV/JD source -> SFT rows and preference rows, on Ray Data.

    reader (genrec/girl/readers.py) -> CVs assigned to train/valid/test by a hash of their id
      -> Ray Data map_batches over CVs: SFT rows and preference rows (genrec/girl/rows.py)
      -> OUT/cvs.parquet  OUT/jds.parquet
         OUT/sft/{train,valid,test}/*.parquet + sft/catalog.parquet + sft/stats.json (template cv_to_jd)
         OUT/pairs/{train,valid,test}.parquet
         OUT/interactions/{train,valid,test}.parquet   labelled pairs with their texts (held-out AUC)
         OUT/stats.json  OUT/config.yaml

`genrec train-sft data_dir=OUT/sft` trains the CV->JD generator: sft/stats.json names the template,
and sft/catalog.parquet holds the JD texts the tiny tokenizer is trained on.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from genrec.config import PrepareJobsConfig

from genrec.config_loader import save_config
from genrec.girl import prompts
from genrec.girl.readers import JobSet, read_generic, read_jobset
from genrec.girl.rows import PAIR_SCHEMA, SFT_SCHEMA, SPLITS, JobIndex, RowSpec, assign_splits, pair_rows, sft_rows
from genrec.runtime import init_ray

log = logging.getLogger("genrec.girl")

CVS_PER_BATCH = 256


def load_source(cfg: PrepareJobsConfig, out: Path) -> tuple[JobSet, str]:
    """(the JobSet, the synthetic folder or "") for the configured source."""
    if cfg.source == "generic":
        return read_generic(cfg.cvs_path, cfg.jds_path, cfg.interactions_path, strict=cfg.strict,
                            jd_group_col=cfg.jd_group_col), ""
    if cfg.source == "synthetic":
        folder = cfg.path
        if not folder:
            from genrec.girl.market import synth_jobs

            folder = str(out / "synth")
            if not (Path(folder) / "synth.json").exists():
                synth_jobs(folder, cfg.synth_num_cvs, cfg.synth_num_jds, cfg.seed)
        return read_jobset("synthetic", folder), str(Path(folder).resolve())
    if cfg.source == "livecareer_google":
        return read_jobset(cfg.source, cfg.path, per_cv=cfg.weak_per_cv, seed=cfg.seed, max_cvs=cfg.max_cvs), ""
    return read_jobset(cfg.source, cfg.path), ""


def prepare_jobs(cfg: PrepareJobsConfig) -> dict:
    init_ray()
    started = time.time()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sft", "pairs", "interactions"):
        shutil.rmtree(out / name, ignore_errors=True)
    save_config(cfg, out / "config.yaml")
    jobset, synth_dir = load_source(cfg, out)

    cvs = jobset.cvs.copy()
    cvs["split"] = assign_splits(cvs["cv_id"], cfg.valid_share, cfg.test_share, cfg.seed)
    index = JobIndex(cvs, jobset.jds, jobset.interactions, jobset.related, cfg.max_cv_words, cfg.max_jd_words)
    spec = RowSpec(cfg.seed, cfg.sft_per_cv, cfg.pos_per_cv, cfg.observed_negatives, cfg.hard_negatives,
                   cfg.related_negatives, cfg.random_negatives, cfg.other_cv_negatives, cfg.margin_per_grade,
                   cfg.truncated_negatives)
    index_ref = ray.put(index)
    labelled = cvs[cvs["cv_id"].isin(set(jobset.interactions["cv_id"]))][["cv_id"]].sort_values("cv_id")
    batches = ray.data.from_pandas(labelled.reset_index(drop=True))
    sft = _collect(batches.map_batches(sft_rows, batch_size=CVS_PER_BATCH, batch_format="pandas",
                                       fn_kwargs=dict(index=index_ref, spec=spec)), SFT_SCHEMA)
    pairs = _collect(batches.map_batches(pair_rows, batch_size=CVS_PER_BATCH, batch_format="pandas",
                                         fn_kwargs=dict(index=index_ref, spec=spec)), PAIR_SCHEMA)

    pq.write_table(pa.Table.from_pandas(cvs, preserve_index=False), out / "cvs.parquet")
    pq.write_table(pa.Table.from_pandas(jobset.jds, preserve_index=False), out / "jds.parquet")
    counts = {"sft": {}, "pairs": {}, "interactions": {}, "cvs": {}}
    interactions = jobset.interactions.merge(cvs[["cv_id", "split"]], on="cv_id")
    interactions["cv_text"] = interactions["cv_id"].map(index.cv_text)
    interactions["jd_text"] = interactions["jd_id"].map(index.jd_text)
    for split in SPLITS:
        part = sft.filter(pc.equal(sft["split"], split)).sort_by([("user_id", "ascending"), ("position", "ascending")])
        (out / "sft" / split).mkdir(parents=True)
        pq.write_table(part.drop(["split"]), out / "sft" / split / "part-00000.parquet")
        part_pairs = pairs.filter(pc.equal(pairs["split"], split))
        (out / "pairs").mkdir(exist_ok=True)
        pq.write_table(part_pairs.drop(["split"]), out / "pairs" / f"{split}.parquet")
        part_inter = interactions[interactions["split"] == split].drop(columns="split")
        (out / "interactions").mkdir(exist_ok=True)
        part_inter.to_parquet(out / "interactions" / f"{split}.parquet", index=False)
        counts["sft"][split], counts["pairs"][split] = part.num_rows, part_pairs.num_rows
        counts["interactions"][split], counts["cvs"][split] = len(part_inter), int((cvs["split"] == split).sum())
    catalog = pa.table({"item_id": jobset.jds["jd_id"].tolist(),
                        "title": [index.jd_text[j] for j in jobset.jds["jd_id"]]})
    pq.write_table(catalog, out / "sft" / "catalog.parquet")
    truncated = {"cvs": int(sum(len(t.split()) > cfg.max_cv_words for t in cvs["text"])),
                 "jds": int(sum(len(t.split()) > cfg.max_jd_words for t in jobset.jds["text"]))}
    (out / "sft" / "stats.json").write_text(json.dumps(
        {"template": prompts.TEMPLATE_NAME, "rows": counts["sft"], "max_cv_words": cfg.max_cv_words,
         "max_jd_words": cfg.max_jd_words}, indent=2))
    kinds = pd.Series(pairs["neg_kind"].to_pylist()).value_counts().sort_index()
    stats = {
        "source": jobset.name, "notes": jobset.notes, "synth_dir": synth_dir,
        "cvs": len(cvs), "jds": len(jobset.jds), "interactions": len(jobset.interactions),
        "matched": int(jobset.interactions["label"].sum()),
        "rows": counts, "negative_kinds": {k: int(v) for k, v in kinds.items()},
        "cvs_without_match": int(len(labelled) - len(set(sft["user_id"].to_pylist()))),
        "truncated": truncated, "max_cv_words": cfg.max_cv_words, "max_jd_words": cfg.max_jd_words,
        "rejects": jobset.rejects.as_dict(), "wall_s": round(time.time() - started, 2),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("prepared jobs %s: %s", out, json.dumps({k: stats[k] for k in ("cvs", "jds", "rows")}))
    return stats


def _collect(ds: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    """All rows (CV/JD sets fit in memory); blocks come back in input order, so the result is fixed."""
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()
