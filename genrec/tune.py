"""`genrec tune`: a Ray Tune sweep over one stage's config keys (Ray Train V2 pattern).

    Tuner(run_trial, param_space={stage, base, params: search space})
      -> each trial: stage config = base + sampled params, out_dir = out_dir/trials/<trial id>
         -> sft, reward: the stage's TorchTrainer, with TuneReportCallback passing every
            ray.train.report (validation loss / pairwise accuracy every eval_every steps) to Tune,
            where ASHA stops trailing trials (a stopped trial's Train controller dies with it, and Ray
            Train's placement-group cleaner frees its workers' CPUs: runtime.start_local_ray). A
            trial's Ray Train run never retries itself (without_train_retries); Tune retries the
            trial instead, which resumes from the run's last checkpoint
         -> sft: optionally HR@10 on the first hr_users validation users (constrained beam search)
         -> ppo: the actor loop, reporting every iteration (reward_mean, kl, true_fit, ...)
      -> results.csv / results.md (one row per trial), best.json, best_config.yaml, report.md (plots)

The trial function only drives: it holds next to no resources itself (TRIAL_DRIVER_CPU), the stage's
Ray Train workers (or PPO actors) do, so the number of trials at once is the cluster's CPUs (or
GPUs) over what one trial needs. A stage becomes tunable by a `Sweep` on its record in
genrec/stages.py: its metric and mode, and a `fit(cfg, callbacks) -> final metrics` that hands
`callbacks` to its TorchTrainer's RunConfig (a stage that is not a Ray Train run, such as PPO's actor
loop, calls `ray.tune.report` itself and ignores them). Every report must carry the stage's `metric`
(what ASHA prunes on).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml

from genrec.config import PPOConfig, PrepareConfig, RewardConfig, SFTConfig, TuneConfig

from genrec.config_loader import (ConfigError, absolute_input_paths, from_dict, keys, load_config, renamed, save_config,
                                  set_dotted)
from genrec.runtime import init_ray, worker_resources
from genrec.stages import STAGES, Sweep, resolve

log = logging.getLogger("genrec.tune")

PREPARE_KEYS = ("history_len",)  # swept keys of the prepare stage: each value is prepared once
# Keys that decide an SFT run's tokenizer and token shards: trials that share them share one copy.
TOKEN_KEYS = ("data_dir", "model", "tiny.vocab_size", "max_len", "format", "item_tokens")
# The trial function only waits on its TorchTrainer; Tune refuses a trial with no resources at all,
# so it asks for a sliver of a CPU that never keeps a Ray Train worker from starting.
TRIAL_DRIVER_CPU = 0.01


# ------------------------------------------------------------------------------------- the stages
def without_train_retries(cfg):
    """`cfg` with ray_train.max_failures = 0: Tune, not Ray Train, retries a failed trial (tune()).
    Why: when Tune stops a trial, the trial's Ray Train workers can die a moment before its
    controller; a controller with retries left then starts a new worker group, whose fresh placement
    group its placement-group cleaner has not been told of when the controller dies: that group
    holds its CPUs until the driver exits, and on a small cluster every later trial waits for them.
    A retried trial resumes all the same: its run keeps its storage path and name (train.common)."""
    return dataclasses.replace(cfg, ray_train=dataclasses.replace(cfg.ray_train, max_failures=0))


def trial_retries(cfg) -> int:
    """How often Tune restarts a failed trial: the stage's ray_train.max_failures (0 for a stage
    without Ray Train workers)."""
    return cfg.ray_train.max_failures if hasattr(cfg, "ray_train") else 0


def fit_sft(cfg: SFTConfig, callbacks: list) -> dict:
    """genrec.train.launch.train_sft with Tune's callbacks on its RunConfig; one checkpoint kept
    per trial (trials are many); returns the final metrics."""
    from genrec.train.launch import train_sft

    return train_sft(cfg, callbacks=callbacks, keep_checkpoints=1)


def sft_for_tune(cfg: SFTConfig) -> SFTConfig:
    """Every Ray Train report must carry valid_loss for ASHA: the launcher reports validation results
    and checkpoints, so checkpoints are taken exactly at validation steps."""
    if cfg.eval_every == 0:
        raise ConfigError("eval_every: a tuned SFT run needs validation reports (eval_every > 0) for ASHA")
    return without_train_retries(dataclasses.replace(cfg, save_every=cfg.eval_every))


def fit_reward(cfg: RewardConfig, callbacks: list) -> dict:
    """genrec.train.reward.train_reward with Tune's callbacks; returns the held-out metrics."""
    from genrec.train.reward import train_reward

    return train_reward(cfg, callbacks=callbacks, keep_checkpoints=1)


def reward_for_tune(cfg: RewardConfig) -> RewardConfig:
    """As for SFT: checkpoints only at validation steps, so every report carries valid_pairwise_acc."""
    if cfg.eval_every == 0:
        raise ConfigError("eval_every: a tuned reward run needs validation reports (eval_every > 0) for ASHA")
    return without_train_retries(dataclasses.replace(cfg, save_every=cfg.eval_every))


def fit_ppo(cfg: PPOConfig, callbacks: list) -> dict:
    """genrec.rl.loop.run_ppo, reporting every iteration's metrics to Tune itself: PPO is a loop of
    Ray actors, not a TorchTrainer, so there is no RunConfig for `callbacks`."""
    from genrec.rl.loop import run_ppo

    return run_ppo(cfg, report=lambda record: ray.tune.report(
        {k: v for k, v in record.items() if isinstance(v, (int, float))}))


def ppo_bundles(cfg: PPOConfig) -> list[dict]:
    """One placement-group bundle per PPO actor (learners, reference, reward scorer, rollout workers):
    the actors a trial starts land in its placement group, so the trial reserves them up front."""
    from genrec.rl.actors import resources

    def bundle(role: str) -> dict:
        need = resources(cfg)[role]
        return {"CPU": need["num_cpus"], **({"GPU": need["num_gpus"]} if need["num_gpus"] else {}),
                **need.get("resources", {})}

    return ([bundle("learner")] * cfg.num_learners + [bundle("reference"), bundle("scorer")]
            + [bundle("rollout")] * cfg.num_rollout_workers)


def ppo_resources(cfg: PPOConfig) -> dict:
    """What the PPO actors of one trial hold in all."""
    bundles = ppo_bundles(cfg)
    return {key: sum(b.get(key, 0) for b in bundles) for key in ("CPU", "GPU") if any(key in b for b in bundles)}


def train_workers(cfg) -> dict:
    """What one trial's Ray Train workers hold in all: num_workers times worker_resources."""
    return {key: value * cfg.ray_train.num_workers for key, value in worker_resources(cfg.ray_train).items()}


def sft_final_step(trial_dir: Path):
    final = trial_dir / "final" / "genrec.json"
    return json.loads(final.read_text())["metrics"].get("step") if final.exists() else None


def reward_final_step(trial_dir: Path):
    final = trial_dir / "final" / "genrec.json"
    return json.loads(final.read_text())["train"].get("step") if final.exists() else None


def ppo_final_iteration(trial_dir: Path):
    """The iteration of the checkpoint run_ppo copies to final/ once every iteration has run."""
    from genrec.rl.loop import read_metrics

    if not (trial_dir / "final").exists():
        return None
    metrics = read_metrics(trial_dir)
    return metrics[-1]["iteration"] if metrics else None


# ------------------------------------------------------------------------------------ search space
def search_domain(key: str, spec: Any):
    """A YAML search-space entry as a Tune domain: {loguniform: [lo, hi]} etc., or a fixed value."""
    from ray import tune

    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1:
        raise ConfigError(f"search_space.{key}: expected one of loguniform/uniform/randint/choice/grid, got {spec}")
    (kind, args), = spec.items()
    makers = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint,
              "choice": tune.choice, "grid": tune.grid_search}
    if kind not in makers:
        raise ConfigError(f"search_space.{key}: unknown kind {kind!r}; use one of {sorted(makers)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search_space.{key}.{kind}: expected a non-empty list, got {args!r}")
        return makers[kind](args)
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"search_space.{key}.{kind}: expected [low, high], got {args!r}")
    return makers[kind](*(float(a) if kind != "randint" else int(a) for a in args))


def absolute_listed_paths(config_cls: type, key: str, spec: Any) -> Any:
    """A search-space entry with its choice/grid values made absolute where `key` is an input path."""
    if key not in getattr(config_cls, "INPUT_PATHS", ()) or not isinstance(spec, dict) or len(spec) != 1:
        return spec
    (kind, args), = spec.items()
    if kind not in ("choice", "grid") or not isinstance(args, list):
        return spec
    return {kind: [absolute_input_paths(config_cls, {key: value}).get(key, value) for value in args]}


def listed_values(key: str, spec: Any) -> list:
    """The values a prepare key can take: it is prepared once per value before the sweep."""
    if not isinstance(spec, dict):
        return [spec]
    (kind, args), = spec.items()
    if kind not in ("choice", "grid"):
        raise ConfigError(f"search_space.{key}: a prepare key takes choice or grid values, got {kind}")
    return list(args)


# ---------------------------------------------------------------------------------------- driver
def tune(cfg: TuneConfig) -> dict:
    """Run the sweep; returns the best trial's row (also in out_dir/best.json)."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    init_ray()
    stage = STAGES[cfg.stage]
    sweep = stage.sweep
    if cfg.metric == "hr@10" and cfg.stage != "train-sft":
        raise ConfigError(f"metric: hr@10 is measured for the train-sft stage only; use metric=valid for {cfg.stage}")
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    from_file = yaml.safe_load(Path(cfg.base_config).read_text()) or {} if cfg.base_config else {}
    base = merged(renamed(stage.config_cls, from_file), renamed(stage.config_cls, cfg.base))
    # Tune starts each trial in its trial folder: relative input paths are resolved here, in base
    # and in the values a search space lists.
    base.update(absolute_input_paths(stage.config_cls, base))
    search_space = {stage.config_cls.RENAMED.get(key, key): absolute_listed_paths(stage.config_cls, key, spec)
                    for key, spec in cfg.search_space.items()}
    unknown = sorted(set(search_space) - keys(stage.config_cls) - set(PREPARE_KEYS))
    if unknown:
        raise ConfigError(f"search_space: {unknown[0]!r} is not a key of {stage.config_cls.__name__}")
    base_cfg = from_dict(stage.config_cls, base)  # a bad base fails here, not in every trial
    if cfg.stage == "train-reward" and base_cfg.backbone == "tfidf":
        raise ConfigError("backbone: tfidf is fitted in seconds without Ray Train or validation reports; tune a "
                          "neural backbone (tiny, minilm, an HF model)")
    data_dirs = prepare_variants(cfg, out)
    token_cache = build_token_cache(cfg, base_cfg, data_dirs, out) if cfg.stage == "train-sft" else {}

    per_trial = resolve(sweep.resources)(base_cfg)
    concurrency = cfg.max_concurrent_trials or max_trials_at_once(per_trial)
    log.info("tune %s: %d samples, %d trial(s) at once (each %s)", cfg.stage, cfg.num_samples, concurrency, per_trial)
    scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=cfg.grace_period,
                               reduction_factor=cfg.reduction_factor, max_t=10_000)
                 if cfg.scheduler == "asha" else FIFOScheduler())
    param_space = {
        "stage": cfg.stage, "base": base, "trials_dir": str(out / "trials"), "data_dirs": data_dirs,
        "token_cache": token_cache, "hr_users": cfg.hr_users,
        "params": {key: search_domain(key, spec) for key, spec in search_space.items()},
    }
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(run_trial, trial_placement),
        param_space=param_space,
        tune_config=ray_tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
                                        num_samples=cfg.num_samples,
                                        search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency)),
        run_config=ray_tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=0,
                                      failure_config=ray_tune.FailureConfig(max_failures=trial_retries(base_cfg))),
    )
    grid = tuner.fit()
    rows = result_rows(grid, sweep, out)
    best = write_results(cfg, rows, out, trial_retries(base_cfg))
    log.info("tune done: best trial %s %s", best["trial"], {k: best.get(k) for k in (f"best_{sweep.metric}", "hr@10")})
    return best


def trial_placement(config: dict):
    """The trial's placement group: its driver's sliver of a CPU, plus the stage's bundles for the
    trial's config (a swept num_rollout_workers changes them)."""
    from ray.tune import PlacementGroupFactory

    stage = STAGES[config["stage"]]
    if not stage.sweep.bundles:
        return PlacementGroupFactory([{"CPU": TRIAL_DRIVER_CPU}])
    values = trial_values(config["base"], {k: v for k, v in config["params"].items() if k not in PREPARE_KEYS})
    bundles = resolve(stage.sweep.bundles)(from_dict(stage.config_cls, values))
    return PlacementGroupFactory([{"CPU": TRIAL_DRIVER_CPU}, *bundles])


def merged(base: dict, extra: dict) -> dict:
    """`base` with `extra` on top, section by section (a section in both keeps the keys of both)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def trial_values(base: dict, params: dict) -> dict:
    """A trial's stage config: base with each sampled value set at its (dotted) key."""
    values = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(values, key, value)
    return values


def max_trials_at_once(per_trial: dict) -> int:
    total = ray.cluster_resources()
    return max(1, min(math.floor(total.get(k, 0) / v) for k, v in per_trial.items()))


def prepare_variants(cfg: TuneConfig, out: Path) -> dict:
    """history_len -> prepared folder, one `genrec prepare` per value in the search space."""
    if "history_len" not in cfg.search_space:
        return {}
    if not cfg.prepare_config:
        raise ConfigError("prepare_config: sweeping history_len needs the prepare YAML to re-prepare the data")
    from genrec.data.prepare import prepare

    dirs = {}
    for value in listed_values("history_len", cfg.search_space["history_len"]):
        target = out / "prepared" / f"h{value}"
        if not (target / "stats.json").exists():
            prepare(load_config(PrepareConfig, cfg.prepare_config, [f"history_len={value}", f"out_dir={target}"]))
        dirs[str(value)] = str(target)
    return dirs


def build_token_cache(cfg: TuneConfig, base_cfg: SFTConfig, data_dirs: dict, out: Path) -> dict:
    """Tokenizer and token shards built once per data folder, linked into each trial that would
    build the same ones (none of TOKEN_KEYS swept), instead of every trial tokenizing again."""
    from genrec.train.launch import build_tokenizer, tokenize_splits

    if any(k in cfg.search_space for k in TOKEN_KEYS):
        return {}
    cache = {}
    for data_dir in data_dirs.values() or [base_cfg.data_dir]:
        folder = out / "tokens_cache" / Path(data_dir).name
        folder.mkdir(parents=True, exist_ok=True)
        variant = dataclasses.replace(base_cfg, data_dir=data_dir)
        tokenize_splits(variant, folder, build_tokenizer(variant, folder))
        cache[str(Path(data_dir).resolve())] = str(folder)
    return cache


# ----------------------------------------------------------------------------------------- trial
def run_trial(config: dict) -> None:
    """One trial (a Tune function trainable): build the stage config, fit, then report HR@10."""
    from ray.tune.integration.ray_train import TuneReportCallback

    stage = STAGES[config["stage"]]
    sweep = stage.sweep
    trial_id = ray.tune.get_context().get_trial_id()
    params = dict(config["params"])
    values = trial_values(config["base"], params)
    if "history_len" in params:
        values["data_dir"] = config["data_dirs"][str(values.pop("history_len"))]
    values["out_dir"] = str(Path(config["trials_dir"]) / trial_id)
    if "run_name" in stage.config_cls.__dataclass_fields__:
        values["run_name"] = trial_id
    cfg = from_dict(stage.config_cls, values)
    if sweep.adapt:
        cfg = resolve(sweep.adapt)(cfg)
    link_tokens(cfg, config["token_cache"])
    final = resolve(sweep.fit)(cfg, [TuneReportCallback()])
    if config["hr_users"]:
        hr = validation_hr(cfg, Path(cfg.out_dir) / sweep.best_dir, config["hr_users"])
        ray.tune.report({sweep.metric: final.get(sweep.metric, math.nan), "step": final.get("step"), "hr@10": hr})


def link_tokens(cfg, cache: dict) -> None:
    source = cache.get(str(Path(getattr(cfg, "data_dir", "")).resolve()))
    out = Path(cfg.out_dir)
    if source is None or (out / "tokenizer").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    for part in ("tokenizer", "tokens"):
        os.symlink(Path(source) / part, out / part, target_is_directory=True)


def validation_hr(cfg, checkpoint: Path, users: int) -> float:
    """HR@10 of a trial's best model on the first `users` validation users (constrained beam search)."""
    from genrec.config import EvaluateConfig
    from genrec.rec.evaluate import evaluate

    report = evaluate(EvaluateConfig(data_dir=cfg.data_dir, checkpoint_dir=str(checkpoint), split="valid",
                                     out_dir=str(Path(cfg.out_dir) / "eval_valid"), max_users=users, ks=[1, 5, 10],
                                     top_k=10, num_beams=10, max_len=cfg.max_len))
    return float(report["metrics"]["hr@10"])


# --------------------------------------------------------------------------------------- results
def result_rows(grid, sweep: Sweep, out: Path) -> list[dict]:
    """One row per trial: its sampled values, how it ended, and its validation results."""
    rows = []
    for result in grid:
        config = result.config or {}
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name  # no metrics when it failed at once
        trial_dir = out / "trials" / trial_id
        history = result.metrics_dataframe
        key = sweep.metric
        valid = history[key].dropna() if history is not None and key in history else pd.Series([], dtype=float)
        if result.error is not None:
            status = "error"  # ASHA stopping a trial mid-report can also surface as an error
        elif resolve(sweep.final_x)(trial_dir) == metrics.get(sweep.x):
            status = "finished"
        else:
            status = "stopped early"  # (a stopped trial may still write its final model: Tune saw it stop)
        row = {"trial": trial_id, **config.get("params", {}), "status": status, sweep.x: metrics.get(sweep.x),
               "reports": len(valid), key: metrics.get(key),
               f"best_{key}": (float(valid.min() if sweep.mode == "min" else valid.max()) if len(valid) else None)}
        for extra in ("hr@10", "true_fit", "kl"):  # hr@10: sft with hr_users; true_fit, kl: PPO
            if extra in metrics:
                row[extra] = metrics[extra]
        row.update(model=str(trial_dir / sweep.best_dir), error=str(result.error).splitlines()[0] if result.error else "")
        rows.append(row)
    return rows


def write_results(cfg: TuneConfig, rows: list[dict], out: Path, retries: int) -> dict:
    """results.csv and results.md, best.json, and best_config.yaml (loadable by the stage's verb,
    with the base config's `retries` as ray_train.max_failures again: trials ran without them)."""
    table = pd.DataFrame(rows)
    sweep = STAGES[cfg.stage].sweep
    if cfg.metric == "hr@10":
        key, ascending = "hr@10", False
    else:
        key, ascending = (sweep.metric if sweep.pick_last else f"best_{sweep.metric}"), sweep.mode == "min"
    table = table.sort_values(key, ascending=ascending, na_position="last")
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(markdown_table(table, f"Tune {cfg.stage}: {len(table)} trials, best by {key}"))
    ranked = table.dropna(subset=[key])
    if ranked.empty:
        raise RuntimeError(f"no trial reported {key}; see {out / 'results.md'} for the errors")
    best = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in ranked.iloc[0].to_dict().items()}
    (out / "best.json").write_text(json.dumps(best, indent=2, default=str))
    trial_config = yaml.safe_load((out / "trials" / best["trial"] / "config.yaml").read_text())
    trial_config["out_dir"] = str(out / "best_run")  # a fresh run of the winner, not a resume of the trial
    if "run_name" in trial_config:
        trial_config["run_name"] = ""
    if "ray_train" in trial_config:
        trial_config["ray_train"]["max_failures"] = retries
    stage_cfg = from_dict(STAGES[cfg.stage].config_cls, trial_config)
    save_config(stage_cfg, out / "best_config.yaml")
    best["best_config"] = str(out / "best_config.yaml")
    write_sweep_report(cfg, table, out)
    return best


def write_sweep_report(cfg: TuneConfig, table: pd.DataFrame, out: Path) -> Path:
    """out_dir/report.md: the results table and every trial's validation loss against the step."""
    from genrec.report import compare, text, write_report

    logs = {f"{row['trial']} ({row['status']})": out / "trials" / row["trial"] / "metrics.jsonl"
            for _, row in table.iterrows()}
    body = markdown_table(table, "").split("\n", 2)[2]  # without the title line
    sweep = STAGES[cfg.stage].sweep
    return write_report(out, [text("Trials", body), compare(f"{sweep.metric} per trial", logs, sweep.x, sweep.metric)],
                        title=f"Tune {cfg.stage}: {len(table)} trials")


def markdown_table(table: pd.DataFrame, title: str) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    columns = [c for c in table.columns if c not in ("model", "error") or table[c].astype(bool).any()]
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"
