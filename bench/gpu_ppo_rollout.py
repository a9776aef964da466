"""Rollout generation speed: genrec's RolloutGenerator against transformers' `generate`, sampling the
same prompts with the same settings (temperature 1, no top-k, no top-p, no EOS: every row runs to
the full length), on a random-init model of a given shape. Self-contained for a GPU box without Ray:
imports torch, transformers, genrec.rl.rollout and bench/common.py only.

  python bench/gpu_ppo_rollout.py --shape qwen2-0.5b --device cuda --out $OUT/ppo_rollout_gpu.json
  python bench/gpu_ppo_rollout.py --shape tiny --device cpu --prompts 8 --new-tokens 16 --out /tmp/x.json

The JSON is rewritten after every measurement, so a run cut short still leaves what it measured.
Each configuration is wrapped in try/except: an error is recorded, and the next one runs. The
committed result is bench/results/ppo_rollout_gpu.json; its table is a section of
bench/results/ppo_throughput.md (`python bench/ppo_throughput.py --render`).
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from common import random_causal_lm, sync, time_call, versions, write_json

SHAPES = {
    # Qwen2-0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    # the shape of the `tiny` SFT preset (genrec.models.tiny: hidden 128, 4 layers, 4096 tokens)
    "sft-tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                     intermediate_size=512, vocab_size=4096, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1000, tie_word_embeddings=True),
}


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    config = dict(SHAPES[shape], max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = random_causal_lm("qwen2", config, device=device, dtype=dtype, seed=0)
    model.eval()
    # Sampling runs to the full length in every method, as in the 1,112 tokens/s reference.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def make_prompts(n: int, vocab: int, min_len: int, max_len: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [[1] + torch.randint(3, vocab, (length - 1,), generator=g).tolist() for length in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", default="64,128", help="min,max prompt tokens")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method (after one warm-up)")
    parser.add_argument("--skip-generate", action="store_true", help="leave transformers' generate out")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from genrec.rl.rollout import RolloutGenerator, left_pad  # torch only: no Ray on the GPU box

    device = torch.device(args.device)
    dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if args.dtype == "auto" else getattr(torch, args.dtype)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lo, hi = (int(x) for x in args.prompt_len.split(","))
    result = {"shape": args.shape, "shape_config": SHAPES[args.shape], "device": str(device), "dtype": str(dtype),
              "prompts": args.prompts, "new_tokens": args.new_tokens, "prompt_len": [lo, hi],
              **versions("torch", "transformers", "python"),
              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "methods": {}, "errors": {}}

    def save():
        write_json(out, result)

    started = time.perf_counter()
    model = build_model(args.shape, device, dtype)
    result["build_s"] = round(time.perf_counter() - started, 2)
    prompts = make_prompts(args.prompts, SHAPES[args.shape]["vocab_size"], lo, hi)
    tokens = args.prompts * args.new_tokens
    save()

    def record(name, times, extra=None):
        best = min(times)
        result["methods"][name] = {"seconds": [round(t, 4) for t in times], "best_s": round(best, 4),
                                   "tokens_per_s": round(tokens / best, 1),
                                   "ms_per_step": round(1000 * best / args.new_tokens, 3), **(extra or {})}
        print(f"{name:28s} {tokens / best:10.1f} tok/s  {1000 * best / args.new_tokens:8.2f} ms/step", flush=True)
        save()

    # 1. transformers' generate (dynamic cache), plain sampling
    if not args.skip_generate:
        try:
            ids, mask = left_pad(prompts, 0, device)

            def hf(n=args.new_tokens):
                with torch.no_grad():
                    generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                               top_k=0, top_p=1.0, max_new_tokens=n, pad_token_id=0)
                assert generated.shape[1] - ids.shape[1] == n, generated.shape

            hf(8)  # warm-up
            record("transformers_generate", time_call(hf, device, max(1, args.repeats - 1)))
        except Exception as e:  # noqa: BLE001 - record and go on
            result["errors"]["transformers_generate"] = traceback.format_exc(limit=3)
            print("transformers_generate failed:", e, flush=True)
            save()

    # 2. genrec's generator: eager steps, then CUDA-graph steps, then CUDA graphs with top-p 0.9
    variants = [("genrec_eager", False, 1.0)]
    if device.type == "cuda":
        variants += [("genrec_cuda_graph", True, 1.0), ("genrec_cuda_graph_top_p0.9", True, 0.9)]
    for name, graphs, top_p in variants:
        gen = None
        try:
            gen = RolloutGenerator(model, pad_id=0, eos_id=None, cuda_graph=graphs)
            t = time.perf_counter()
            gen.generate(prompts, max_new_tokens=8, top_p=top_p, seed=0)  # warm-up (+ graph capture)
            sync(device)
            warmup = time.perf_counter() - t
            rollout = gen.generate(prompts, max_new_tokens=args.new_tokens, top_p=top_p, seed=1)
            assert rollout.tokens.shape == (args.prompts, args.new_tokens), rollout.tokens.shape
            check = logp_check(model, rollout, device)
            times = time_call(lambda: gen.generate(prompts, max_new_tokens=args.new_tokens, top_p=top_p, seed=2),
                              device, args.repeats)
            record(name, times, {"warmup_s": round(warmup, 3), **check})
        except Exception as e:  # noqa: BLE001
            result["errors"][name] = traceback.format_exc(limit=5)
            print(f"{name} failed:", e, flush=True)
            save()
        gen = None  # its CUDA graphs hold memory: release them before the next variant
        if device.type == "cuda":
            torch.cuda.empty_cache()

    hf_tps = result["methods"].get("transformers_generate", {}).get("tokens_per_s")
    for name, m in result["methods"].items():
        if hf_tps and name != "transformers_generate":
            m["speedup_vs_generate"] = round(m["tokens_per_s"] / hf_tps, 2)
    result["total_s"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps({k: {"tok/s": v["tokens_per_s"], "x": v.get("speedup_vs_generate")}
                      for k, v in result["methods"].items()}), flush=True)


@torch.no_grad()
def logp_check(model, rollout, device, rows: int = 4) -> dict:
    """The sampled tokens' log-probs against the model's own forward pass (first rows)."""
    diffs = []
    for row in range(min(rows, len(rollout.prompts))):
        prompt = rollout.prompts[row]
        n = int(rollout.mask[row].sum())
        seq = torch.tensor([prompt + rollout.tokens[row, :n].tolist()], device=device)
        logits = model(seq).logits[0, len(prompt) - 1: len(prompt) - 1 + n].float()
        logp = torch.log_softmax(logits, -1).gather(-1, rollout.tokens[row, :n, None].to(device)).squeeze(-1)
        diffs.append(float((logp.cpu() - rollout.logp[row, :n]).abs().max()))
    return {"logp_max_abs_diff_vs_forward": round(max(diffs), 5)}


if __name__ == "__main__":
    main()
