"""Recommendation quality on the published split: most-popular, SASRec and genrec's generative model.

Full protocol (DESIGN.md): leave-one-out, full ranking over the whole catalog, no sampled negatives,
HR@5/10 and NDCG@5/10 on the test split. Stages, each resumable on its own (outputs under
bench/work/quality/<dataset>/), then `report` merges them into bench/results/quality_<dataset>.{json,md}:

    python bench/quality.py prepare   --dataset toys          # or reuse bench/work/toys_prepared (same config)
    python bench/quality.py baselines --dataset toys --subsample 2000 --sasrec-max-train-s 900 --sasrec-eval-every 3 --threads 1
    python bench/quality.py sft       --dataset toys --sft-steps 200 --num-workers 2 --micro-batch-tokens 8192 --sft-eval-every 50 --valid-rows 500
    python bench/quality.py genrec    --dataset toys --max-users 2000 --num-beams 20 --batch-size 8 --eval-max-len 1024
    python bench/quality.py report    --dataset toys --commands "..." --notes "..."
    python bench/quality.py --render                          # the .md files from their JSON, measuring nothing

(the flags of the run in bench/results/quality_toys.md; --eval-max-len 1024 works around RankUsers
shortening prompts without the catalog titles, see the notes there). ml100k: prepare, baselines
--subsample 0, report.

baselines: pop and SASRec trained once on every user's training part (genrec.rec.baselines, the
code `genrec evaluate model=pop|sasrec` runs: load_sequences, fit, recommend, ranking_metrics), each
user's test ranking computed once, then scored on all users and on the subsample that the genrec
row used (the first N test users by user id, as `genrec evaluate max_users=N` picks them), both
without (the default, the published protocol) and with `exclude_history` (S3-Rec's evaluation code
drops history items from the ranking). SASRec stops early on validation NDCG@10 (the validation
pass never excludes history) or at max_train_s.

sft: `genrec.train.launch.train_sft` (`genrec train-sft`) with the tiny preset from scratch on the
prepared folder, a fixed number of optimizer steps chosen to fit a wall-time budget; its wall time
(tokenizer + token shards + training) is recorded. genrec: `genrec.rec.evaluate.evaluate`
(`genrec evaluate model=checkpoint`) on the final checkpoint: catalog-constrained beam search.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from common import KS, PUBLISHED_TOYS, REPORT_KEYS, RESULTS, ROOT, WORK as BENCH_WORK, add_render_flag, f4, \
    generated_by, metric_cells, render_results, table, versions, write_results

log = logging.getLogger("bench.quality")

WORK = BENCH_WORK / "quality"
DATASETS = {
    "toys": {"config": ROOT / "configs" / "prepare_toys.yaml", "reuse": ROOT / "bench" / "work" / "toys_prepared",
             "name": "Amazon Toys & Games 5-core (data set amazon-toys)"},
    "ml100k": {"config": ROOT / "configs" / "prepare_ml100k.yaml", "reuse": None,
               "name": "MovieLens 100K (data set ml-100k)"},
}


def work_dir(dataset: str) -> Path:
    return WORK / dataset


def prepared_dir(dataset: str) -> Path:
    """bench/work/toys_prepared when it was made from the same config (bar out_dir), else our own."""
    from genrec.config import PrepareConfig
    from genrec.config_loader import load_config, to_dict

    spec = DATASETS[dataset]
    wanted = to_dict(load_config(PrepareConfig, spec["config"]))
    reuse = spec["reuse"]
    if reuse and (reuse / "config.yaml").exists() and (reuse / "test").exists():
        have = to_dict(load_config(PrepareConfig, reuse / "config.yaml"))
        if {k: v for k, v in have.items() if k != "out_dir"} == {k: v for k, v in wanted.items() if k != "out_dir"}:
            return reuse
    return work_dir(dataset) / "prepared"


# ------------------------------------------------------------------------------------ stages
def stage_prepare(args) -> None:
    from genrec.config import PrepareConfig
    from genrec.config_loader import load_config
    from genrec.data.prepare import prepare

    path = prepared_dir(args.dataset)
    if (path / "test").exists():
        log.info("prepared folder %s exists (same config): reused", path)
        return
    cfg = load_config(PrepareConfig, DATASETS[args.dataset]["config"], [f"out_dir={path}"])
    prepare(cfg)


def subsample_users(data_dir: Path, n: int) -> list[str]:
    """The users `genrec evaluate max_users=n` ranks: the first n test rows by user id."""
    rows = pq.read_table(data_dir / "test", columns=["user_id"]).sort_by("user_id")
    ids = rows.column("user_id").to_pylist()
    return ids[:n] if n and len(ids) > n else ids


def stage_baselines(args) -> None:
    import torch

    from genrec.rec.baselines import MostPopular, SASRec, SASRecConfig, load_sequences
    from genrec.rec.metrics import ranking_metrics

    torch.set_num_threads(args.threads)
    data_dir = prepared_dir(args.dataset)
    data = load_sequences(data_dir)
    test_h, test_t = data.test_inputs()
    sub = subsample_users(data_dir, args.subsample) if args.subsample else []
    index = {u: i for i, u in enumerate(data.user_ids)}
    sub_idx = np.array([index[u] for u in sub], np.int64)
    k = max(KS)
    out: dict = {"dataset": args.dataset, "prepared": str(data_dir.relative_to(ROOT)), "users": len(data.sequences),
                 "items": data.num_items, "subsample_users": len(sub_idx),
                 "subsample_rule": f"first {len(sub_idx)} test users by user_id (= genrec evaluate max_users={args.subsample})",
                 "torch_threads": args.threads, "models": {}}

    def score(name: str, ranked: np.ndarray, extra: dict) -> None:
        entry = dict(extra)
        entry["all"] = ranking_metrics(ranked, test_t, ks=KS)
        if len(sub_idx):
            entry["subsample"] = ranking_metrics(ranked[sub_idx], test_t[sub_idx], ks=KS)
        entry["hallucination_rate"] = float((ranked >= data.num_items).mean())  # 0: ids are catalog indices
        out["models"][name] = entry
        log.info("%s: all %s", name, {m: round(entry["all"][m], 4) for m in REPORT_KEYS})

    started = time.time()
    pop = MostPopular(data.num_items).fit(data.training_parts())
    pop_train_s = time.time() - started
    score("pop", pop.recommend(test_h, k=k), {"train_s": round(pop_train_s, 3)})
    pop_x = MostPopular(data.num_items, exclude_history=True).fit(data.training_parts())
    score("pop_exclude_history", pop_x.recommend(test_h, k=k), {"train_s": round(pop_train_s, 3)})

    cfg = SASRecConfig(seed=0, device="cpu", max_train_s=args.sasrec_max_train_s, epochs=args.sasrec_epochs,
                       eval_every=args.sasrec_eval_every)
    valid_h, valid_t = data.valid_inputs()
    sasrec = SASRec(data.num_items, cfg).fit(data.training_parts(), valid_h, valid_t)
    stopped = ("max_train_s" if cfg.max_train_s and sasrec.train_s > cfg.max_train_s and
               len(sasrec.history) < cfg.epochs else "early stopping / epochs")
    common = {"train_s": round(sasrec.train_s, 2), "best_epoch": sasrec.best.get("epoch"),
              "epochs_run": len(sasrec.history), "stopped_by": stopped,
              "valid_at_best": {k2: v for k2, v in sasrec.best.items() if k2.startswith("valid_")},
              "config": dataclasses.asdict(cfg), "history": sasrec.history}
    started = time.time()
    score("sasrec", sasrec.recommend(test_h, k=k), dict(common))
    score("sasrec_exclude_history", sasrec.recommend(test_h, k=k, exclude_history=True),
          {"train_s": common["train_s"], "same_model_as": "sasrec"})
    out["models"]["sasrec"]["eval_s"] = round(time.time() - started, 2)
    path = work_dir(args.dataset) / "baselines.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    log.info("wrote %s", path)


def stage_sft(args) -> None:
    from genrec.config import SFTConfig
    from genrec.train.launch import train_sft

    out = work_dir(args.dataset) / "sft"
    cfg = SFTConfig(data_dir=str(prepared_dir(args.dataset)), out_dir=str(out), model="tiny",
                    max_steps=args.sft_steps, num_workers=args.num_workers,
                    micro_batch_tokens=args.micro_batch_tokens, lr=args.lr, warmup_steps=args.warmup_steps,
                    eval_every=args.sft_eval_every, save_every=0, valid_rows=args.valid_rows, log_every=10, seed=0)
    started = time.time()
    final = train_sft(cfg)
    wall = time.time() - started
    record = {"wall_s": round(wall, 1), "final": final, "config": dataclasses.asdict(cfg),
              "note": "wall_s: the whole train_sft call (Ray start, tokenizer, token shards, training, export)"}
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        record["log"] = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    (work_dir(args.dataset) / "sft.json").write_text(json.dumps(record, indent=2))
    log.info("sft: %s", record["final"])


def stage_genrec(args) -> None:
    from genrec.config import EvaluateConfig
    from genrec.rec.evaluate import evaluate

    out = work_dir(args.dataset) / "genrec_eval"
    cfg = EvaluateConfig(data_dir=str(prepared_dir(args.dataset)), model="checkpoint",
                         checkpoint_dir=str(work_dir(args.dataset) / "sft" / args.checkpoint), out_dir=str(out),
                         split="test", ks=list(KS), top_k=20, num_beams=args.num_beams, max_users=args.max_users,
                         batch_size=args.batch_size, num_actors=args.num_actors, max_len=args.eval_max_len)
    report = evaluate(cfg)
    log.info("genrec: %s users, %s", report["users"], report["metrics"])


# ------------------------------------------------------------------------------------ report
def stage_report(args) -> None:
    ds = args.dataset
    wd = work_dir(ds)
    base = json.loads((wd / "baselines.json").read_text())
    sft = json.loads((wd / "sft.json").read_text()) if (wd / "sft.json").exists() else None
    gen_path = wd / "genrec_eval" / "report.json"
    gen = json.loads(gen_path.read_text()) if (sft and gen_path.exists()) else None

    result: dict = {
        "dataset": DATASETS[ds]["name"], "prepared": base["prepared"], "users": base["users"], "items": base["items"],
        "protocol": "leave-one-out, test target, full ranking over the whole catalog, no sampled negatives",
        "machine": f"{platform.machine()} CPU, 2 cores shared with other jobs; torch {versions('torch')['torch']}",
    }
    if ds == "toys":
        result["published"] = PUBLISHED_TOYS

    def row(entry: dict, scope: str, users: int, **extra) -> dict:
        m = entry[scope]
        r = {k: m[k] for k in REPORT_KEYS}
        r.update({"hallucination_rate": entry["hallucination_rate"], "train_s": entry["train_s"], "users": users})
        r.update(extra)
        return r

    models = base["models"]
    sub_n = base["subsample_users"]
    for name, key in (("pop", "pop"), ("sasrec", "sasrec")):
        result[name] = row(models[key], "all", base["users"], partial=False)
        result[name]["exclude_history"] = False
        if key == "sasrec":
            s = models["sasrec"]
            result[name].update({"best_epoch": s["best_epoch"], "epochs_run": s["epochs_run"], "stopped_by": s["stopped_by"],
                                 "max_train_s": s["config"]["max_train_s"], "loss": s["config"]["loss"],
                                 "eval_every": s["config"]["eval_every"], "torch_threads": base["torch_threads"]})
        result[name]["variants"] = {
            "exclude_history": row(models[f"{key}_exclude_history"], "all", base["users"], exclude_history=True),
        }
        if sub_n:
            result[name]["variants"]["subsample"] = row(models[key], "subsample", sub_n, exclude_history=False)
            result[name]["variants"]["subsample_exclude_history"] = row(
                models[f"{key}_exclude_history"], "subsample", sub_n, exclude_history=True)

    if gen is not None:
        sub_ok = None
        per_user = wd / "genrec_eval" / "per_user.parquet"
        if per_user.exists():
            ids = pq.read_table(per_user, columns=["user_id"]).column("user_id").to_pylist()
            sub_ok = ids == subsample_users(Path(ROOT / base["prepared"]), sub_n) if sub_n else None
        cfg = sft["config"]
        steps = sft["final"].get("step")
        result["genrec"] = {
            **{k: gen["metrics"][k] for k in REPORT_KEYS},
            "hallucination_rate": gen["hallucination_rate"], "train_s": sft["wall_s"], "users": gen["users"],
            "partial": gen["users"] < base["users"],
            "subsample_rule": f"first {gen['users']} test users by user_id (genrec evaluate max_users={gen['users']})",
            "same_users_as_baseline_subsample": sub_ok,
            "sft_steps": steps, "sft_max_steps": cfg["max_steps"],
            "sft_tokens_per_step": cfg["micro_batch_tokens"] * cfg["num_workers"] * cfg["grad_accum"],
            "sft_workers": cfg["num_workers"], "micro_batch_tokens": cfg["micro_batch_tokens"], "lr": cfg["lr"],
            "sft_final": {k: v for k, v in sft["final"].items() if k in ("step", "loss", "valid_loss", "epoch", "tokens")},
            "checkpoint": args.checkpoint, "num_beams": gen["num_beams"], "eval_wall_s": gen["wall_s"],
            "eval_max_len": yaml.safe_load((wd / "genrec_eval" / "config.yaml").read_text())["max_len"],
            "hr@20": gen["metrics"].get("hr@20"), "ndcg@20": gen["metrics"].get("ndcg@20"),
            "items_returned_per_user": gen.get("items_returned_per_user"), "coverage@10": gen.get("coverage@10"),
            "model": f"tiny Llama preset (hidden {cfg['tiny_hidden']}, {cfg['tiny_layers']} layers, {cfg['tiny_heads']} heads, "
                     f"BPE vocab {cfg['vocab_size']}) trained from scratch",
        }
    else:
        result["genrec"] = None
    result["notes"] = args.notes
    result["commands"] = args.commands
    out_json = RESULTS / f"quality_{ds}.json"
    write_results(out_json, result, render_markdown)
    log.info("wrote %s and .md", out_json)


# ------------------------------------------------------------------------------------ markdown
# quality_<dataset>.json is written by `report` and extended by bench/quality_gpu.py (`merge`,
# `merge-smollm2`); the markdown renders whatever of these keys the file holds:
#   pop, sasrec                          this script's baselines (with their exclude_history and subsample variants)
#   genrec*, genrec_history.*            genrec rows: any entry with ranking metrics and a user count
#   genrec_variants*                     format=sequence variants trained on one GPU (bench/quality_gpu.py)
#   genrec_weights_and_scoring_selection, genrec_label_smoothing   two bench/quality_gpu.py studies
#   decoding_first_300_users             constrained / unconstrained / grounded decoding of one checkpoint
METRIC_KEYS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "hr@20")
ROW_HEADER = ["row", "users", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "HR@20", "hallucination", "train_s"]
# Fields of a genrec row that its table line shows: left out of its description.
SHOWN = {"hr@1", "hr@5", "hr@10", "hr@20", "ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "hallucination_rate", "users",
         "train_s", "partial", "commands"}


def _num(v) -> str:
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def _value(v) -> str:
    """A JSON value as prose: dicts as `key value` pairs, lists of step records as `step: value` pairs."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        if v and isinstance(v[0], dict) and "step" in v[0]:
            return "; ".join(f"step {r['step']}: " + ", ".join(f"{k} {_num(x)}" for k, x in r.items() if k != "step")
                             for r in v)
        return ", ".join(_value(x) for x in v)
    return _num(v)


def genrec_rows(r: dict) -> list[tuple[str, dict]]:
    """(name, entry) of every genrec row: top-level `genrec*` entries with metrics, then genrec_history's."""
    rows = [(k, v) for k, v in r.items() if k.startswith("genrec") and isinstance(v, dict) and "hr@10" in v and "users" in v]
    rows += [(f"genrec_history.{k}", v) for k, v in (r.get("genrec_history") or {}).items()]
    return rows


def _row(label: str, x: dict) -> list[str]:
    hall = x.get("hallucination_rate")
    return [label, f"{x['users']:,}", *metric_cells(x, METRIC_KEYS), "" if hall is None else f"{hall:.2%}",
            "" if x.get("train_s") is None else f"{x['train_s']:.1f}"]


def _baseline_rows(r: dict, scope: str) -> list[list[str]]:
    suffix = "" if scope == "all" else "subsample"
    rows = []
    for name in ("pop", "sasrec"):
        same = " (same model)" if name == "sasrec" else ""
        plain = r[name] if scope == "all" else r[name]["variants"].get("subsample")
        excluded = r[name]["variants"].get("exclude_history" if scope == "all" else f"{suffix}_exclude_history")
        if plain:
            rows.append(_row(name, plain))
        if excluded:
            rows.append(_row(f"{name}, exclude_history{same}", excluded))
    return rows


def _describe(entry: dict) -> list[str]:
    """A genrec row's own fields (all but those its table line shows), then its commands."""
    text = "; ".join(f"{k}: {_value(v)}" for k, v in entry.items() if k not in SHOWN and v is not None)
    lines = [text] if text else []
    commands = entry.get("commands") or []
    return lines + [""] + [f"      {c}" for c in commands] if commands else lines


def _variants_table(variants: dict) -> list[str]:
    rows = []
    for name, v in variants.items():
        if not isinstance(v, dict):
            continue
        test = v.get("test") or {}
        valid = "" if v.get("valid_hr@10") is None else (
            f"{v['valid_hr@10']:.4f}" + (f" ({v['valid_users']:,})" if v.get("valid_users") else ""))
        loss = (f"{v['best_valid_loss']:.3f}" if v.get("best_valid_loss") is not None else
                f"(final {v['final_valid_loss']:.3f})" if v.get("final_valid_loss") is not None else "")
        shape = f"h{v['hidden']} x {v['layers']}" if v.get("hidden") else ""
        regular = ", ".join(f"{label} {v[k]:g}" for k, label in (("attn_dropout", "attention dropout"),
                                                                 ("embed_dropout", "embedding dropout"),
                                                                 ("weight_decay", "wd"), ("label_smoothing", "smoothing"))
                            if v.get(k))
        rows.append([name, shape, "" if v.get("lr") is None else f"{v['lr']:g}", regular,
                     "" if v.get("params") is None else f"{v['params'] / 1e6:.1f}M",
                     "" if v.get("steps") is None else f"{v['steps']:,} ({v['epochs']:.1f})",
                     "" if v.get("train_s") is None else f"{v['train_s']:.1f}", v.get("best_step", ""), loss, valid,
                     f4(v.get("valid_ndcg@10")), *metric_cells(test, METRIC_KEYS),
                     "; ".join(str(v[k]) for k in ("scoring", "source") if v.get(k))])
    return table(["variant", "shape", "lr", "regularisation", "params", "steps (epochs)", "train_s", "best step",
                  "best valid loss", "valid HR@10 (users)", "valid NDCG@10", "test HR@5", "test HR@10", "test NDCG@5",
                  "test NDCG@10", "test HR@20", "note"], rows, "llrlrrrrrrrrrrrrl")


def _commands(entry: dict) -> list[str]:
    commands = entry.get("commands") or ([entry["command"]] if entry.get("command") else [])
    return ["Commands:", "", *[f"    {c}" for c in commands], ""] if commands else []


def _gpu_sections(r: dict) -> list[str]:
    keys = [k for k in r if k.startswith("genrec_variants")]
    lines = []
    if keys:
        lines += ["## genrec `format=sequence` variants on one GPU (bench/quality_gpu.py)", "",
                  "`SFTConfig.format=sequence` trains one row per user (prepare with `samples_per_user=1`, `history_len=50`): "
                  "the instruction, then every training title as its own token ids ending in eos, loss on every title after "
                  "the first. The loop is genrec.train.sft.train_loop (what `genrec train-sft` runs in each Ray Train worker), "
                  "the scorer genrec.rec.beam.constrained_beam_search (20 beams, top 20, length_penalty 0), prompts built by "
                  "genrec.data.tokenize.prompt_ids as training built them. Validation HR@10 is on the first validation users "
                  "by user id (their count in brackets); the test columns are on all test users.", ""]
    for key in keys:
        block = r[key]
        lines += [f"### `{key}`", ""]
        if block.get("setup") or block.get("note"):
            lines += [block.get("setup") or block["note"], ""]
        lines += _commands(block) + _variants_table(block) + [""]
    sel = r.get("genrec_weights_and_scoring_selection")
    if sel:
        t = sel["test"]
        lines += ["### `genrec_weights_and_scoring_selection`", "",
                  f"{sel['device']}: {sel['steps']} steps, {sel['train_s']} s of training, best validation loss "
                  f"{sel['best_valid_loss']:.3f} at step {sel['best_step']}. Candidate weights: `best_loss` (the best "
                  f"validation loss), `last` (the last step) and `soup3` (the mean of the states at steps "
                  f"{', '.join(map(str, sel['soup3_steps']))}); scorings: `b20` (20 beams), `b20r` (20 beams, each step "
                  "renormalised over the tokens the trie allows, `genrec evaluate renormalize=true`), `b40` (40 beams). "
                  "Each ranks the first validation users; the best validation HR@10 is scored on the test split.", ""]
        lines += _commands(sel)
        lines += table(["weights", "scoring", "users", "valid HR@5", "valid HR@10", "valid NDCG@10", "valid HR@20",
                        "coverage@10", "eval_s"],
                       [[x["weights"], x["scoring"], f"{x['users']:,}", *metric_cells(x, ("hr@5", "hr@10", "ndcg@10", "hr@20")),
                         "" if x.get("coverage@10") is None else f"{x['coverage@10']:.2f}", f"{x['eval_s']:.1f}"]
                        for x in sel["selection"]], "llrrrrrrr")
        lines += ["", f"Picked: {sel['picked']['weights']} with {sel['picked']['scoring']}. Test, all {t['users']:,} users "
                      f"({t['eval_s']:.0f} s): HR@5 {f4(t['hr@5'])}, HR@10 {f4(t['hr@10'])}, NDCG@5 {f4(t['ndcg@5'])}, "
                      f"NDCG@10 {f4(t['ndcg@10'])}, HR@20 {f4(t['hr@20'])}, hallucination {t['hallucination_rate']:.2%}, "
                      f"coverage@10 {t['coverage_at_10']:.3f}.", ""]
    smooth = r.get("genrec_label_smoothing")
    if smooth:
        variants = {k: v for k, v in smooth.items() if isinstance(v, dict) and "valid" in v}
        lines += ["### `genrec_label_smoothing`", "",
                  f"{smooth.get('device', '')}. Validation only; label smoothing changes the training loss alone, so the "
                  "validation losses of the two are not comparable.", ""]
        lines += _commands(smooth)
        lines += table(["variant", "label smoothing", "steps", "train_s", "best step", "best valid loss", "users",
                        "valid HR@5", "valid HR@10", "valid HR@20", "valid NDCG@10", "coverage@10"],
                       [[n, v["label_smoothing"], v["steps"], v["train_s"], v["best_step"], f"{v['best_valid_loss']:.3f}",
                         f"{v['valid']['users']:,}", *metric_cells(v["valid"], ("hr@5", "hr@10", "hr@20", "ndcg@10")),
                         f"{v['valid']['coverage_at_10']:.3f}"] for n, v in variants.items()])
        paired = smooth.get("paired_hits") or {}
        if paired:
            names = list(variants)
            lines += ["", "Paired on the same users (hits; hits by one variant only): " + "; ".join(
                f"{metric}: " + ", ".join(f"{n} {h[n]} ({h['only_' + n]} only)" for n in names)
                for metric, h in paired.items()) + "."]
        lines.append("")
    return lines


def _decoding_section(d: dict) -> list[str]:
    lines = [f"## Constrained, unconstrained and grounded decoding (first {d['users']} {d['split']} users)", "",
             f"One checkpoint ({d['checkpoint']}), prepared folder {d['prepared']}, {d['num_beams']} beams, top "
             f"{d['top_k']}; {d['machine']}. `constrained`: beam search over the catalog trie. `unconstrained`: free beam "
             "search, a title counts only when it is exactly a catalog title. `grounded`: the same free beams, each title "
             "mapped to its nearest catalog item by embedding (BIGRec, genrec/rec/grounding.py). `hallucination`: share of "
             "returned slots naming no catalog item; `generated`: the same share among the raw generated titles.", ""]
    rows = []
    for name, x in d["runs"].items():
        gen = x.get("generated_hallucination_rate", x["hallucination_rate"] if name == "unconstrained" else None)
        rows.append([name, *metric_cells(x, ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "hr@20", "ndcg@20")),
                     f"{x['hallucination_rate']:.2%}", "" if gen is None else f"{gen:.2%}",
                     f"{x['items_returned_per_user']:.1f}", f"{x['coverage@10']:.3f}", f"{x['eval_wall_s']:.0f}"])
    lines += table(["decoding", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "HR@20", "NDCG@20", "hallucination", "generated",
                    "items/user", "coverage@10", "eval wall s"], rows)
    for name, x in d["runs"].items():
        u = x.get("unmatched_titles")
        if u:
            lines += ["", f"`{name}`: of the generated titles naming no catalog item, {u['share_real_title_wrong_year']:.0%} "
                          f"are a catalog title with another year; examples: " + ", ".join(f"`{t}`" for t in u["examples"]) + "."]
    lines += ["", "Commands (in this order):", ""] + [f"    {x['command']}" for x in d["runs"].values() if x.get("command")]
    lines += ["", d["note"], ""] if d.get("note") else [""]
    return lines


def render_markdown(r: dict) -> str:
    lines = [f"# Recommendation quality: {r['dataset']}", "",
             generated_by("python bench/quality.py --render"), "",
             f"{r['protocol']}; {r['users']:,} users, {r['items']:,} items (prepared folder {r['prepared']}). "
             f"Machine of the baselines: {r['machine']}.", ""]
    if r.get("published"):
        p = r["published"]
        lines += ["Published on this split (HR@10 / NDCG@10): " + "; ".join(
            f"{name.upper() if name == 'tiger' else 'SASRec' if name == 'sasrec' else name} {f4(m['hr@10'])} / "
            f"{f4(m['ndcg@10'])}" for name, m in p.items()) + ".", ""]
    rows = genrec_rows(r)
    lines += ["## All users", ""]
    lines += table(ROW_HEADER, _baseline_rows(r, "all") + [_row(f"`{n}`", x) for n, x in rows if x["users"] == r["users"]])
    lines.append("")
    sub = r["pop"]["variants"].get("subsample")
    if sub:
        lines += [f"## Subsample: the first {sub['users']:,} test users by user id (every row on the same users)", ""]
        lines += table(ROW_HEADER, _baseline_rows(r, "subsample")
                       + [_row(f"`{n}`", x) for n, x in rows if x["users"] == sub["users"]])
        lines.append("")
    others = [(n, x) for n, x in rows if x["users"] not in (r["users"], sub and sub["users"])]
    if others:
        lines += ["## Other user counts", ""] + table(ROW_HEADER, [_row(f"`{n}`", x) for n, x in others]) + [""]
    s = r["sasrec"]
    lines += ["## Rows", "",
              "- **pop**: `genrec.rec.baselines.MostPopular`, counts over the training parts (validation and test "
              "targets never count); the same list for every user. `exclude_history` drops each user's history items.",
              f"- **sasrec**: `genrec.rec.baselines.SASRec` on CPU (hidden 64, 2 blocks, 1 head, dropout 0.2, max_len 50, "
              f"loss {s['loss']}, Adam 1e-3, batch 128), validation NDCG@10 every {s['eval_every']} epochs, early stopping "
              f"after 10 passes without gain, max_train_s={s['max_train_s']}, {s.get('torch_threads', 1)} torch thread(s): "
              f"ran {s['epochs_run']} epochs, best epoch {s['best_epoch']}, stopped by {s['stopped_by']}; train_s includes "
              "its validation passes. The `exclude_history` row is the same trained model with each user's history items "
              "removed from the ranking (S3-Rec's evaluation code does this; the published protocol and `genrec "
              "evaluate`'s default do not).",
              "- Hallucination for pop and SASRec is 0 by construction: they score catalog indices."]
    for name, g in rows:
        if "sft_final" in g:  # a row of this script's own sft and genrec stages
            f = g["sft_final"]
            lines += [
                f"- `{name}`: {g['model']}, `genrec train-sft` (genrec.train.launch.train_sft) for {g['sft_steps']} optimizer "
                f"steps (of max_steps {g.get('sft_max_steps', g['sft_steps'])}) of {g['sft_workers']} DDP CPU workers x "
                f"{g['micro_batch_tokens']} packed tokens ({g['sft_tokens_per_step']:,} token slots a step), lr {g['lr']}, "
                f"cosine schedule; final train loss {f.get('loss', float('nan')):.3f}, validation loss "
                f"{f.get('valid_loss', float('nan')):.3f}. train_s = {g['train_s']:.0f} s is the wall time of the whole "
                "train_sft call (Ray start, tokenizer and token shards unless already built, training, export). Scored by "
                f"`genrec evaluate model=checkpoint` on the `{g['checkpoint']}` checkpoint: catalog-constrained beam search, "
                f"{g['num_beams']} beams, top 20, length_penalty 0, max_len {g['eval_max_len']}, on the first "
                f"{g['users']:,} test users by user id (eval wall {g['eval_wall_s']:.0f} s; the same users as the "
                f"baselines' subsample: {g['same_users_as_baseline_subsample']}); items returned per user "
                f"{g['items_returned_per_user']}, catalog coverage@10 {g['coverage@10']:.4f}."]
        else:
            lines += [f"- `{name}`: " + "\n".join(_describe(g))]
    lines += [f"- {n}" for n in r.get("notes") or []]
    lines += [""] + _commands(r)
    lines += _gpu_sections(r)
    if r.get("decoding_first_300_users"):
        lines += _decoding_section(r["decoding_first_300_users"])
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["prepare", "baselines", "sft", "genrec", "report"])
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None, help="default: toys (--render: every data set)")
    p.add_argument("--subsample", type=int, default=2000, help="baselines: also score the first N test users by id")
    p.add_argument("--sasrec-max-train-s", type=float, default=300.0)
    p.add_argument("--sasrec-epochs", type=int, default=200)
    p.add_argument("--sasrec-eval-every", type=int, default=1, help="epochs between validation passes")
    p.add_argument("--threads", type=int, default=2, help="baselines: torch threads")
    p.add_argument("--sft-steps", type=int, default=200)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--micro-batch-tokens", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--valid-rows", type=int, default=1000)
    p.add_argument("--sft-eval-every", type=int, default=0, help="sft: steps between validation passes (best/ is exported at each gain)")
    p.add_argument("--checkpoint", default="final", help="genrec: sft/<this> (final or best)")
    p.add_argument("--max-users", type=int, default=2000)
    p.add_argument("--num-beams", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--eval-max-len", type=int, default=512, help="genrec: EvaluateConfig.max_len (prompt budget = this - longest title + 1)")
    p.add_argument("--commands", nargs="*", default=[], help="report: the command lines to list")
    p.add_argument("--notes", nargs="*", default=[], help="report: extra notes on how the run went")
    add_render_flag(p, "bench/results/quality_<dataset>.md")
    args = p.parse_args(argv)
    if args.render:
        for ds in [args.dataset] if args.dataset else DATASETS:
            if (RESULTS / f"quality_{ds}.json").exists():
                render_results(RESULTS / f"quality_{ds}.json", render_markdown)
        return 0
    if args.stage is None:
        p.error("a stage, or --render")
    args.dataset = args.dataset or "toys"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    {"prepare": stage_prepare, "baselines": stage_baselines, "sft": stage_sft, "genrec": stage_genrec,
     "report": stage_report}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
