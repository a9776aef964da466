"""Every stage in order into one run directory (`genrec demo` runs configs/pipeline_demo.yaml), or
as one Ray job through ray_jobs/pipeline.py:

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "runs", "bench/work", ".git"]}' \\
        -- python ray_jobs/pipeline.py --config configs/pipeline_demo.yaml out_dir=/shared/runs/demo

The config lists stages, each a `genrec` verb with its config keys; "{run}" in any string value is
replaced by the run directory, so each stage reads what the one before wrote. Overrides:
`out_dir=DIR`, `only=[synth,prepare]` (run these stages, in the listed order of the config),
and `<stage>.<key>=value` for a stage's config (`sft.max_steps=50`). Every stage's config is built
before the first runs, so a wrong key fails at once. A stage whose verb is not in this genrec
(genrec/stages.py) is skipped with a message, or fails the run with `skip_missing=false`.
Results go to <run>/pipeline.json and, with plots, <run>/report.md.

Under `ray job submit` the script runs in a copy of the working dir that is deleted with the job:
give out_dir as an absolute path on storage every node shares.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from genrec.config_loader import ConfigError, Override, field, from_dict, load_config
from genrec.stages import STAGES

log = logging.getLogger("genrec.pipeline")


@dataclasses.dataclass
class PipelineConfig:
    """Stages in order into one run directory."""

    out_dir: str = field("runs/pipeline", "the run directory ({run} in stage configs)")
    stages: list[dict[str, Any]] = field([], "stages in order: {name, verb, config: {...}, needs: [stage names]}; "
                                         "a stage is skipped when a stage it needs was skipped")
    only: list[str] = field([], "run just these stage names (empty = all)")
    skip_missing: bool = field(True, "skip a stage whose verb this genrec lacks (false: fail the run)")
    report: bool = field(True, "write <run>/report.md with plots at the end (genrec.report)")


def fill_run(value: Any, run: str) -> Any:
    """Replace "{run}" in every string of a nested config."""
    if isinstance(value, str):  # a command-line Override keeps its type: the stage parses it
        return type(value)(value.replace("{run}", run))
    if isinstance(value, dict):
        return {k: fill_run(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_run(v, run) for v in value]
    return value


def plain(value: Any) -> Any:
    """The config with command-line values read as YAML, as the stages read them (for pipeline.yaml)."""
    if isinstance(value, Override):
        return value.parsed()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def load_pipeline(path: str | None, overrides: list[str]) -> PipelineConfig:
    """Top-level overrides go to PipelineConfig; `<stage name>.<key>=v` into that stage's config."""
    cfg = load_config(PipelineConfig, path, [o for o in overrides if not _stage_override(o, None)])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    names = [stage.get("name") for stage in cfg.stages]
    for i, stage in enumerate(cfg.stages):
        for key in ("name", "verb"):
            if not isinstance(stage.get(key), str):
                raise ConfigError(f"stages[{i}].{key}: every stage needs a {key} (a string)")
        unknown = sorted(set(stage) - {"name", "verb", "config", "needs"})
        if unknown:
            raise ConfigError(f"stages[{i}] ({stage['name']}): unknown key {unknown[0]!r}; known: name, verb, config, needs")
        for need in stage.get("needs", []):
            if need not in names[:i]:
                raise ConfigError(f"stages[{i}].needs: {need!r} is not a stage before {stage['name']!r}")
    for item in overrides:
        if _stage_override(item, names):
            key, raw = item.split("=", 1)
            name, *path = key.split(".")
            node = next(s for s in cfg.stages if s["name"] == name).setdefault("config", {})
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = Override(raw)
    missing = sorted(set(cfg.only) - set(names))
    if missing:
        raise ConfigError(f"only: no stage named {missing[0]!r}; stages are {names}")
    return cfg


def _stage_override(item: str, names: list | None) -> bool:
    key = item.split("=", 1)[0]
    if "." not in key:
        return False
    return names is None or key.split(".")[0] in names


def plan(cfg: PipelineConfig) -> list[dict]:
    """Each stage to run, with its built config or the reason it is skipped."""
    run = str(Path(cfg.out_dir).resolve())
    steps, skipped = [], set()
    for stage in cfg.stages:
        if cfg.only and stage["name"] not in cfg.only:
            continue
        known = STAGES.get(stage["verb"])
        lacking = [n for n in stage.get("needs", []) if n in skipped]
        if known is None or lacking:
            reason = (f"verb `genrec {stage['verb']}` is not in this genrec" if known is None
                      else f"it needs {lacking}, skipped")
            skipped.add(stage["name"])
            if not cfg.skip_missing:
                raise ConfigError(f"stages: {stage['name']}: {reason}")
            steps.append({"name": stage["name"], "verb": stage["verb"], "skip": reason})
            continue
        values = fill_run(copy.deepcopy(stage.get("config") or {}), run)
        try:
            config = from_dict(known.config_cls, values)
        except ConfigError as e:
            raise ConfigError(f"stage {stage['name']} (genrec {stage['verb']}): {e}") from None
        steps.append({"name": stage["name"], "verb": stage["verb"], "run": known.run, "config": config})
    return steps


def run_pipeline(cfg: PipelineConfig) -> dict:
    from genrec.config_loader import save_config
    from genrec.runtime import init_ray

    steps = plan(cfg)  # every config checked before anything runs
    run = Path(cfg.out_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, stages=plain(cfg.stages)), run / "pipeline.yaml")
    init_ray()
    summary: dict = {"run": str(run), "stages": {}}
    for step in steps:
        if "skip" in step:
            log.warning("pipeline: skipping %s: %s", step["name"], step["skip"])
            print(f"pipeline: SKIP {step['name']}: {step['skip']}", flush=True)
            summary["stages"][step["name"]] = {"verb": step["verb"], "skipped": step["skip"]}
            continue
        print(f"pipeline: RUN {step['name']} (genrec {step['verb']})", flush=True)
        started = time.time()
        result = step["run"](step["config"])
        summary["stages"][step["name"]] = {"verb": step["verb"], "seconds": round(time.time() - started, 1),
                                           "config": dataclasses.asdict(step["config"]), "result": result}
        (run / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))  # progress so far
    if cfg.report:
        from genrec.report import sections_for_run, write_report

        summary["report"] = str(write_report(run, sections_for_run(summary)))
    (run / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pipeline YAML (configs/pipeline_demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        summary = run_pipeline(load_pipeline(args.config, args.overrides))
    except ConfigError as e:
        print(f"pipeline: config error: {e}", file=sys.stderr)
        return 2
    done = [n for n, s in summary["stages"].items() if "skipped" not in s]
    skipped = [n for n, s in summary["stages"].items() if "skipped" in s]
    print(f"pipeline: done {done}; skipped {skipped}; run {summary['run']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
