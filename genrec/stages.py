"""Every stage of genrec, one record each. The CLI's verbs (`genrec <name>`), the pipeline's stages
(`verb:` in configs/pipeline_demo.yaml) and Tune's sweepable stages (`genrec tune stage=<name>`) are
all read from STAGES, so a stage has one name everywhere.

A stage's code is named as "module:function" and imported only when the stage runs: the registry
itself imports no stage code (which would pull torch, transformers and Ray into `genrec --help`, and
would tie every stage module to the CLI in a circle of imports).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Literal

from genrec import config as C


def resolve(ref: str) -> Callable:
    """"package.module:function" -> the function."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """How `genrec tune` sweeps a stage; each callable a "module:function" name (genrec/tune.py)."""

    metric: str  # in every report: ASHA prunes on it, and metric=valid picks the best trial by it
    mode: Literal["min", "max"]
    fit: str  # (stage config, Ray Train callbacks) -> final metrics
    adapt: str = ""  # stage config -> what a trial runs (e.g. checkpoints at validation steps); "" = as given
    x: str = "step"  # the metrics.jsonl key of a report's position (plots; finished or stopped early)
    best_dir: str = "best"  # the trial's model that the best-config row points at
    resources: str = "genrec.tune:train_workers"  # stage config -> what one trial holds besides its driver
    # Bundles of the trial's own placement group for actors it starts itself (a TorchTrainer's
    # workers get a placement group of their own, so sft and reward trials need none); "" = none.
    bundles: str = ""
    final_x: str = "genrec.tune:sft_final_step"  # where a trial that ran to its end stopped (None: it did not)
    pick_last: bool = False  # pick by the metric's last report (the model a trial keeps is its last)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # the verb: `genrec <name>`; "data synth jobs" is a nested sub-command
    config_cls: type
    entry: str  # "module:function" taking the stage config, returning a JSON-able result
    summary: str
    sweep: Sweep | None = None  # None: `genrec tune` does not sweep it

    def run(self, cfg: Any) -> Any:
        return resolve(self.entry)(cfg)


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("data synth interactions", C.SynthInteractionsConfig, "genrec.data.synth:synth_interactions",
          "write the synthetic catalog and user logs (the embedded default data)"),
    Stage("data synth jobs", C.SynthJobsConfig, "genrec.girl.market:synth_jobs_stage",
          "write the synthetic job market (CVs, JDs, recruiter feedback) with its hidden true fit"),
    Stage("prepare", C.PrepareConfig, "genrec.data.prepare:prepare",
          "interaction log -> leave-one-out train/valid/test GenRec prompt parquet (Ray Data)"),
    Stage("train-sft", C.SFTConfig, "genrec.train.launch:train_sft",
          "fine-tune the generator on prepared prompts (Ray Train, DDP or FSDP, LoRA optional)",
          Sweep("valid_loss", "min", fit="genrec.tune:fit_sft", adapt="genrec.tune:sft_for_tune")),
    Stage("evaluate", C.EvaluateConfig, "genrec.rec.evaluate:evaluate",
          "HR@K / NDCG@K over the whole catalog: constrained beam search, or model=pop / sasrec"),
    Stage("prepare-jobs", C.PrepareJobsConfig, "genrec.girl.prepare:prepare_jobs",
          "CVs, JDs, labels -> SFT rows (CV -> matched JD) and preference rows (CV, JD+, JD-) (Ray Data)"),
    Stage("train-reward", C.RewardConfig, "genrec.train.reward:train_reward",
          "reward model on preference rows: scalar head, pairwise loss (Ray Train); held-out accuracy, AUC",
          Sweep("valid_pairwise_acc", "max", fit="genrec.tune:fit_reward", adapt="genrec.tune:reward_for_tune",
                best_dir="final", final_x="genrec.tune:reward_final_step", pick_last=True)),
    # PPO maximises the learned reward; on the synthetic market `true_fit` is also in every report and
    # results row, to catch a trial that games the reward model.
    Stage("ppo", C.PPOConfig, "genrec.rl.loop:run_ppo",
          "align the JD generator with the reward model: PPO on Ray actors (rollout x N, reference, reward, learner)",
          Sweep("reward_mean", "max", fit="genrec.tune:fit_ppo", x="iteration", best_dir="final",
                resources="genrec.tune:ppo_resources", bundles="genrec.tune:ppo_bundles",
                final_x="genrec.tune:ppo_final_iteration", pick_last=True)),
    Stage("evaluate-jobs", C.EvaluateJobsConfig, "genrec.girl.recommend:evaluate_jobs",
          "HR@K / NDCG@K of held-out matched jobs: generate -> retrieve -> rerank vs CV embedding vs reward only"),
    Stage("tune", C.TuneConfig, "genrec.tune:tune",
          "Ray Tune sweep (ASHA) over a stage's config keys; results table and best config written out"),
    Stage("serve", C.ServeConfig, "genrec.serve.launch:serve_app",
          "Ray Serve: recommend, generate and match over HTTP (one FastAPI ingress, OpenAPI at /docs)"),
)}

SWEPT = tuple(name for name, stage in STAGES.items() if stage.sweep)  # what TuneConfig.stage may name
