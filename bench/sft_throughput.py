"""SFT throughput: genrec's per-worker loop against TRL's SFTTrainer, same model, data and batch.

    python bench/sft_throughput.py                                        # CPU, tiny Llama, synthetic rows, < 1 min
    python bench/sft_throughput.py --device cuda --shape qwen2-0.5b [--compile] [--out entry.json]
    python bench/sft_throughput.py --merge entry.json [more.json ...]   # into bench/results
    python bench/sft_throughput.py --render                             # sft_throughput.md from its JSON

On real prompts (the `cpu` entry in bench/results: Amazon Toys), in two steps:

    genrec prepare --config configs/prepare_toys.yaml out_dir=bench/work/toys_prepared
    python bench/sft_throughput.py --prepare-tokens bench/work/toys_prepared --tokens bench/work/toys_sft
    python bench/sft_throughput.py --tokens bench/work/toys_sft --rows 3000 --steps 15

--prepare-tokens builds the tiny tokenizer and the train split's token shards as `genrec train-sft`
does (genrec.train.launch.build_tokenizer, genrec.data.tokenize.tokenize_split; both use Ray, so
this step runs apart); the timed run reads the parquet shards and nothing in it imports Ray. With
--tokens the model is the one `genrec train-sft` builds by default (genrec.models.tiny: vocabulary
from the tokenizer, hidden 128, 4 layers, 4 heads), sequences are at most the shards' max_len, and
a micro-batch is SFTConfig's default 8192 tokens (16 rows of 512) unless --batch says otherwise.

Contenders, each in its own process so that its peak memory is its own:
  genrec        the per-worker loop: packed rows, logits at response tokens only
  genrec_compile  the same with each decoder layer torch.compiled (with --compile)
  trl_default   SFTTrainer with its defaults (padding to the longest sequence, gradient
                checkpointing on), labels -100 over the prompt so the loss is completion-only
  trl_no_gc     SFTTrainer with gradient checkpointing off

Without --tokens, sequences are random tokens with lengths spread over [seq_len / 4, seq_len] and a
short response, as GenRec's prompts are long and its answers are titles; with --tokens they are a
fixed random subsample (--rows, --seed) of the shards' usable rows, the same for every contender.
One micro-batch is `batch` sequences for TRL and `batch x seq_len` tokens for genrec (which packs
more, shorter sequences into it); real tokens/s is therefore the number to compare. Weights are fp32; on CUDA both sides autocast to
bf16. Results go to bench/results/sft_throughput.json under the device key (`cpu` or `gpu`) and to
sft_throughput.md. Runs where Ray is not installed: nothing here or in what it imports needs it.
"""
from __future__ import annotations

import argparse
import importlib
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

# common puts the repository root on sys.path: the GPU machine runs this from a bare checkout, genrec not installed
from common import RESULTS, add_render_flag, generated_by, random_causal_lm, render_results, table, versions, \
    write_json, write_results
from genrec.config import SFTConfig  # noqa: E402
from genrec.train.batching import IGNORE_INDEX, TokenRows, load_token_rows, usable_rows  # noqa: E402
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
PREPARE_STATS = "_bench_prepare.json"  # written by --prepare-tokens beside tokenizer/ and tokens/
# What the issue measured on one H200 for this shape (seq 512, batch 16, bf16), and its goal.
GPU_REFERENCE = ("Reference from the issue, one H200, Qwen2-0.5B, seq 512, batch 16, bf16: TRL SFTTrainer defaults "
                 "48.1k tokens/s; a plain bf16-autocast loop with fused AdamW 73.8k; the same under torch.compile 119k. "
                 "Goal: genrec >= 120k tokens/s and >= 2.5x TRL defaults.")


# ------------------------------------------------------------------------------------------ inputs
def build_model(shape: dict, device: str) -> torch.nn.Module:
    if shape["arch"] == "genrec-tiny":  # what genrec.train.launch.build_model makes for model=tiny
        from genrec.models.tiny import tiny_config, tiny_model

        return tiny_model(tiny_config(**shape["config"]), seed=0).to(device)
    # SDPA for both contenders: flash-attention is not assumed installed. fp32 weights (autocast on CUDA).
    return random_causal_lm(shape["arch"], shape["config"], device=device, seed=0)


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


def tokens_shape(args) -> dict:
    """The shape for --tokens: genrec train-sft's default tiny model over the shards' tokenizer."""
    from genrec.models.tokenizer import load_tokenizer  # transformers only, no Ray

    tokens = Path(args.tokens)
    record = json.loads((tokens / "tokens" / "train" / "_tokenize.json").read_text())
    tokenizer = load_tokenizer(str(tokens / "tokenizer"))
    defaults, max_len = SFTConfig(), record["max_len"]
    return {
        "arch": "genrec-tiny", "seq_len": max_len, "batch": args.batch or defaults.micro_batch_tokens // max_len,
        "config": dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id, hidden_size=defaults.tiny_hidden,
                       num_hidden_layers=defaults.tiny_layers, num_attention_heads=defaults.tiny_heads,
                       max_position_embeddings=max(1024, max_len)),
    }


def resolve_shape(args) -> dict:
    if args.tokens:
        return tokens_shape(args)
    shape = dict(SHAPES[args.shape])
    if args.batch:
        shape["batch"] = args.batch
    return shape


def token_sample(args, max_len: int) -> tuple[list[list[int]], list[list[int]], dict]:
    """A fixed random subsample of the shards' usable rows (those train_loop would keep), in shard
    order, and what was kept and skipped."""
    rows = load_token_rows(Path(args.tokens) / "tokens" / "train")
    keep, skipped = usable_rows(rows, max_len)
    n = min(args.rows, len(keep))
    pick = np.sort(np.random.default_rng(args.seed).choice(keep, size=n, replace=False))
    ids = [rows.ids[rows.offsets[i]:rows.offsets[i + 1]].tolist() for i in pick]
    labels = [rows.labels[rows.offsets[i]:rows.offsets[i + 1]].tolist() for i in pick]
    lengths = rows.lengths[pick]
    info = {"shard_rows": len(rows), "usable_rows": int(len(keep)), "skipped": skipped, "subsample_rows": n,
            "subsample_seed": args.seed, "subsample_tokens": int(lengths.sum()),
            "subsample_response_tokens": int(sum(sum(1 for t in x if t != IGNORE_INDEX) for x in labels)),
            "subsample_length": {"mean": float(lengths.mean()), "min": int(lengths.min()),
                                 **{f"p{q}": int(np.percentile(lengths, q)) for q in (10, 50, 90)},
                                 "max": int(lengths.max())}}
    return ids, labels, info


def prepare_tokens(prepared: Path, out: Path, max_len: int) -> dict:
    """Tokenizer and train token shards as `genrec train-sft` makes them, into out/tokenizer and
    out/tokens/train (the layout of a train-sft out_dir); imports Ray. Returns and records the counts."""
    from genrec.train.launch import TEMPLATE, build_tokenizer
    from genrec.data.tokenize import tokenize_split

    cfg = SFTConfig(data_dir=str(prepared), out_dir=str(out), max_len=max_len)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tokenizer_dir = build_tokenizer(cfg, out)
    tokenize_split(prepared / "train", out / "tokens" / "train", str(tokenizer_dir), max_len, TEMPLATE,
                   prepared / "catalog.parquet")
    record = json.loads((out / "tokens" / "train" / "_tokenize.json").read_text())
    rows = load_token_rows(out / "tokens" / "train")
    _, skipped = usable_rows(rows, max_len)
    lengths = rows.lengths
    stats = {"prepared": str(prepared), "max_len": max_len, "vocab_size": len(_load_tokenizer(tokenizer_dir)),
             **{k: record[k] for k in ("rows", "tokens", "response_tokens", "rows_truncated", "history_titles_dropped")},
             "skipped": skipped,
             "length": {"mean": float(lengths.mean()), "min": int(lengths.min()),
                        **{f"p{q}": int(np.percentile(lengths, q)) for q in (10, 50, 90)}, "max": int(lengths.max())},
             "wall_s": time.perf_counter() - start}
    (out / PREPARE_STATS).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _load_tokenizer(path):
    from genrec.models.tokenizer import load_tokenizer

    return load_tokenizer(str(path))


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
            model=model, args=config,
            processing_class=_load_tokenizer(Path(args.tokens) / "tokenizer") if args.tokens else _pad_tokenizer(),
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
    shape = resolve_shape(args)
    steps = 2 * args.steps
    if args.tokens:
        ids, labels, _ = token_sample(args, shape["seq_len"])
    else:
        # Enough sequences that neither side runs out within its steps (genrec packs ~2x TRL's count).
        ids, labels = make_rows(4 * shape["batch"] * steps, shape["seq_len"], shape["config"]["vocab_size"])
    runners = {
        "genrec": lambda: run_genrec(args, shape, ids, labels, compile=False),
        "genrec_compile": lambda: run_genrec(args, shape, ids, labels, compile=True),
        "trl_default": lambda: run_trl(args, shape, ids, labels, gradient_checkpointing=True),
        "trl_no_gc": lambda: run_trl(args, shape, ids, labels, gradient_checkpointing=False),
    }
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    metrics = runners[args.contender]()
    assert "ray" not in sys.modules, "the timed run must not import Ray (the GPU machine has none)"
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds over wall seconds for the whole contender: near 1 with one thread on a free core,
    # lower when other work on a shared machine took the core away (the numbers are then low too).
    return {**metrics, "peak_mem_gib": peak_memory_gib(args.device), "wall_s": wall,
            **({"cpu_per_wall": (usage.ru_utime + usage.ru_stime - cpu0) / wall} if args.device == "cpu" else {})}


# -------------------------------------------------------------------------------------------- main
def contenders(args) -> list[str]:
    names = ["genrec"] + (["genrec_compile"] if args.compile else [])
    if args.contenders:
        names = args.contenders.split(",")
        if not any(n.startswith("trl") for n in names):
            return names
    try:
        importlib.import_module("datasets")
        importlib.import_module("trl")
    except ImportError as e:
        print(f"TRL contenders skipped: {e}", file=sys.stderr)
        return names
    return names if args.contenders else names + ["trl_default", "trl_no_gc"]


def environment(args) -> dict:
    env = versions("torch", "transformers", "python", "trl")  # trl None where it is not installed
    env["device_name"] = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    if args.device == "cpu":
        env["threads"] = 1
    return env


def run_all(args) -> dict:
    """Each contender in its own process; one that fails or outlasts --timeout is recorded and skipped.

    With --out the entry is rewritten after every contender, so a run cut short keeps what it measured.
    """
    shape = resolve_shape(args)
    entry = {"shape": args.shape, "seq_len": shape["seq_len"], "batch": shape["batch"], "measured_steps": args.steps,
             "precision": "bf16 autocast" if args.device == "cuda" else "fp32", **environment(args),
             "command": " ".join(["python", "bench/sft_throughput.py", *sys.argv[1:]]), "contenders": {}}
    forwarded = ["--device", args.device, "--shape", args.shape, "--steps", str(args.steps)]
    if args.batch:
        forwarded += ["--batch", str(args.batch)]
    if args.tokens:
        entry.update(token_entry(args, shape))
        forwarded += ["--tokens", args.tokens, "--rows", str(args.rows), "--seed", str(args.seed)]
    results, failed = entry["contenders"], {}
    for name in contenders(args):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, *forwarded, "--contender", name, "--result", out.name]
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
            write_json(args.out, entry)
    return entry


def token_entry(args, shape: dict) -> dict:
    """What a --tokens entry records about its model and data: the shards' preparation counts and
    the subsample every contender trains on."""
    tokens = Path(args.tokens)
    prepare = json.loads((tokens / PREPARE_STATS).read_text()) if (tokens / PREPARE_STATS).exists() else {}
    _, _, sample = token_sample(args, shape["seq_len"])
    c = shape["config"]
    model = (f"genrec tiny (genrec.models.tiny, as `genrec train-sft` builds it by default): Llama, vocab {c['vocab_size']}, "
             f"hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads, tied embeddings")
    notes = [
        f"One micro-batch (= one optimizer step, grad_accum 1) is {shape['batch']} rows of {shape['seq_len']} token slots for "
        f"genrec (SFTConfig's default micro_batch_tokens {shape['batch'] * shape['seq_len']}), filled by packing as many "
        f"sequences as fit, and {shape['batch']} sequences for TRL, padded to the longest of them: both are capped at "
        f"{shape['batch']} x {shape['seq_len']} tokens a step, but TRL's steps hold fewer tokens, so its per-step costs "
        "(optimizer, Trainer bookkeeping) weigh more per token.",
        "tokens/s counts every token computed, padding included; real tokens/s only the tokens of sequences. "
        "ratio_vs_trl_default (and real_tokens_ratio_vs_trl_default) is on real tokens/s, tokens_ratio_vs_trl_default "
        "on tokens/s.",
        "Loss on response tokens only on both sides (TRL gets the shards' labels, -100 over the prompt). genrec computes "
        "logits at response tokens only (transformers' 2D logits_to_keep); TRL computes the LM head at every position.",
        "CPU: fp32, one thread per contender (torch.set_num_threads(1)), each contender in its own process, one after "
        "another; the first half of the steps warms up, the second half is timed. CPU s / wall s is the contender "
        "process's CPU time over its wall time (start-up included): near 1 when its core was its own, lower when other "
        "work on this shared 2-core machine took it.",
    ]
    return {"shape": "genrec-tiny", "model": model, "notes": notes,
            "data": {"tokens": str(tokens), "prepare": prepare, **sample,
                     "prepare_commands": [
                         f"genrec prepare --config configs/prepare_toys.yaml out_dir={prepare.get('prepared', 'PREPARED')}",
                         f"python bench/sft_throughput.py --prepare-tokens {prepare.get('prepared', 'PREPARED')} "
                         f"--tokens {tokens} --max-len {prepare.get('max_len', shape['seq_len'])}"]}}


def add_ratios(entry: dict) -> None:
    """ratio_vs_trl_default is on real tokens/s (as it has always been); both ratios are also explicit."""
    base = entry["contenders"].get("trl_default", {})
    for r in entry["contenders"].values():
        real = r["real_tokens_per_s"] / base["real_tokens_per_s"] if base else None
        r["ratio_vs_trl_default"] = r["real_tokens_ratio_vs_trl_default"] = real
        r["tokens_ratio_vs_trl_default"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None


def merge(paths: list[str]) -> None:
    """Entries written with --out into bench/results, each under its device key. An entry for a key
    already merged in this call with another transformers version adds its contenders to it, named
    `name@transformers-X.Y`; keys not in this call are left as they are."""
    path = RESULTS / "sft_throughput.json"
    data = json.loads(path.read_text()) if path.exists() else {}
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
    write_results(path, data, render_markdown)


def store_entry(key: str, entry: dict) -> None:
    """The entry into bench/results/sft_throughput.json under its device key; the others are kept."""
    path = RESULTS / "sft_throughput.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = entry
    write_results(path, data, render_markdown)


def render_markdown(data: dict) -> str:
    lines = ["# SFT throughput: genrec loop vs TRL SFTTrainer", "",
             generated_by("python bench/sft_throughput.py --render"), "",
             "Same model, data and batch; response-only loss. Real tokens/s counts tokens of real sequences, "
             "not padding; tokens/s counts every token computed, padding included. The two `vs TRL default` columns "
             "are those over TRL's default (`ratio_vs_trl_default` in the JSON is the real-token one). Peak memory: "
             "CUDA allocator peak on GPU, process peak RSS on CPU.", ""]
    for key, e in data.items():
        command = e.get("command") or ("python bench/sft_throughput.py" if key == "cpu" else "")
        cpu_share = any("cpu_per_wall" in r for r in e["contenders"].values())
        lines += [f"## {key}: {e['shape']} (seq {e['seq_len']}, batch {e['batch']}, {e['precision']}) on {e['device_name']}",
                  f"torch {e['torch']}, transformers {e['transformers']}, trl {e['trl']}, python {e['python']}; "
                  f"{e['measured_steps']} steps timed after as many warm-up steps", "",
                  *([f"Model: {e['model']}", ""] if e.get("model") else []),
                  *data_lines(e.get("data")),
                  *([f"Run by {e['driver']}:", ""] if e.get("driver") else []),
                  *[f"    {c}" for c in [*e.get("data", {}).get("prepare_commands", []), command,
                                         *e.get("extra_commands", [])] if c], ""]
        base, rows = e["contenders"].get("trl_default"), []
        for name, r in e["contenders"].items():
            ratio = lambda key: f"{r[key] / base[key]:.2f}x" if base else "n/a"
            mem = r.get("peak_mem_gib", r.get("peak_mem_gb"))
            rows.append([name, f"{r['tokens_per_s']:,.0f}", f"{r['real_tokens_per_s']:,.0f}", f"{r['real_fraction']:.1%}",
                         f"{mem:.2f}", ratio("tokens_per_s"), ratio("real_tokens_per_s")]
                        + ([f"{r['cpu_per_wall']:.2f}" if "cpu_per_wall" in r else ""] if cpu_share else []))
        rows += [[name, f"failed: {error}", "", "", "", "", ""] + [""] * cpu_share for name, error in e.get("failed", {}).items()]
        lines += table(["contender", "tokens/s", "real tokens/s", "real share", "peak mem GiB", "vs TRL default (tokens/s)",
                        "vs TRL default (real tokens/s)"] + (["CPU s / wall s"] if cpu_share else []), rows)
        lines.append("")
        notes = e.get("notes", []) + ([repeats_line(e["repeats"])] if e.get("repeats") else [])
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
        if key == "gpu":
            lines += [GPU_REFERENCE, ""]
    return "\n".join(lines)


def repeats_line(repeats: dict) -> str:
    """Reruns of an entry's command whose contender JSON was not kept: the figures recorded for them."""
    runs = "; ".join(f"genrec {r['genrec_tokens_ratio_vs_trl_default']:.2f}x on tokens/s and "
                     f"{r['genrec_real_tokens_ratio_vs_trl_default']:.2f}x on real tokens/s ({r['genrec_tokens_per_s']:,} vs "
                     f"TRL default {r['trl_default_tokens_per_s']:,} tokens/s)" for r in repeats["runs"])
    line = f"{repeats['what']}: {runs}."
    if repeats.get("trl_no_gc_ratio_vs_trl_default_range"):
        low, high = repeats["trl_no_gc_ratio_vs_trl_default_range"]
        line += f" trl_no_gc {low:.2f}x-{high:.2f}x."
    return line


def data_lines(data: dict | None) -> list[str]:
    """The data paragraph of a --tokens entry: where the rows come from, what tokenization cut, the subsample."""
    if not data:
        return []
    prep, n = data.get("prepare", {}), data["subsample_length"]
    lines = [f"Data: the train split of {prep.get('prepared', 'prepared prompts')} (Amazon Toys prompts from "
             f"`genrec prepare`), tokenized as `genrec train-sft` does into {data['tokens']}: "]
    if prep:
        lines[-1] += (f"{prep['rows']:,} rows, {prep['tokens']:,} tokens ({prep['response_tokens']:,} response), "
                      f"max_len {prep['max_len']}, vocabulary {prep['vocab_size']:,}; "
                      f"{prep['rows_truncated']:,} rows lost old history titles to fit max_len "
                      f"({prep['history_titles_dropped']:,} titles in all); ")
    skipped = data["skipped"]
    lines[-1] += (f"{skipped['too_long']:,} rows skipped as too long and {skipped['no_response']:,} without a response "
                  f"token ({data['usable_rows']:,} usable). Timed on a fixed random subsample of "
                  f"{data['subsample_rows']:,} usable rows (seed {data['subsample_seed']}; {data['subsample_tokens']:,} "
                  f"tokens, {data['subsample_response_tokens']:,} of them response), the same for every contender; "
                  f"lengths mean {n['mean']:.0f}, min {n['min']}, p10 {n['p10']}, median {n['p50']}, p90 {n['p90']}, "
                  f"max {n['max']}.")
    return lines + [""]


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
    parser.add_argument("--batch", type=int, default=0,
                        help="sequences per TRL micro-batch, and rows of seq_len tokens per genrec one (default: the "
                             "shape's; with --tokens, SFTConfig's micro_batch_tokens // max_len)")
    parser.add_argument("--tokens", help="a folder made by --prepare-tokens (tokenizer/, tokens/train/): time on its rows")
    parser.add_argument("--rows", type=int, default=3000, help="with --tokens: usable rows subsampled")
    parser.add_argument("--seed", type=int, default=0, help="with --tokens: the subsample's seed")
    parser.add_argument("--prepare-tokens", metavar="PREPARED",
                        help="tokenize this `genrec prepare` output into --tokens, as train-sft does (uses Ray), and exit")
    parser.add_argument("--max-len", type=int, default=512, help="with --prepare-tokens: max_len of the shards")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # set when the script runs one contender
    parser.add_argument("--result", help=argparse.SUPPRESS)
    add_render_flag(parser, "bench/results/sft_throughput.md")
    args = parser.parse_args()
    if args.render:
        render_results(RESULTS / "sft_throughput.json", render_markdown)
        return
    if args.merge:
        merge(args.merge)
        return
    if args.prepare_tokens:
        if not args.tokens:
            parser.error("--prepare-tokens needs --tokens, the folder to write")
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        print(json.dumps(prepare_tokens(Path(args.prepare_tokens), Path(args.tokens), args.max_len), indent=2))
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
        store_entry("gpu" if args.device == "cuda" else "cpu", entry)
    print(render_markdown({"gpu" if args.device == "cuda" else "cpu": entry}))


if __name__ == "__main__":
    main()
