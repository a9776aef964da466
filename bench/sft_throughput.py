"""SFT throughput: genrec's per-worker loop against TRL's SFTTrainer, same model, data and batch.

    python bench/sft_throughput.py                                        # CPU, tiny Llama, < 1 min
    python bench/sft_throughput.py --device cuda --shape qwen2-0.5b [--compile] [--out entry.json]
    python bench/sft_throughput.py --merge entry.json [more.json ...]   # into bench/results

Contenders, each in its own process so that its peak memory is its own:
  genrec        the per-worker loop: packed rows, logits at response tokens only
  genrec_compile  the same with each decoder layer torch.compiled (with --compile)
  trl_default   SFTTrainer with its defaults (padding to the longest sequence, gradient
                checkpointing on), labels -100 over the prompt so the loss is completion-only
  trl_no_gc     SFTTrainer with gradient checkpointing off

Sequences are random tokens with lengths spread over [seq_len / 4, seq_len] and a short response,
as GenRec's prompts are long and its answers are titles. One micro-batch is `batch` sequences for
TRL and `batch x seq_len` tokens for genrec (which packs more, shorter sequences into it); real
tokens/s is therefore the number to compare. Weights are fp32; on CUDA both sides autocast to
bf16. Results go to bench/results/sft_throughput.json under the device key (`cpu` or `gpu`) and to
sft_throughput.md. Runs where Ray is not installed: nothing here or in what it imports needs it.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the GPU machine runs this from a bare checkout, genrec not installed

from genrec.config import SFTConfig  # noqa: E402
from genrec.train.batching import IGNORE_INDEX, TokenRows  # noqa: E402
from genrec.train.sft import train_loop  # noqa: E402

assert "ray" not in sys.modules, "the SFT loop must not import Ray"

SHAPES = {
    "tiny": {
        "arch": "llama", "seq_len": 128, "batch": 8,
        "config": dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    },
    "qwen2-0.5b": {
        "arch": "qwen2", "seq_len": 512, "batch": 16,
        "config": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    },
}
RESULTS = ROOT / "bench" / "results"
# What the issue measured on one H200 for this shape (seq 512, batch 16, bf16), and its goal.
GPU_REFERENCE = ("Reference from the issue, one H200, Qwen2-0.5B, seq 512, batch 16, bf16: TRL SFTTrainer defaults "
                 "48.1k tokens/s; a plain bf16-autocast loop with fused AdamW 73.8k; the same under torch.compile 119k. "
                 "Goal: genrec >= 120k tokens/s and >= 2.5x TRL defaults.")


# ------------------------------------------------------------------------------------------ inputs
def build_model(shape: dict, device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[shape["arch"]]
    config = config_cls(**shape["config"])
    config._attn_implementation = "sdpa"  # both contenders; flash-attention is not assumed installed
    torch.manual_seed(0)
    return model_cls(config).to(device)


def make_rows(n: int, seq_len: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Random prompts of varied length, each followed by a short response (the only loss target)."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for length in rng.integers(seq_len // 4, seq_len + 1, n):
        response = int(min(rng.integers(4, 25), length - 1))
        x = rng.integers(3, vocab, length).tolist()
        ids.append(x)
        labels.append([IGNORE_INDEX] * (length - response) + x[length - response:])
    return ids, labels


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak RSS


# -------------------------------------------------------------------------------------- contenders
def run_genrec(args, shape: dict, ids, labels, compile: bool) -> dict:
    """The loop as the launcher calls it; the second log window (steps M+1..2M) is the measurement."""
    model = build_model(shape, args.device)
    cfg = SFTConfig(
        max_len=shape["seq_len"], micro_batch_tokens=shape["batch"] * shape["seq_len"], grad_accum=1,
        max_steps=2 * args.steps, log_every=args.steps, eval_every=0, save_every=0, warmup_steps=0,
        batching="packed", compile=compile,
    )
    result = train_loop(cfg, model, TokenRows.from_lists(ids, labels))
    last = result["history"][-1]
    return {k: last[k] for k in ("tokens_per_s", "real_tokens_per_s", "real_fraction")}


def run_trl(args, shape: dict, ids, labels, gradient_checkpointing: bool) -> dict:
    """SFTTrainer on a pre-tokenized dataset; TRL takes its `labels` column as is (completion-only)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    model = build_model(shape, args.device)
    counts = {"computed": 0, "real": 0}

    def count_tokens(module, _args, kwargs):
        # The real count stays a device tensor (a new one each time, so snapshots keep theirs):
        # reading it here would wait for the GPU at every step, which genrec's loop does not do.
        mask = kwargs.get("attention_mask")
        counts["computed"] += kwargs["input_ids"].numel()
        counts["real"] = counts["real"] + (mask.sum() if mask is not None else kwargs["input_ids"].numel())

    model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    window: dict = {}

    class Timer(TrainerCallback):
        """Times steps M+1..2M, like genrec's second log window."""

        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step in (args.steps, 2 * args.steps):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                window[state.global_step] = (time.perf_counter(), dict(counts))

    with tempfile.TemporaryDirectory() as out:
        config = TRLConfig(
            output_dir=out, max_steps=2 * args.steps, per_device_train_batch_size=shape["batch"],
            max_length=shape["seq_len"], gradient_checkpointing=gradient_checkpointing,
            bf16=args.device == "cuda", use_cpu=args.device == "cpu", report_to="none", save_strategy="no",
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model, args=config, processing_class=_pad_tokenizer(),
            train_dataset=Dataset.from_dict({"input_ids": ids, "labels": labels}), callbacks=[Timer()],
        )
        trainer.train()
    (t0, c0), (t1, c1) = window[args.steps], window[2 * args.steps]
    computed, real = c1["computed"] - c0["computed"], int(c1["real"] - c0["real"])
    return {"tokens_per_s": computed / (t1 - t0), "real_tokens_per_s": real / (t1 - t0), "real_fraction": real / computed}


def _pad_tokenizer():
    """SFTTrainer wants a tokenizer for its pad id; the data is already ids, so a 3-word one does."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def run_contender(args) -> dict:
    shape = SHAPES[args.shape]
    steps = 2 * args.steps
    # Enough sequences that neither side runs out within its steps (genrec packs ~2x TRL's count).
    ids, labels = make_rows(4 * shape["batch"] * steps, shape["seq_len"], shape["config"]["vocab_size"])
    runners = {
        "genrec": lambda: run_genrec(args, shape, ids, labels, compile=False),
        "genrec_compile": lambda: run_genrec(args, shape, ids, labels, compile=True),
        "trl_default": lambda: run_trl(args, shape, ids, labels, gradient_checkpointing=True),
        "trl_no_gc": lambda: run_trl(args, shape, ids, labels, gradient_checkpointing=False),
    }
    start = time.perf_counter()
    metrics = runners[args.contender]()
    return {**metrics, "peak_mem_gib": peak_memory_gib(args.device), "wall_s": time.perf_counter() - start}


# -------------------------------------------------------------------------------------------- main
def contenders(args) -> list[str]:
    names = ["genrec"] + (["genrec_compile"] if args.compile else [])
    if args.contenders:
        names = args.contenders.split(",")
        if not any(n.startswith("trl") for n in names):
            return names
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        print(f"TRL contenders skipped: {e}", file=sys.stderr)
        return names
    return names if args.contenders else names + ["trl_default", "trl_no_gc"]


def environment(args) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    try:
        import trl

        env["trl"] = trl.__version__
    except ImportError:
        env["trl"] = None
    env["device_name"] = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    if args.device == "cpu":
        env["threads"] = 1
    return env


def run_all(args) -> dict:
    """Each contender in its own process; one that fails or outlasts --timeout is recorded and skipped.

    With --out the entry is rewritten after every contender, so a run cut short keeps what it measured.
    """
    shape = SHAPES[args.shape]
    entry = {"shape": args.shape, "seq_len": shape["seq_len"], "batch": shape["batch"], "measured_steps": args.steps,
             "precision": "bf16 autocast" if args.device == "cuda" else "fp32", **environment(args),
             "command": " ".join(["python", "bench/sft_throughput.py", *sys.argv[1:]]), "contenders": {}}
    results, failed = entry["contenders"], {}
    for name in contenders(args):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--device", args.device, "--shape", args.shape, "--steps", str(args.steps),
                   "--contender", name, "--result", out.name]
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                subprocess.run(cmd, check=True, timeout=args.timeout)
                results[name] = json.loads(Path(out.name).read_text())
            except (subprocess.SubprocessError, OSError, ValueError) as e:  # its traceback went to stderr
                print(f"== {name} FAILED: {e}", file=sys.stderr, flush=True)
                failed[name] = (f"timed out after {e.timeout:.0f} s" if isinstance(e, subprocess.TimeoutExpired) else
                                f"exit status {e.returncode}" if isinstance(e, subprocess.CalledProcessError) else str(e))
        if failed:
            entry["failed"] = failed
        add_ratios(entry)
        if args.out:
            Path(args.out).write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def add_ratios(entry: dict) -> None:
    base = entry["contenders"].get("trl_default", {}).get("real_tokens_per_s")
    for r in entry["contenders"].values():
        r["ratio_vs_trl_default"] = r["real_tokens_per_s"] / base if base else None


def merge(paths: list[str]) -> None:
    """Entries written with --out into bench/results, each under its device key. An entry for a key
    already merged in this call with another transformers version adds its contenders to it, named
    `name@transformers-X.Y`; keys not in this call are left as they are."""
    data = json.loads((RESULTS / "sft_throughput.json").read_text()) if (RESULTS / "sft_throughput.json").exists() else {}
    merged: dict = {}
    for path in paths:
        entry = json.loads(Path(path).read_text())
        key = "gpu" if entry["precision"].startswith("bf16") else "cpu"
        if key not in merged:
            merged[key] = data[key] = entry
            continue
        base = merged[key]
        for name, r in entry["contenders"].items():
            r["transformers"] = entry["transformers"]
            base["contenders"][f"{name}@transformers-{entry['transformers']}"] = r
        base.setdefault("extra_commands", []).append(entry["command"])
        for name, error in entry.get("failed", {}).items():
            base.setdefault("failed", {})[f"{name}@transformers-{entry['transformers']}"] = error
        add_ratios(base)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sft_throughput.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "sft_throughput.md").write_text(markdown(data))


def write_results(key: str, entry: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "sft_throughput.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = entry
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "sft_throughput.md").write_text(markdown(data))


def markdown(data: dict) -> str:
    lines = ["# SFT throughput: genrec loop vs TRL SFTTrainer", "",
             "Same model, data and batch; response-only loss. Real tokens/s counts tokens of real sequences, "
             "not padding; the ratio is real tokens/s over TRL's default. Peak memory: CUDA allocator peak on GPU, "
             "process peak RSS on CPU. Written by `bench/sft_throughput.py`.", ""]
    for key, e in data.items():
        command = e.get("command") or ("python bench/sft_throughput.py" if key == "cpu" else "")
        lines += [f"## {key}: {e['shape']} (seq {e['seq_len']}, batch {e['batch']}, {e['precision']}) on {e['device_name']}",
                  f"torch {e['torch']}, transformers {e['transformers']}, trl {e['trl']}, python {e['python']}; "
                  f"{e['measured_steps']} steps timed after as many warm-up steps", "",
                  *[f"    {c}" for c in [command, *e.get("extra_commands", [])] if c], "",
                  "| contender | tokens/s | real tokens/s | real share | peak mem GiB | vs TRL default |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in e["contenders"].items():
            ratio = f"{r['ratio_vs_trl_default']:.2f}x" if r["ratio_vs_trl_default"] else "n/a"
            mem = r.get("peak_mem_gib", r.get("peak_mem_gb"))
            lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | "
                         f"{r['real_fraction']:.1%} | {mem:.2f} | {ratio} |")
        lines += [f"| {name} | failed: {error} | | | | |" for name, error in e.get("failed", {}).items()]
        lines.append("")
        if key == "gpu":
            lines += [GPU_REFERENCE, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after as many warm-up steps")
    parser.add_argument("--compile", action="store_true", help="add genrec with torch.compile'd layers")
    parser.add_argument("--contenders", help="comma-separated subset to run (default: all that can run)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds one contender may take")
    parser.add_argument("--out", help="write the entry here (after every contender), not into bench/results")
    parser.add_argument("--merge", nargs="+", metavar="ENTRY", help="merge --out entries into bench/results")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # set when the script runs one contender
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        merge(args.merge)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    if args.contender:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        if args.device == "cpu":
            # One thread: on a shared CPU a thread that waits for a busy core stalls every op and the
            # numbers swing tenfold; one thread per contender keeps them comparable.
            torch.set_num_threads(1)
        Path(args.result).write_text(json.dumps(run_contender(args)))
        return
    entry = run_all(args)
    if not args.out:
        write_results("gpu" if args.device == "cuda" else "cpu", entry)
    print(markdown({"gpu" if args.device == "cuda" else "cpu": entry}))


if __name__ == "__main__":
    main()
