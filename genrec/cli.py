"""The `genrec` command: one verb per stage, each `genrec <verb> --config FILE key=value ...`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from genrec.config_loader import ConfigError, describe, load_config
from genrec.stages import STAGES, Stage


def fields_help(cls: type) -> str:
    lines = ["config keys (YAML or key=value; dotted keys for sections):"]
    for key, type_name, default, help_text in describe(cls):
        lines.append(f"  {key} ({type_name}, default {default})")
        lines.extend("      " + line for line in textwrap.wrap(help_text, 88))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec",
        description="LLM-based generative recommendation on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {st.name:26s} {st.summary}" for st in STAGES.values())
        + "\n  demo                       synth -> prepare -> ... on the embedded default"
        + "\n\nRun `genrec <verb> --help` for a verb's config keys.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", metavar="verb")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): verbs}
    for stage in STAGES.values():
        *path, last = stage.name.split()
        for depth in range(len(path)):  # `data synth interactions`: nested sub-commands
            key = tuple(path[: depth + 1])
            if key not in groups:
                group = groups[key[:-1]].add_parser(key[-1], help=f"{' '.join(key)} commands")
                groups[key] = group.add_subparsers(dest="_".join(key), metavar="command", required=True)
        p = groups[tuple(path)].add_parser(
            last, help=stage.summary, description=stage.summary, epilog=fields_help(stage.config_cls),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_config_args(p)
        p.set_defaults(stage=stage)
    demo = verbs.add_parser("demo", help="run every stage on the embedded default (synthetic data, tiny model)")
    demo.add_argument("--out", default="runs/demo", help="run directory")
    demo.add_argument("--no-wait", action="store_true",
                      help="shut Serve down after the sample requests (default: in a terminal, wait for Enter)")
    return parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the stage's keys")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key")


def run_stage(stage: Stage, config_path: str | None, overrides: list[str]) -> dict:
    cfg = load_config(stage.config_cls, config_path, overrides)
    return stage.run(cfg)


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

            # The demo ends on its own summary table (and writes everything to summary.json); a page
            # of JSON after it would push the table off the screen.
            run_demo(args.out, wait=not args.no_wait)
            return 0
        result = run_stage(args.stage, args.config, args.overrides)
    except ConfigError as e:
        print(f"genrec: config error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
