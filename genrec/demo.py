"""`genrec demo`: every stage on the embedded default (local Ray, synthetic data, tiny model).

Stages are added here as they land; each reads what the one before it wrote, in one run folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from genrec.config import PrepareConfig, SourceConfig, SynthInteractionsConfig


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
        "",
    ]
    print("\n".join(lines))
