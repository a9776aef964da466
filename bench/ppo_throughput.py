"""PPO throughput on this machine (CPU): rollout generation against transformers' `generate` on the
same batch, then the whole actor-learner loop's iteration time by phase with 1 and 2 rollout
workers, and weight sync of the full state against the LoRA adapter alone.

  .venv/bin/python bench/ppo_throughput.py            # writes bench/results/ppo_throughput.json/.md
  .venv/bin/python bench/ppo_throughput.py --render   # only the .md, from ppo_throughput.json and ppo_rollout_gpu.json

Generation: the `tiny` SFT preset's shape (Llama-style, hidden 128, 4 layers, 4096 tokens), random
init, 32 prompts of 48-80 tokens, 64 new tokens, no EOS (every method runs to the full length), best
of `--repeats` alternating runs of RolloutGenerator with its compiled CPU decode step (the default),
with the eager step (`compile_cpu=False`), transformers' `generate` (dynamic cache), and `generate`
at its documented best: a static cache and a torch.compile'd forward. The compiled step's first
call includes compiling it, in a fresh inductor cache unless `--warm-compile-cache`. The loop: the
toy task of genrec/rl/toy.py (a word-level policy of the same depth and width), its phases from
metrics.jsonl (median over iterations after the first). The GPU counterpart of the generation part is
bench/gpu_ppo_rollout.sh; its bench/results/ppo_rollout_gpu.json is rendered as the last section of the markdown.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import gpu_ppo_rollout as gen_bench
from common import RESULTS, Stopwatch, add_render_flag, generated_by, render_results, table, utc_now, write_json, \
    write_markdown


def bench_generation(repeats: int, prompts_n: int, new_tokens: int, prompt_len: tuple[int, int] = (48, 80)) -> dict:
    from genrec.rl.rollout import RolloutGenerator, left_pad

    device = torch.device("cpu")
    model = gen_bench.build_model("sft-tiny", device, torch.float32)
    prompts = gen_bench.make_prompts(prompts_n, gen_bench.SHAPES["sft-tiny"]["vocab_size"], *prompt_len)
    ids, mask = left_pad(prompts, 0, device)
    compiled = RolloutGenerator(model, pad_id=0, eos_id=None)  # compile_cpu=True, the default
    eager = RolloutGenerator(model, pad_id=0, eos_id=None, compile_cpu=False)

    # transformers' own fast path, as its docs give it: a static KV cache and a torch.compile'd forward
    # (generate compiles by itself only on accelerators), on a copy of the same weights.
    static = copy.deepcopy(model)
    static.forward = torch.compile(static.forward, dynamic=False)

    def theirs(on=model, **options):
        with torch.no_grad():
            return on.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                               top_p=1.0, max_new_tokens=new_tokens, pad_token_id=0, **options)

    methods = {"genrec_compiled": lambda: compiled.generate(prompts, max_new_tokens=new_tokens, seed=0),
               "genrec_eager": lambda: eager.generate(prompts, max_new_tokens=new_tokens, seed=0),
               "transformers_generate": theirs,
               "transformers_generate_static": lambda: theirs(static, cache_implementation="static")}
    with Stopwatch() as first:
        rollout = methods["genrec_compiled"]()  # compiles the decode step for this batch size
    first_call = {"wall_s": round(first.wall_s, 2), "cpu_s": round(first.cpu_s, 2)}
    if not compiled.compile_cpu:
        raise RuntimeError("the compiled decode step fell back to the eager one (see the warning above)")
    eager_rollout = methods["genrec_eager"]()
    theirs()  # warm-up
    with Stopwatch() as first:
        methods["transformers_generate_static"]()  # compiles its forward for these shapes
    static_first_call = {"wall_s": round(first.wall_s, 2), "cpu_s": round(first.cpu_s, 2)}
    # Wall time and this process's CPU time: on a shared machine wall time includes waiting for a
    # core; with one torch thread the CPU time is the work itself, so its ratio is the steadier one.
    times = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    for _ in range(repeats):  # alternate, so a load spike on this shared machine hits every method
        for name, fn in methods.items():
            with Stopwatch() as t:
                fn()
            times[name].append(t.wall_s)
            cpu[name].append(t.cpu_s)
    tokens = prompts_n * new_tokens
    out = {"shape": "sft-tiny", "config": gen_bench.SHAPES["sft-tiny"], "prompts": prompts_n, "new_tokens": new_tokens,
           "prompt_len": list(prompt_len),
           "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           # the first call of the compiled generator, compile included; CPU time is this process's
           # only (inductor compiles C++ in worker processes)
           "compiled_first_call": first_call, "static_first_call": static_first_call,
           "logp_max_abs_diff_vs_forward": {"genrec_compiled": _logp_gap(model, prompts, rollout),
                                            "genrec_eager": _logp_gap(model, prompts, eager_rollout)}}
    for name in methods:
        out[name] = {"wall_s": [round(t, 4) for t in times[name]], "cpu_s": [round(t, 4) for t in cpu[name]],
                     "best_wall_s": round(min(times[name]), 4), "best_cpu_s": round(min(cpu[name]), 4),
                     "tokens_per_s_wall": round(tokens / min(times[name]), 1),
                     "tokens_per_cpu_s": round(tokens / min(cpu[name]), 1)}
    for name in ("genrec_compiled", "genrec_eager", "transformers_generate_static"):
        out[name]["speedup_wall"] = round(min(times["transformers_generate"]) / min(times[name]), 2)
        out[name]["speedup_cpu"] = round(min(cpu["transformers_generate"]) / min(cpu[name]), 2)
    for name in ("genrec_compiled", "genrec_eager"):  # against the peer at its best
        out[name]["speedup_cpu_vs_static"] = round(min(cpu["transformers_generate_static"]) / min(cpu[name]), 2)
    return out


def _logp_gap(model, prompts, rollout) -> float:
    """Largest |sampled log-prob - the model's own forward pass on prompt + response| (float32)."""
    from genrec.rl.policy import sequence_batch

    ids, attention, positions = sequence_batch(prompts, rollout.tokens, rollout.mask, pad_id=0)
    width = max(len(p) for p in prompts)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits[:, width - 1:-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, rollout.tokens.unsqueeze(-1)).squeeze(-1)
    return float(((logp - rollout.logp) * rollout.mask).abs().max())


def bench_loop(root: Path, workers: int, lora: bool, iterations: int, off_policy: bool = False, learners: int = 1) -> dict:
    from genrec.config import PPOConfig
    from genrec.rl.loop import read_metrics, run_ppo
    from genrec.rl.toy import make_toy_task

    task = make_toy_task(root / "task", hidden=128, layers=4)
    out = root / f"run_w{workers}_{'lora' if lora else 'full'}{'_off' if off_policy else ''}_l{learners}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PPOConfig(**task, out_dir=str(out), prompt_format="raw", reward="count", iterations=iterations,
                    rollout_batch_size=64, max_new_tokens=32, num_rollout_workers=workers, minibatch_size=16,
                    ppo_epochs=1, lr=1e-3, kl_controller="fixed", init_kl_coef=0.1, save_every=iterations,
                    lora=lora, lora_r=8, lora_alpha=16, worker_cpus=0.25, learner_cpus=0.25, torch_threads=1,
                    off_policy=off_policy, num_learners=learners)
    started = time.perf_counter()
    run_ppo(cfg)
    wall = time.perf_counter() - started
    rows = read_metrics(out)[1:]  # the first iteration pays one-off costs
    keys = [k for k in rows[0] if k.startswith("timing/")] + ["tokens_per_s", "response_tokens"]
    result = {k: round(statistics.median(r[k] for r in rows), 4) for k in keys}
    result.update(workers=workers, lora=lora, off_policy=off_policy, learners=learners, iterations=iterations, wall_s_with_setup=round(wall, 1),
                  sync_mb=round(_sync_bytes(cfg) / 2**20, 3))
    return result


def _sync_bytes(cfg) -> int:
    from genrec.rl.policy import load_policy, sync_weights

    model, _ = load_policy(cfg, trainable=True, device=torch.device("cpu"), dtype=torch.float32)
    return sum(t.numel() * t.element_size() for t in sync_weights(model).values())


def render_markdown(result: dict) -> str:
    g = result["generation"]
    lines = [
        "# PPO throughput", "",
        generated_by("python bench/ppo_throughput.py --render") + " The GPU section is rendered from ppo_rollout_gpu.json.",
        "",
        f"Machine: {result['machine']}; torch {result['torch']}; measured {result['date']}. "
        "This machine is shared (2 cores, other jobs running), so absolute times swing; ratios are "
        "from runs alternated in the same process.", "",
        "## Rollout generation vs transformers' `generate` (same batch)", "",
        f"Shape `sft-tiny` ({g['config']['hidden_size']} hidden, {g['config']['num_hidden_layers']} layers, "
        f"vocab {g['config']['vocab_size']}), random init, sampling at temperature 1, no EOS (every row runs to "
        "the full length), one torch thread, runs alternated, best of the repeats. Wall time includes waiting "
        "for a core on this shared machine; CPU time of the process is the steadier measure. `compiled step`: "
        "RolloutGenerator's default on a CPU (oneDNN-packed linears, packed prefill, each decode step one "
        "torch.compile'd graph); `eager step`: `compile_cpu=False` (the same prefill, the decode step op by op). "
        "`logp diff`: the largest gap between a sampled token's log-prob as returned and as the model's own "
        "forward pass computes it.", "",
    ]
    parts = [part for part in (result.get("generation_small_batch"), g) if part]
    rows = []
    for part in parts:
        shape = f"{part['prompts']} x {part['new_tokens']} ({part['prompt_len'][0]}-{part['prompt_len'][1]})"
        for label, k in (("genrec, compiled step", "genrec_compiled"), ("genrec, eager step", "genrec_eager"),
                         ("transformers generate", "transformers_generate"),
                         ("transformers generate, static cache + compiled forward", "transformers_generate_static")):
            if k not in part:  # (a run from before the static-cache peer)
                continue
            rows.append([shape, label, part[k]["best_wall_s"], part[k]["tokens_per_s_wall"], part[k]["best_cpu_s"],
                         part[k]["tokens_per_cpu_s"], part[k].get("speedup_cpu", ""),
                         part[k].get("speedup_cpu_vs_static", ""), _sci(part["logp_max_abs_diff_vs_forward"].get(k))])
    lines += table(["prompts x new tokens (prompt length)", "method", "best wall s", "tokens/s (wall)", "best CPU s",
                    "tokens per CPU s", "speed-up vs generate (CPU)", "vs static + compiled (CPU)", "logp diff"],
                   rows, "llrrrrrrr")
    cache = ("a fresh inductor cache for the 32-prompt run, which the 8-prompt one then shares"
             if result.get("cold_compile_cache", True) else "the existing inductor cache")
    lines += ["", "Compiling the decode step (the compiled generator's first call, compile included; CPU time of "
              f"this process only, inductor compiles its C++ in worker processes; {cache}): " +
              "; ".join(f"{p['prompts']} prompts: {p['compiled_first_call']['wall_s']} s wall, "
                        f"{p['compiled_first_call']['cpu_s']} s CPU" for p in parts) + ". It is paid once per process "
              "and batch size; the cache length is a dynamic dimension of the graph."]
    if all("static_first_call" in p for p in parts):
        lines += ["", "transformers' static cache + compiled forward (`cache_implementation=\"static\"`, "
                  "`torch.compile(model.forward, dynamic=False)` on a copy of the weights; generate compiles on its own "
                  "only on accelerators): its first call, compile included: " +
                  "; ".join(f"{p['prompts']} prompts: {p['static_first_call']['wall_s']} s wall" for p in parts) + "."]
    lines += [
        "", "Load average during the runs: " + ", ".join(f"{x:.2f}" for x in g["load_average"]) + ".", "",
        "## PPO iteration by phase (toy task, median over iterations 2..N)", "",
        "`generate s` is the time the driver waited for rollouts: one-step-off-policy samples iteration k+1 "
        "while iteration k scores and updates, so only the part not hidden behind them shows. Rollout tokens/s "
        "are per second of the workers' own sampling time."
        + (f" Measured {result['loop_date']} (a table kept from an earlier run by --skip-loop)." if result.get("loop_date")
           else ""), "",
    ]
    lines += table(["rollout workers", "learners", "sampling", "weights synced", "sync MB", "generate s", "score s", "ref s",
                    "update s", "sync s", "iteration s", "rollout tokens/s"],
                   [[r["workers"], r.get("learners", 1), "one-step-off" if r.get("off_policy") else "on-policy",
                     "LoRA adapter" if r["lora"] else "full state", r["sync_mb"], r["timing/generate"], r["timing/score"],
                     r["timing/ref"], r["timing/update"], r["timing/sync"], r["timing/iteration"], r["tokens_per_s"]]
                    for r in result["loop"]], "rrllrrrrrrrr")
    return "\n".join(lines + gpu_markdown(RESULTS / "ppo_rollout_gpu.json"))


def _sci(x) -> str:
    return "" if x is None else f"{x:.1e}"


def gpu_markdown(path: Path) -> list[str]:
    """The GPU run of bench/gpu_ppo_rollout.sh, when its JSON is there."""
    lines = ["", "## Rollout generation on a GPU", ""]
    if not path.exists():
        return lines + ["Not measured: run `bench/gpu_ppo_rollout.sh` on a GPU box; its JSON goes to "
                        f"`bench/results/{path.name}`.", ""]
    r = json.loads(path.read_text())
    c = r["shape_config"]
    lines += [
        f"`bash bench/gpu_ppo_rollout.sh` on one {r['gpu']} (torch {r['torch']}, transformers {r['transformers']}): "
        f"{r['shape']}-shaped random-init model (hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, vocab "
        f"{c['vocab_size']}) in {r['dtype'].removeprefix('torch.')}, {r['prompts']} prompts of {r['prompt_len'][0]}-"
        f"{r['prompt_len'][1]} tokens x {r['new_tokens']} new tokens, sampling at temperature 1, no EOS; best of the "
        "timed runs after a warm-up. `logp diff` is the largest gap between a sampled token's log-prob as the "
        "generator returned it and as a full forward pass of the same model computes it (bf16).", "",
    ]
    rows = [[name, f"{m['tokens_per_s']:,.0f}", m["ms_per_step"], m.get("speedup_vs_generate", ""),
             m.get("logp_max_abs_diff_vs_forward", "")] for name, m in r["methods"].items()]
    rows += [[name, f"failed: {error.strip().splitlines()[-1]}", "", "", ""] for name, error in r.get("errors", {}).items()]
    return lines + table(["method", "tokens/s", "ms per step", "speed-up vs generate", "logp diff"], rows) + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-generation", action="store_true", help="keep the generation part of --out's JSON")
    parser.add_argument("--out", default=str(RESULTS / "ppo_throughput"))
    add_render_flag(parser, "the markdown beside --out")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="compile with the existing inductor cache (default: a fresh one, so the reported "
                             "compile time is a cold compile)")
    args = parser.parse_args()
    if args.render:
        render_results(Path(args.out).with_suffix(".json"), render_markdown)
        return

    result = {"machine": f"{platform.machine()} x{os.cpu_count()} CPUs", "torch": torch.__version__,
              "date": utc_now(), "loop": []}
    torch.set_num_threads(1)
    previous_path = Path(args.out).with_suffix(".json")
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    if args.skip_loop and previous.get("loop"):  # keep the last loop table, dated
        result["loop"] = previous["loop"]
        result["loop_date"] = previous.get("loop_date") or previous.get("date")
    result["cold_compile_cache"] = not args.warm_compile_cache
    if not args.warm_compile_cache and not args.skip_generation:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="genrec-bench-inductor-")
    if args.skip_generation:
        result["generation"] = previous["generation"]
        result["generation_small_batch"] = previous.get("generation_small_batch")
    else:
        result["generation"] = bench_generation(args.repeats, prompts_n=args.prompts, new_tokens=args.new_tokens)
        # a small batch of short prompts: per-step overhead rather than matmuls decides the time
        result["generation_small_batch"] = bench_generation(args.repeats, prompts_n=8, new_tokens=args.new_tokens,
                                                            prompt_len=(12, 16))
    print(json.dumps(result["generation"]), flush=True)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    if not args.skip_loop:
        import ray

        result["loop"], result["loop_date"] = [], None
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        with tempfile.TemporaryDirectory() as tmp:
            for workers, lora, off_policy, learners in ((1, False, False, 1), (2, False, False, 1), (2, False, True, 1),
                                                        (2, True, False, 1), (2, True, True, 1), (2, False, False, 2)):
                row = bench_loop(Path(tmp), workers, lora, args.iterations, off_policy, learners)
                print(json.dumps(row), flush=True)
                result["loop"].append(row)
        ray.shutdown()
    write_json(out.with_suffix(".json"), result)
    if result["loop"]:
        write_markdown(out.with_suffix(".md"), render_markdown(result))
    if not args.warm_compile_cache and not args.skip_generation:
        shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
