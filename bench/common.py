"""Helpers shared by the bench scripts: paths, results files (JSON and the markdown rendered from it),
markdown tables, timing, version stamping and random-init models.

A script imports it as `from common import ...`: run as `python bench/<name>.py`, a script's own
folder is the first entry of sys.path. Importing this module also puts the repository root on
sys.path, so `genrec` imports from a bare checkout (the device machine runs the scripts without
genrec installed). Only the standard library is imported here; torch and transformers are imported
inside the functions that use them, so the module loads on a machine without Ray or genrec.

Every results file pair follows one rule: the script writes `bench/results/<name>.json` with what it
measured and renders `bench/results/<name>.md` from that JSON alone, so `--render` rewrites the
markdown from the committed JSON without measuring anything (`write_results`, `render_results`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
WORK = BENCH / "work"  # git-ignored: inputs, checkpoints, logs
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # after the bench folder itself

# Ranking metrics reported by the quality scripts, and the published Amazon Toys figures (S3-Rec /
# TIGER tables: leave-one-out, full ranking) they are compared against.
KS = (1, 5, 10, 20)
REPORT_KEYS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
PUBLISHED_TOYS = {"sasrec": {"hr@10": 0.0675, "ndcg@10": 0.0374}, "tiger": {"hr@10": 0.0712, "ndcg@10": 0.0432}}


# ------------------------------------------------------------------------------------ results files
def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: str | Path, data) -> Path:
    """Indented JSON with a final newline; parent folders are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_markdown(path: str | Path, text: str) -> Path:
    """The text with exactly one final newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
    return path


def write_results(json_path: str | Path, data: dict, render: Callable[[dict], str]) -> str:
    """Write the JSON, then the markdown beside it (same stem, .md) rendered from that JSON alone."""
    json_path = Path(json_path)
    write_json(json_path, data)
    text = render(read_json(json_path))  # from the file, so --render reproduces it exactly
    write_markdown(json_path.with_suffix(".md"), text)
    return text


def render_results(json_path: str | Path, render: Callable[[dict], str]) -> str:
    """`--render`: rewrite <stem>.md from <stem>.json, measuring nothing."""
    json_path = Path(json_path)
    text = render(read_json(json_path))
    write_markdown(json_path.with_suffix(".md"), text)
    print(f"wrote {json_path.with_suffix('.md')} from {json_path.name}")
    return text


def add_render_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--render", action="store_true",
                        help=f"only rewrite {what} from the committed JSON (measures nothing)")


def generated_by(command: str) -> str:
    """The line every rendered file carries under its title."""
    return f"Generated from the JSON beside this file by `{command}`; do not edit by hand."


# ----------------------------------------------------------------------------------------- markdown
def table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> list[str]:
    """A markdown table as lines. `align` has one letter a column, l (left) or r (right); by
    default the first column is left-aligned and the others right. None cells print empty."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for row in rows:
        cells = ["" if c is None else str(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def f4(x) -> str:
    """A metric to 4 decimals; empty when missing."""
    return "" if x is None else f"{x:.4f}"


def metric_cells(m: dict | None, keys: Sequence[str] = REPORT_KEYS) -> list[str]:
    m = m or {}
    return [f4(m.get(k)) for k in keys]


def thousands(x, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def relative(path: str | Path) -> str:
    """A path inside the repository as relative to its root (results name no machine's folders)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------ timing
class Stopwatch:
    """Wall and process CPU seconds of a `with` block: `with Stopwatch() as t: ...; t.wall_s, t.cpu_s`."""

    def __enter__(self) -> "Stopwatch":
        self.wall_s = self.cpu_s = 0.0
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def sync(device) -> None:
    """Wait for the GPU (a no-op on a CPU), so that a timer around GPU work measures the work."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn, each between two device syncs."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def utc_now(fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return time.strftime(fmt, time.gmtime())


# --------------------------------------------------------------------------------------- versions
def versions(*names: str) -> dict:
    """{name: module.__version__} of importable modules (None when one is missing or fails to import);
    `python` is the interpreter's. Imports them: the version is that of the module this process runs."""
    import importlib

    out = {}
    for name in names:
        if name == "python":
            out[name] = platform.python_version()
            continue
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", None)
        except ImportError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return ""


def device_name(device) -> str:
    """The GPU's name for a CUDA device, else 'cpu'."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return "cpu"


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ------------------------------------------------------------------------------------------ models
def random_causal_lm(arch: str, config: dict, device="cpu", dtype=None, seed: int = 0):
    """A random-init `llama` or `qwen2` causal LM (transformers), SDPA attention, built directly on
    `device` in `dtype` (None: torch's default) after torch.manual_seed(seed). The throughput and
    decoding benches time models of a given shape; their weights do not matter, only that they are
    the same for every contender."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(seed)
    with torch.device(device):
        return model_cls._from_config(config_cls(**config), attn_implementation="sdpa", dtype=dtype)
