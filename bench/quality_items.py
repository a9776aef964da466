"""genrec's `item_tokens` model on the Amazon Toys benchmark: trained and scored without Ray, on a CPU or a GPU.

Every item is written `<item:ID>` title eos (genrec/data/item_tokens.py): the model reads an ID
embedding beside each history title and predicts the next item's token, so ranking the catalog is
one softmax over the item tokens (genrec/rec/item_rank.py). The rows, prompts and ranking are the
product's own functions (what `genrec train-sft item_tokens=true` tokenizes and `genrec evaluate`
ranks); the loop is genrec.train.sft.train_loop, as in bench/quality_gpu.py, whose prepared split
(samples_per_user=1, history_len 50) and 8,192-token tokenizer it reuses. The weights of the best
validation HR@10 (first --valid-users users) are scored on the whole test split.

    python bench/quality_gpu.py inputs                   # once, with Ray: bench/work/seq/inputs
    python bench/quality_items.py inputs                 # token rows and prompts: bench/work/items/inputs
    python bench/quality_items.py run --hidden 64 --layers 2 --epochs 16 --out bench/work/items/h64l2
    python bench/quality_items.py report bench/work/items/h64l2 ...   # bench/results/quality_items.{json,md}
    python bench/quality_items.py --render                             # quality_items.md from its JSON

`run` needs neither Ray nor the genrec tokenization module, so it runs on the device machine with
bench/work/items/inputs carried (`--device cuda`).
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from common import RESULTS, WORK, add_render_flag, f4, generated_by, relative, render_results, table, write_results

SEQ = WORK / "seq"


def rank_all(model, tokenizer, prompts, item_tokens, batch_tokens=16384, k=20):
    """[users, k] catalog indices; users batched by length up to batch_tokens prompt tokens."""
    from genrec.rec.item_rank import rank_by_item_tokens

    order = np.argsort([len(p) for p in prompts], kind="stable")
    ranked = np.zeros((len(prompts), k), np.int64)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(prompts[order[end]]) * (end - start + 1) <= batch_tokens:
            end += 1
        users = order[start:end]
        ranked[users] = rank_by_item_tokens(model, [prompts[u] for u in users], item_tokens, top_k=k,
                                            pad_id=tokenizer.pad_token_id)[0]
        start = end
    return ranked


INPUTS = WORK / "items" / "inputs"


def stage_inputs(args) -> None:
    """The product's item-token rows and prompts for the Toys split, written as parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.data.item_tokens import add_item_tokens, catalog_token_ids
    from genrec.data.templates import get_template
    from genrec.data.tokenize import prompt_ids, tokenize_sequence_rows
    from genrec.models.tokenizer import load_tokenizer

    started = time.perf_counter()
    template = get_template("genrec")
    catalog = pq.read_table(SEQ / "toys_prepared" / "catalog.parquet", columns=["item_id", "title"])
    catalog_ids = catalog.column("item_id").to_pylist()
    titles = dict(zip(catalog_ids, catalog.column("title").to_pylist()))
    catalog_index = {item: k for k, item in enumerate(catalog_ids)}
    tokenizer = load_tokenizer(str(SEQ / "inputs" / "tokenizer"))
    plain_vocab = len(tokenizer)
    add_item_tokens(tokenizer, catalog_ids)
    inputs = Path(args.inputs)
    inputs.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(inputs / "tokenizer")
    split = {s: pq.read_table(SEQ / "toys_prepared" / s).sort_by("user_id").to_pylist() for s in ("train", "valid", "test")}
    lists = pa.list_(pa.int32())
    for name, part, history_loss in (("train", split["train"], True), ("valid_loss", split["valid"][:4000], False)):
        encoded = tokenize_sequence_rows(tokenizer, template, part, args.max_len, titles, history_loss,
                                         item_titles=bool(args.titles))
        pq.write_table(pa.table({"input_ids": pa.array([e["input_ids"] for e in encoded], lists),
                                 "labels": pa.array([e["labels"] for e in encoded], lists)}), inputs / f"{name}.parquet")
    for name in ("valid", "test"):
        prompts = prompt_ids(tokenizer, template, split[name], args.max_len - 1, titles,
                             "sequence" if args.titles else "item_ids")
        targets = [catalog_index[r["target_item_id"]] for r in split[name]]
        pq.write_table(pa.table({"user_id": [r["user_id"] for r in split[name]], "target": pa.array(targets, pa.int32()),
                                 "prompt": pa.array(prompts, lists)}), inputs / f"{name}_prompts.parquet")
    meta = {"plain_vocab": plain_vocab, "vocab": len(tokenizer), "max_len": args.max_len, "titles": bool(args.titles),
            "item_tokens": catalog_token_ids(tokenizer, catalog_ids)}
    (inputs / "meta.json").write_text(json.dumps(meta))
    print(f"inputs in {time.perf_counter() - started:.1f} s: vocab {plain_vocab} + {len(catalog_ids)} item tokens", flush=True)


def stage_run(args) -> None:
    import pyarrow.parquet as pq
    import torch

    from genrec.config import SFTConfig
    from genrec.models.tiny import add_embedding_dropout, tiny_config, tiny_model
    from genrec.models.tokenizer import load_tokenizer
    from genrec.rec.metrics import ranking_metrics
    from genrec.train.batching import TokenRows
    from genrec.train.sft import train_loop

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = Path(args.inputs)
    meta = json.loads((inputs / "meta.json").read_text())
    tokenizer = load_tokenizer(str(inputs / "tokenizer"))
    item_tokens = meta["item_tokens"]
    train = TokenRows.from_table(pq.read_table(inputs / "train.parquet"))
    valid_loss_rows = TokenRows.from_table(pq.read_table(inputs / "valid_loss.parquet"))
    prompts, targets = {}, {}
    for name in ("valid", "test"):
        table = pq.read_table(inputs / f"{name}_prompts.parquet")
        prompts[name], targets[name] = table.column("prompt").to_pylist(), table.column("target").to_numpy()
    for name, limit in (("valid", args.valid_users), ("test", args.test_users)):
        if limit:
            prompts[name], targets[name] = prompts[name][:limit], targets[name][:limit]
    epoch_tokens = int(train.lengths.sum())
    print(f"{len(train)} train rows, {epoch_tokens} tokens, vocab {meta['plain_vocab']} + {len(item_tokens)} item tokens",
          flush=True)

    config = tiny_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, max_position_embeddings=meta["max_len"])
    config.attention_dropout = args.attn_dropout
    model = tiny_model(config, seed=args.seed).to(device)
    add_embedding_dropout(model, args.embed_dropout)  # what train-sft's tiny_embedding_dropout adds
    steps = args.max_steps or max(50, round(args.epochs * epoch_tokens / args.micro_batch_tokens))
    cfg = SFTConfig(model="tiny", max_len=meta["max_len"], format="sequence", item_tokens=True,
                    micro_batch_tokens=args.micro_batch_tokens, lr=args.lr, weight_decay=args.weight_decay,
                    warmup_steps=min(100, steps // 10), max_steps=steps, log_every=10,
                    eval_every=max(1, steps // args.evals), save_every=0, use_gpu=device.type == "cuda", seed=args.seed)
    history, best = [], {"hr@10": -1.0}
    t0 = time.perf_counter()

    def report(metrics, state):
        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        if "valid_loss" in metrics:
            model.eval()
            row["valid"] = ranking_metrics(rank_all(model, tokenizer, prompts["valid"], item_tokens), targets["valid"], (10, 20))
            model.train()
            if row["valid"]["hr@10"] > best["hr@10"]:
                best.update(row["valid"], step=metrics["step"],
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(row)
        print(json.dumps({k: v for k, v in row.items() if k in ("step", "loss", "valid_loss", "valid", "wall_s")}),
              flush=True)

    train_loop(cfg, model, train, valid_loss_rows, report=report)
    train_s = time.perf_counter() - t0
    model.load_state_dict(best.pop("state"))
    model.eval()
    t0 = time.perf_counter()
    ranked = rank_all(model, tokenizer, prompts["test"], item_tokens)
    test = ranking_metrics(ranked, targets["test"], (1, 5, 10, 20))
    np.save(out / "test_ranked.npy", ranked)
    result = {"inputs": str(inputs), "titles": meta.get("titles", True), "hidden": args.hidden, "layers": args.layers, "heads": args.heads, "lr": args.lr,
              "weight_decay": args.weight_decay, "attn_dropout": args.attn_dropout, "embed_dropout": args.embed_dropout,
              "micro_batch_tokens": args.micro_batch_tokens, "steps": steps,
              "epochs": steps * args.micro_batch_tokens / epoch_tokens, "train_s": train_s, "device": str(device),
              "threads": args.threads, "seed": args.seed, "params": sum(p.numel() for p in model.parameters()), "best_valid": best,
              "valid_users": len(prompts["valid"]), "test": test, "test_users": len(prompts["test"]),
              "test_s": time.perf_counter() - t0, "history": history}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print("test", json.dumps(test), flush=True)


def stage_report(args) -> None:
    """The runs' result.json files beside this harness's pop and SASRec (bench/results/quality_toys.json)
    -> bench/results/quality_items.json and .md; coverage@10 from each run's saved test ranking."""
    from genrec.rec.metrics import catalog_coverage

    toys = json.loads((RESULTS / "quality_toys.json").read_text())
    runs = {}
    for run in map(Path, args.runs):
        result = json.loads((run / "result.json").read_text())
        items = len(json.loads((Path(result["inputs"]) / "meta.json").read_text())["item_tokens"])
        result["test"]["coverage@10"] = catalog_coverage(np.load(run / "test_ranked.npy"), items, 10)
        result.pop("history")
        runs[run.name] = result
    out = {"dataset": toys["dataset"], "users": toys["users"], "items": toys["items"], "protocol": toys["protocol"],
           "pop": toys["pop"], "sasrec": toys["sasrec"], "genrec_titles_only": toys["genrec_titles"], "item_tokens": runs,
           "notes": Path(args.notes).read_text() if args.notes else ""}
    print(write_results(RESULTS / "quality_items.json", out, render_markdown))


def _curve(points: dict) -> str:
    return ", ".join(f"{v:.4g} ({int(k):,})" for k, v in points.items())


def render_markdown(out: dict) -> str:
    lines = ["# genrec `item_tokens` on Amazon Toys (bench/quality_items.py)", "",
             generated_by("python bench/quality_items.py --render"), "",
             f"{out['protocol']}; {out['users']:,} test users, {out['items']:,} items. pop and SASRec are "
             "bench/results/quality_toys.json's rows (same split, same metrics code); the titles-only row is its "
             "`genrec_titles` (bench/quality_gpu.py). Bold rows: the `item_tokens` runs of this script.", ""]
    rows = []
    for name in ("pop", "sasrec"):
        m = out[name]
        rows.append([name, "", "", "", "", f"{m['train_s']:.0f}", "", "", f"{m['users']:,}", f4(m["hr@5"]), f4(m["hr@10"]),
                     f4(m["ndcg@5"]), f4(m["ndcg@10"]), "", ""])
    g = out["genrec_titles_only"]
    params = re.search(r"([\d,]+) parameters", g.get("model", ""))
    device = g.get("device", "").replace("NVIDIA ", "").split(" ")[0]
    rows.append([f"genrec titles only ({g['variant']}, beam search)", "yes",
                 f"{int(params.group(1).replace(',', '')) / 1e6:.1f}M" if params else "", "", f"{g['steps']} ({g['epochs']:.1f})",
                 f"{g['train_s']:.0f} ({device})", "", "", f"{g['users']:,}", f4(g["hr@5"]), f4(g["hr@10"]), f4(g["ndcg@5"]),
                 f4(g["ndcg@10"]), f4(g["hr@20"]), f"{g['coverage@10']:.3f}"])
    for name, r in out["item_tokens"].items():
        t, b = r["test"], r["best_valid"]
        rows.append([f"**{name}** (h{r['hidden']} x {r['layers']} layers)", "yes" if r["titles"] else "no",
                     f"{r['params'] / 1e6:.2f}M", f"{r['lr']:g} / {r['weight_decay']:g}", f"{r['steps']} ({r['epochs']:.1f})",
                     f"{r['train_s']:.0f} ({r['device']}, {r['threads']} threads)", b["step"],
                     f"{b['hr@10']:.4f} ({r['valid_users']:,})", f"{r['test_users']:,}", f4(t["hr@5"]), f4(t["hr@10"]),
                     f4(t["ndcg@5"]), f4(t["ndcg@10"]), f4(t["hr@20"]), f"{t['coverage@10']:.3f}"])
    lines += table(["model", "titles", "params", "lr / wd", "steps (epochs)", "train_s (device)", "best step",
                    "valid HR@10 (users)", "test users", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "HR@20", "coverage@10"],
                   rows, "llrlrrrrrrrrrrr")
    lines += ["", "## Runs", "",
              "Each run: embedding dropout 0.2, attention dropout 0.1, cosine schedule; the weights of the best validation "
              "HR@10 (on the validation users in the table) ranked every test user by one softmax over the catalog's item "
              "tokens. `titles: no` is `format=item_ids` (inputs built with `inputs --titles 0`): the instruction, then "
              "every item as its `<item:ID>` token alone.", ""]
    for name, r in out["item_tokens"].items():
        lines.append(f"- **{name}**: inputs {relative(r['inputs'])}, seed {r.get('seed', 0)}, {r['micro_batch_tokens']:,} tokens a "
                     f"step, test split ranked in {r['test_s']:.1f} s.")
        if r.get("valid_hr@10_by_step"):
            lines.append(f"  Validation HR@10 (step): {_curve(r['valid_hr@10_by_step'])}.")
        if r.get("valid_loss_min"):
            v = r["valid_loss_min"]
            lines.append(f"  Validation loss ({v['rows']:,} users) lowest at step {v['step']:,} ({v['value']}), "
                         f"{v['final']} at the end.")
        if r.get("inputs_check"):
            lines.append(f"  Inputs check: {r['inputs_check']}")
        if r.get("commands"):
            lines += ["", *[f"      {c}" for c in r["commands"]], ""]
    earlier = out.get("item_tokens_without_result_files")
    if earlier:
        lines += ([] if lines[-1] == "" else [""]) + ["## Runs without result files", "", earlier["what"], ""]
        for name, r in earlier["runs"].items():
            t = r.get("test")
            line = f"- **{name}**: {r['setup']}."
            if t:
                line += (f" Test (all users): HR@5 {f4(t['hr@5'])}, HR@10 {f4(t['hr@10'])}, NDCG@5 {f4(t['ndcg@5'])}, "
                         f"NDCG@10 {f4(t['ndcg@10'])}, HR@20 {f4(t['hr@20'])}.")
            else:
                line += " No test figures."
            if r.get("valid_hr@10_by_epoch"):
                line += (f" Validation HR@10 ({r['valid_users']}; epoch in brackets): "
                         + ", ".join(f"{v:g} ({k})" for k, v in r["valid_hr@10_by_epoch"].items()) + ".")
            lines.append(line)
    if out.get("notes"):
        lines += ["", out["notes"]]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", nargs="?", choices=["inputs", "run", "report"])
    parser.add_argument("runs", nargs="*", help="report: run folders (each with result.json, test_ranked.npy)")
    parser.add_argument("--notes", default="", help="report: a markdown file appended to the .md and kept in the .json")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--attn-dropout", type=float, default=0.1)
    parser.add_argument("--embed-dropout", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=12)
    parser.add_argument("--max-steps", type=int, default=0, help="cap (timing runs)")
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-len", type=int, default=1024, help="inputs: longest row in tokens")
    parser.add_argument("--valid-users", type=int, default=2000, help="users whose validation HR@10 picks the weights (0 = all)")
    parser.add_argument("--test-users", type=int, default=0, help="0 = all (fewer: dry runs only)")
    parser.add_argument("--evals", type=int, default=6, help="validation checks over training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="initialisation, data order and dropout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/work/items/run")
    parser.add_argument("--inputs", default=str(INPUTS), help="where `inputs` writes and `run` reads")
    parser.add_argument("--titles", type=int, default=1, help="inputs: 0 = format=item_ids, each item its token alone (no titles)")
    add_render_flag(parser, "bench/results/quality_items.md")
    args = parser.parse_args(argv)
    if args.render:
        render_results(RESULTS / "quality_items.json", render_markdown)
        return 0
    if args.stage is None:
        parser.error("a stage, or --render")
    {"inputs": stage_inputs, "run": stage_run, "report": stage_report}[args.stage](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
