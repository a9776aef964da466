"""The `genrec` command: one verb per stage, each `genrec <verb> --config FILE key=value ...`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
from typing import Callable

from genrec import config as C


@dataclasses.dataclass
class Verb:
    name: str
    config_cls: type
    run: Callable  # (config) -> dict
    summary: str


def _prepare(cfg):
    from genrec.data.prepare import prepare

    return prepare(cfg)


def _synth_interactions(cfg):
    from genrec.data.synth import synth_interactions

    return synth_interactions(cfg)


def _train_sft(cfg):
    from genrec.train.launch import train_sft

    return train_sft(cfg)


def _evaluate(cfg):
    from genrec.rec.evaluate import evaluate

    return evaluate(cfg)


def _synth_jobs(cfg):
    from genrec.data.jobs_synth import synth_jobs

    return synth_jobs(cfg.out_dir, cfg.num_cvs, cfg.num_jds, cfg.seed, per_cv=cfg.per_cv)


def _tune(cfg):
    from genrec.tune import tune

    return tune(cfg)


def _prepare_jobs(cfg):
    from genrec.jobs.prepare import prepare_jobs

    return prepare_jobs(cfg)


def _train_reward(cfg):
    from genrec.train.reward import train_reward

    return train_reward(cfg)


def _evaluate_jobs(cfg):
    from genrec.jobs.recommend import evaluate_jobs

    return evaluate_jobs(cfg)


def _serve(cfg):
    from genrec.serve.launch import serve_app

    return serve_app(cfg)


def _ppo(cfg):
    from genrec.rl.loop import run_ppo

    return run_ppo(cfg)


VERBS = {
    "prepare": Verb("prepare", C.PrepareConfig, _prepare,
                    "interaction log -> leave-one-out train/valid/test GenRec prompt parquet (Ray Data)"),
    "train-sft": Verb("train-sft", C.SFTConfig, _train_sft,
                      "fine-tune the generator on prepared prompts (Ray Train, DDP or FSDP, LoRA optional)"),
    "evaluate": Verb("evaluate", C.EvaluateConfig, _evaluate,
                     "HR@K / NDCG@K over the whole catalog: constrained beam search, or model=pop / sasrec"),
    "data synth interactions": Verb("data synth interactions", C.SynthInteractionsConfig, _synth_interactions,
                                    "write the synthetic catalog and user logs (the embedded default data)"),
    "data synth jobs": Verb("data synth jobs", C.SynthJobsConfig, _synth_jobs,
                            "write the synthetic job market (CVs, JDs, recruiter feedback) with its hidden true fit"),
    "ppo": Verb("ppo", C.PPOConfig, _ppo,
                "align the JD generator with the reward model: PPO on Ray actors (rollout x N, reference, reward, learner)"),
    "prepare-jobs": Verb("prepare-jobs", C.PrepareJobsConfig, _prepare_jobs,
                         "CVs, JDs, labels -> SFT rows (CV -> matched JD) and preference rows (CV, JD+, JD-) (Ray Data)"),
    "train-reward": Verb("train-reward", C.RewardConfig, _train_reward,
                         "reward model on preference rows: scalar head, pairwise loss (Ray Train); held-out accuracy, AUC"),
    "evaluate-jobs": Verb("evaluate-jobs", C.EvaluateJobsConfig, _evaluate_jobs,
                          "HR@K / NDCG@K of held-out matched jobs: generate -> retrieve -> rerank vs CV embedding vs reward only"),
    "tune": Verb("tune", C.TuneConfig, _tune,
                 "Ray Tune sweep (ASHA) over a stage's config keys; results table and best config written out"),
    "serve": Verb("serve", C.ServeConfig, _serve,
                  "Ray Serve: recommend, generate and match over HTTP (one FastAPI ingress, OpenAPI at /docs)"),
}


def fields_help(cls: type) -> str:
    lines = ["config keys (YAML or key=value; dotted keys for sections):"]
    for key, type_name, default, help_text in C.describe(cls):
        lines.append(f"  {key} ({type_name}, default {default})")
        lines.extend("      " + line for line in textwrap.wrap(help_text, 88))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec",
        description="LLM-based generative recommendation on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {v.name:26s} {v.summary}" for v in VERBS.values())
        + "\n  demo                       synth -> prepare -> ... on the embedded default"
        + "\n\nRun `genrec <verb> --help` for a verb's config keys.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", metavar="verb")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): verbs}
    for verb in VERBS.values():
        *path, last = verb.name.split()
        for depth in range(len(path)):  # `data synth interactions`: nested sub-commands
            key = tuple(path[: depth + 1])
            if key not in groups:
                group = groups[key[:-1]].add_parser(key[-1], help=f"{' '.join(key)} commands")
                groups[key] = group.add_subparsers(dest="_".join(key), metavar="command", required=True)
        p = groups[tuple(path)].add_parser(
            last, help=verb.summary, description=verb.summary, epilog=fields_help(verb.config_cls),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_config_args(p)
        p.set_defaults(verb_obj=verb)
    demo = verbs.add_parser("demo", help="run every stage on the embedded default (synthetic data, tiny model)")
    demo.add_argument("--out", default="runs/demo", help="run directory")
    return parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the stage's keys")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key")


def run_verb(verb: Verb, config_path: str | None, overrides: list[str]) -> dict:
    cfg = C.load_config(verb.config_cls, config_path, overrides)
    return verb.run(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if args.verb == "demo":
            from genrec.demo import run_demo

            result = run_demo(args.out)
        else:
            result = run_verb(args.verb_obj, args.config, args.overrides)
    except C.ConfigError as e:
        print(f"genrec: config error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
