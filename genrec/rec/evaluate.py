"""`genrec evaluate`: full-catalog ranking metrics for a generative checkpoint or a baseline.

Generative models rank with catalog-constrained beam search (genrec/rec/beam.py) over the trie of
the exact token sequences used in training (`response_ids`), so every returned item is a catalog
item; `decoding=unconstrained` runs plain beam search instead and scores it as GenRec did (exact
title match), with the hallucination rate: the share of returned titles that name no item;
`decoding=grounded` runs the same beam search and maps each title to its nearest catalog item by
embedding, as BIGRec does (genrec/rec/grounding.py), reporting the raw titles' hallucination rate
beside that of the grounded items (0). Users are spread over a Ray Data actor pool: each actor loads
the model and builds the trie (and the grounding index) once, then ranks batches of users.
Baselines (`model=pop`, `model=sasrec`) run in the same split and the same metric code. Outputs in
out_dir: `per_user.parquet` (ranked item ids and scores per user, so a run can be rescored; free
decoding adds `generated_titles`, grounding `similarity`), `report.json` and `report.md`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from genrec.config import EvaluateConfig

from genrec.config_loader import save_config
from genrec.data.templates import get_template
from genrec.rec.metrics import catalog_coverage, ranking_metrics
from genrec.runtime import init_ray
from genrec.storage import Mirror, fetch, fetch_file, join

log = logging.getLogger("genrec.evaluate")

class RankUsers:
    """Ray Data UDF: load the checkpoint and its catalog trie once, rank a batch of users per call."""

    def __init__(self, checkpoint: str, catalog_path: str, cfg: EvaluateConfig) -> None:
        import torch

        from genrec.data.item_tokens import catalog_token_ids, item_token_ids
        from genrec.data.tokenize import batch_response_ids
        from genrec.models.loading import load_checkpoint
        from genrec.rec.trie import CatalogTrie

        device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint, catalog_path = str(fetch(checkpoint)), str(fetch_file(catalog_path))  # this node's copies
        self.model, self.tokenizer, meta = load_checkpoint(checkpoint, device=device)
        self.model.eval()
        trained = meta.get("config", {})
        self.format = trained.get("format", "prompt")  # build prompts as this model was trained on them
        catalog = pq.read_table(catalog_path, columns=["item_id", "title"])
        titles, ids = catalog.column("title").to_pylist(), catalog.column("item_id").to_pylist()
        self.title_index = {title: index for index, title in enumerate(titles)}
        self.titles_by_id = dict(zip(ids, titles))  # to drop whole titles from long prompts, even with ", " in them
        self.trie = CatalogTrie.build(batch_response_ids(self.tokenizer, titles), self.tokenizer.eos_token_id)
        # An item_tokens model ranks by one softmax over its item tokens (genrec/rec/item_rank.py).
        self.item_tokens = catalog_token_ids(self.tokenizer, ids) if item_token_ids(self.tokenizer) else None
        if self.item_tokens is not None and cfg.decoding != "constrained":
            raise ValueError(f"decoding={cfg.decoding}: an item_tokens model writes item tokens, not free titles; "
                             "use decoding=constrained")
        self.cfg = cfg
        self.template = get_template(trained.get("template", "genrec"))
        self.grounder = None
        if cfg.decoding == "grounded":
            from genrec.rec.grounding import Grounder

            self.grounder = Grounder(titles, cfg.grounding_embedder, model=self.model, tokenizer=self.tokenizer)

    def prompts(self, rows: list[dict], max_len: int) -> list[list[int]]:
        """The prompts as training built them, their oldest titles dropped until the answer fits in
        max_len: the longest title, or one item token."""
        from genrec.data.tokenize import prompt_ids

        budget = max_len - (1 if self.item_tokens is not None else self.trie.max_depth)
        return prompt_ids(self.tokenizer, self.template, rows, budget, self.titles_by_id, self.format)

    def rank(self, prompts: list[list[int]], top_k: int, num_beams: int, length_penalty: float,
             renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) per prompt: constrained beam search over the trie, or for an item_tokens
        model the softmax over item tokens (what renormalised beam search over its trie ranks by)."""
        from genrec.rec.beam import constrained_beam_search
        from genrec.rec.item_rank import rank_by_item_tokens

        if self.item_tokens is not None:
            return rank_by_item_tokens(self.model, prompts, self.item_tokens, top_k=top_k,
                                       pad_id=self.tokenizer.pad_token_id)
        return constrained_beam_search(self.model, prompts, self.trie, num_beams=num_beams, top_k=top_k,
                                       pad_id=self.tokenizer.pad_token_id, length_penalty=length_penalty,
                                       renormalize=renormalize)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = self.prompts(batch.to_pylist(), self.cfg.max_len)
        columns = {"user_id": batch.column("user_id"), "target_item_id": batch.column("target_item_id")}
        if self.cfg.decoding == "constrained":
            items, scores = self.rank(prompts, self.cfg.top_k, self.cfg.num_beams, self.cfg.length_penalty,
                                      self.cfg.renormalize)
        else:
            items, scores, texts = self._free_beam_search(prompts)
            columns["generated_titles"] = pa.array(texts, pa.list_(pa.string()))
            if self.grounder is not None:
                # scores stay the beams' log-probabilities; similarity: each item's cosine to its text
                items, similarity = self.grounder.ground(texts, self.cfg.top_k)
                columns["similarity"] = pa.array(similarity.tolist(), pa.list_(pa.float32()))
        columns["ranked_items"] = pa.array(items.tolist(), pa.list_(pa.int64()))
        columns["scores"] = pa.array(scores.tolist(), pa.list_(pa.float32()))
        return pa.table(columns)

    def _free_beam_search(self, prompts: list[list[int]]):
        """Unconstrained beam search as GenRec scored it: transformers' `generate`, and a returned
        title counts only if it is exactly a catalog title (-1 otherwise: a hallucinated item)."""
        import torch

        n, k, pad = len(prompts), self.cfg.top_k, self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=attention, num_beams=self.cfg.num_beams, num_return_sequences=k,
                max_new_tokens=self.trie.max_depth, length_penalty=self.cfg.length_penalty, do_sample=False,
                early_stopping=True, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id,
                output_scores=True, return_dict_in_generate=True,
            )
        texts = self.tokenizer.batch_decode(out.sequences[:, width:], skip_special_tokens=True)
        scores = out.sequences_scores.float().cpu().numpy().reshape(n, k)
        items = np.full((n, k), -1, dtype=np.int64)
        for user in range(n):
            seen = set()
            for rank in range(k):
                item = self.title_index.get(texts[user * k + rank], -1)
                if item >= 0 and item not in seen:  # a title returned twice counts once
                    items[user, rank] = item
                    seen.add(item)
        return items, scores, [texts[user * k:(user + 1) * k] for user in range(n)]


def evaluate(cfg: EvaluateConfig) -> dict:
    """Rank the split's users, score them, and write the report; returns the report. data_dir,
    checkpoint_dir and out_dir may be object-store URIs (genrec/storage.py)."""
    out_dir = Mirror(cfg.out_dir)
    out = out_dir.local
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    started = time.time()
    if cfg.model != "checkpoint":
        report = _evaluate_baseline(cfg)
    else:
        report = _evaluate_generative(cfg, out)
    report["wall_s"] = round(time.time() - started, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown_report(report))
    out_dir.push(*[name for name in ("config.yaml", "per_user.parquet", "report.md", "report.json") if (out / name).exists()])
    log.info("evaluate %s: %s", cfg.model, {k: v for k, v in report["metrics"].items() if k in ("hr@10", "ndcg@10")})
    return report


def _evaluate_baseline(cfg: EvaluateConfig) -> dict:
    from genrec.rec.baselines import SASRecConfig, evaluate_baseline

    if cfg.split != "test":
        raise ValueError("split: baselines are scored on the test split")
    config = SASRecConfig(epochs=cfg.sasrec_epochs, seed=cfg.seed) if cfg.model == "sasrec" else None
    result = evaluate_baseline(fetch(cfg.data_dir), cfg.model, ks=tuple(cfg.ks), config=config,
                               exclude_history=cfg.exclude_history)
    return {"model": cfg.model, "split": "test", "users": result["users"], "metrics": result["test"],
            "hallucination_rate": 0.0, "train_s": result["train_s"]}


def _evaluate_generative(cfg: EvaluateConfig, out: Path) -> dict:
    init_ray()
    data = fetch(cfg.data_dir)
    rows = pq.read_table(data / cfg.split).sort_by("user_id")
    if cfg.max_users and rows.num_rows > cfg.max_users:
        rows = rows.slice(0, cfg.max_users)  # the same users on every run
    catalog_ids = pq.read_table(data / "catalog.parquet", columns=["item_id"]).column("item_id").combine_chunks()
    use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    ranked = ray.data.from_arrow(rows).map_batches(
        RankUsers,
        fn_constructor_args=(cfg.checkpoint_dir, join(cfg.data_dir, "catalog.parquet"), cfg),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_gpus=1 if use_gpu else 0,
    )
    per_user = pa.concat_tables(ray.get(ranked.to_arrow_refs())).sort_by("user_id")
    pq.write_table(per_user, out / "per_user.parquet")

    ranked_items = np.array(per_user.column("ranked_items").to_pylist(), dtype=np.int64)
    targets = np.asarray(pa.compute.index_in(per_user.column("target_item_id"), value_set=catalog_ids))
    metrics = ranking_metrics(ranked_items, targets, ks=tuple(cfg.ks))
    found = ranked_items >= 0
    extra = {}
    if cfg.decoding == "unconstrained":
        hallucination = _generated_hallucination(per_user, data)
    elif cfg.decoding == "grounded":
        # The raw titles as `unconstrained` scores them, then the grounded slots: each must be a
        # catalog item (0 by construction, measured anyway).
        extra = {"generated_hallucination_rate": _generated_hallucination(per_user, data),
                 "grounding_embedder": cfg.grounding_embedder}
        hallucination = float((~found | (ranked_items >= len(catalog_ids))).mean())
    else:
        # Share of returned ids that name no catalog item: 0 by construction under the trie, measured anyway.
        returned = ranked_items[found]
        hallucination = float((returned >= len(catalog_ids)).mean()) if len(returned) else 0.0
    return {
        "model": cfg.checkpoint_dir, "split": cfg.split, "users": int(per_user.num_rows), "metrics": metrics,
        **ranking_method(cfg), "hallucination_rate": hallucination, **extra,
        "items_returned_per_user": float(found.sum(1).mean()),
        "coverage@10": catalog_coverage(ranked_items, len(catalog_ids), min(10, cfg.top_k)),
    }


RANKINGS = {
    "constrained": "title generation: constrained beam search over the catalog's title trie",
    "unconstrained": "title generation: plain beam search, titles matched to the catalog exactly",
    "grounded": "title generation: plain beam search, each title mapped to its nearest catalog item",
}


def ranking_method(cfg: EvaluateConfig) -> dict:
    """How the ranking was made, as it ran: an item_tokens checkpoint ranks by one softmax over its
    item tokens (no beams, whatever decoding and num_beams say); any other writes titles."""
    meta = json.loads((fetch(cfg.checkpoint_dir) / "genrec.json").read_text())
    if meta.get("config", {}).get("item_tokens"):
        return {"ranking": "item ids: one softmax over the catalog's item tokens"}
    return {"ranking": RANKINGS[cfg.decoding], "decoding": cfg.decoding, "num_beams": cfg.num_beams}


def _generated_hallucination(per_user: pa.Table, data: Path) -> float:
    """Share of the generated titles that are exactly no catalog title."""
    titles = set(pq.read_table(data / "catalog.parquet", columns=["title"]).column("title").to_pylist())
    generated = [t for row in per_user.column("generated_titles").to_pylist() for t in row]
    return float(np.mean([t not in titles for t in generated])) if generated else 0.0


def markdown_report(report: dict) -> str:
    metrics = report["metrics"]
    keys = sorted(metrics, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    lines = [f"# Evaluation: {report['model']} ({report['split']}, {report['users']} users)", "",
             "| " + " | ".join(keys) + " | hallucination |", "|" + " --- |" * (len(keys) + 1),
             "| " + " | ".join(f"{metrics[k]:.4f}" for k in keys) + f" | {report['hallucination_rate']:.2%} |", ""]
    if "ranking" in report:
        lines += [f"Ranking: {report['ranking']}" + (f", {report['num_beams']} beams." if "num_beams" in report else "."), ""]
    if "generated_hallucination_rate" in report:
        lines += [f"Grounded by {report['grounding_embedder']} embeddings: {report['generated_hallucination_rate']:.2%} "
                  "of the generated titles name no catalog item before grounding.", ""]
    return "\n".join(lines)
