"""The recommender behind `POST /v1/recommend`, as a plain class (no Ray): Serve's Recommender
deployment wraps it, and the benchmark's plain FastAPI server calls it directly.

It loads the checkpoint and builds the catalog trie exactly as evaluation does (genrec.rec.evaluate
RankUsers: same loader, same trie, same template and prompt format the checkpoint records), builds
each prompt with `genrec.data.tokenize.prompt_ids` as training and evaluation do, and ranks with
constrained beam search (an `item_tokens` model: one softmax over its item tokens), so every answer
is a catalog item.

A request goes through two steps: `check` (cheap, per request: resolve ids or titles, apply the
history policy) and `rank` (one ranking call for a whole batch of checked requests).

CatalogSearch is the type-ahead behind `GET /v1/catalog/search`: ids and titles only, no model.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import yaml

from genrec.config import EvaluateConfig, RecommenderServeConfig
from genrec.storage import fetch, join, localize, shown

log = logging.getLogger("genrec.serve")


@dataclasses.dataclass
class Rejection:
    """A request the recommender cannot answer: an HTTP status and a message naming the field."""

    status: int
    detail: str

    def as_dict(self) -> dict:
        return {"error": {"status": self.status, "detail": self.detail}}


@dataclasses.dataclass
class Checked:
    """A request ready to rank: catalog indices of its history (oldest first) and what to return."""

    history: list[int]
    k: int
    exclude_history: bool
    truncated: int  # oldest history items left out under long_history=truncate

    @property
    def needed(self) -> int:
        """Items the beam search must find so that k remain after dropping the history."""
        return self.k + (len(set(self.history)) if self.exclude_history else 0)


class RecommenderModel:
    """A checkpoint, its catalog and trie, loaded once; answers batches of checked requests."""

    def __init__(self, cfg: RecommenderServeConfig) -> None:
        from genrec.rec.evaluate import RankUsers

        self.cfg = cfg
        data, checkpoint = fetch(cfg.data_dir), fetch(cfg.checkpoint_dir)  # this node's copies of URIs
        catalog_path = data / "catalog.parquet"
        if not catalog_path.exists():
            raise FileNotFoundError(f"recommender.data_dir: {catalog_path} is missing (run `genrec prepare`)")
        # Loading through evaluation's own ranker keeps one definition of model + trie + prompt format.
        ranker = RankUsers(str(checkpoint), str(catalog_path),
                           EvaluateConfig(max_len=cfg.max_len, top_k=1, num_beams=1, ks=[1]))
        self.ranker = ranker
        self.model, self.tokenizer, self.trie = ranker.model, ranker.tokenizer, ranker.trie
        self.template, self.format = ranker.template, ranker.format
        self.titles_by_id: dict[str, str] = ranker.titles_by_id
        self.item_ids: list[str] = list(self.titles_by_id)  # catalog order = trie item index
        self.titles: list[str] = list(self.titles_by_id.values())
        self.index_of_id = {item: index for index, item in enumerate(self.item_ids)}
        self.index_of_title = ranker.title_index
        self.instruction = self._instruction(data)
        self.meta = json.loads((checkpoint / "genrec.json").read_text())
        self.popularity = self._popularity(data) if cfg.empty_history == "popular" else None
        if ranker.item_tokens is None and self.trie.max_depth >= cfg.max_len:
            raise ValueError(f"recommender.max_len={cfg.max_len} leaves no room for a prompt beside the "
                             f"longest title ({self.trie.max_depth} tokens)")
        log.info("recommender: %s, %d catalog items, device %s", cfg.checkpoint_dir, len(self.item_ids),
                 self.model.device)

    # ---------------------------------------------------------------------------- loading helpers
    def _instruction(self, data: Path) -> str:
        """The domain's paraphrase the data were prepared with (prepare writes its config.yaml)."""
        domain = "generic"
        if (data / "config.yaml").exists():
            domain = (yaml.safe_load((data / "config.yaml").read_text()) or {}).get("domain", domain)
        choices = self.template.instructions_for(domain)
        if not 0 <= self.cfg.instruction_index < len(choices):
            raise ValueError(f"recommender.instruction_index: {self.cfg.instruction_index} is not in "
                             f"0..{len(choices) - 1} (domain {domain!r})")
        return choices[self.cfg.instruction_index]

    def _popularity(self, data: Path) -> np.ndarray:
        """Training interactions per catalog item, counted as the most-popular baseline counts them."""
        from genrec.rec.baselines import MostPopular, load_sequences

        sequences = load_sequences(data)
        if sequences.item_ids != self.item_ids:
            raise ValueError(f"{data}: catalog.parquet disagrees with the catalog the prepared rows name")
        return MostPopular(len(self.item_ids)).fit(sequences.training_parts()).counts

    # ------------------------------------------------------------------------------------ requests
    def check(self, history: list, k: int, exclude_history: bool) -> Checked | Rejection:
        """Resolve each history entry (an item id first, else an exact title) and apply the policies."""
        history = [str(entry) for entry in history]
        truncated = 0
        if len(history) > self.cfg.max_history:
            if self.cfg.long_history == "reject":
                return Rejection(413, f"history: {len(history)} items, over the limit of {self.cfg.max_history}")
            truncated = len(history) - self.cfg.max_history
            history = history[truncated:]  # the most recent items are the ones that predict the next
        indices, unknown = [], []
        for entry in history:
            index = self.index_of_id.get(entry, self.index_of_title.get(entry))
            if index is None:
                unknown.append(entry)
            else:
                indices.append(index)
        if unknown:
            shown = ", ".join(repr(u[:80]) for u in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            return Rejection(422, f"history: unknown item ids or titles: {shown}{more}")
        if not indices and self.popularity is None:
            return Rejection(422, "history: empty; send at least one item id or title")
        if k > len(self.item_ids):
            return Rejection(422, f"k: {k} is more than the {len(self.item_ids)} catalog items")
        if exclude_history and len(self.item_ids) - len(set(indices)) < k:
            return Rejection(422, f"k: {k} items cannot be found outside the history "
                                  f"({len(self.item_ids)} catalog items, {len(set(indices))} in the history)")
        return Checked(indices, k, exclude_history, truncated)

    def rank(self, batch: list[Checked]) -> list[dict]:
        """One constrained beam search for the whole batch; a response body per request."""
        results: list[dict | None] = [None] * len(batch)
        to_rank = []
        for position, request in enumerate(batch):
            if request.history:
                to_rank.append(position)
            else:
                results[position] = self._popular(request)
        if to_rank:
            rows = [self._row(batch[p].history) for p in to_rank]
            prompts = self.ranker.prompts(rows, self.cfg.max_len)
            top_k = min(max(batch[p].needed for p in to_rank), len(self.item_ids))
            items, scores = self.ranker.rank(prompts, top_k, max(self.cfg.num_beams, top_k), self.cfg.length_penalty,
                                             self.cfg.renormalize)
            for row, position in enumerate(to_rank):
                results[position] = self._answer(batch[position], items[row], scores[row])
        return results  # type: ignore[return-value]

    def _row(self, history: list[int]) -> dict:
        """A prompt row in the prepared format (what `genrec prepare` writes), minus the target."""
        ids = [self.item_ids[i] for i in history]
        return {"instruction": self.instruction, "input": self.template.separator.join(self.titles[i] for i in history),
                "output": "", "history_item_ids": ids, "user_id": "request", "position": len(ids)}

    def _answer(self, request: Checked, items: np.ndarray, scores: np.ndarray) -> dict:
        excluded = set(request.history) if request.exclude_history else set()
        chosen = [(int(i), float(s)) for i, s in zip(items, scores) if i >= 0 and int(i) not in excluded]
        return self._body(request, chosen[: request.k], "model")

    def _popular(self, request: Checked) -> dict:
        order = np.argsort(-self.popularity, kind="stable")[: request.k]
        share = self.popularity / max(1, int(self.popularity.sum()))
        return self._body(request, [(int(i), float(share[i])) for i in order], "popularity")

    def _body(self, request: Checked, chosen: list[tuple[int, float]], source: str) -> dict:
        return {
            "items": [{"item_id": self.item_ids[i], "title": self.titles[i], "score": s} for i, s in chosen],
            "source": source,
            "history_used": len(request.history),
            "history_truncated": request.truncated,
        }

    def info(self) -> dict:
        """What /v1/models shows: the checkpoint, its training metrics and its evaluation report."""
        report = None
        if self.cfg.report_path and (path := localize(self.cfg.report_path)).exists():
            loaded = json.loads(path.read_text())
            report = {k: loaded.get(k) for k in ("split", "users", "metrics", "hallucination_rate", "decoding")}
        return {
            "checkpoint": shown(self.cfg.checkpoint_dir),
            "catalog": shown(join(self.cfg.data_dir, "catalog.parquet")),
            "catalog_items": len(self.item_ids),
            "stage": self.meta.get("stage"),
            "base_model": self.meta.get("base_model") or self.meta.get("config", {}).get("model"),
            "prompt_format": self.format,
            "item_tokens": self.ranker.item_tokens is not None,
            "training_metrics": self.meta.get("metrics", {}),
            "evaluation": report,
            "device": str(self.model.device),
            "empty_history": self.cfg.empty_history,
        }


class CatalogSearch:
    """Type-ahead over the catalog: the items whose id or title matches what was typed so far.

    Matching ignores case and runs of whitespace. The answer lists, in this order and without
    repeats: the item whose id is the query, items whose id starts with it, items whose title starts
    with it (both alphabetically, by bisection over sorted keys), then items whose title contains it
    (catalog order). The substring step scans one string holding every title, so a query costs one
    C-level `str.find` per hit rather than a Python loop over the catalog; it stops at `limit` hits.
    """

    def __init__(self, item_ids: list[str], titles: list[str]) -> None:
        self.item_ids, self.titles = list(item_ids), list(titles)
        title_keys = [normalize(t) for t in self.titles]  # never holds "\n" (normalize splits on it)
        id_keys = [normalize(i) for i in self.item_ids]
        self.index_of_id = {key: index for index, key in enumerate(id_keys)}
        self.ids_sorted = sorted((key, index) for index, key in enumerate(id_keys))
        self.titles_sorted = sorted((key, index) for index, key in enumerate(title_keys))
        self.text = "\n".join(title_keys)
        self.starts = np.cumsum([0] + [len(key) + 1 for key in title_keys])  # where each title begins in text

    @classmethod
    def from_parquet(cls, path: str | Path) -> "CatalogSearch":
        import pyarrow.parquet as pq

        catalog = pq.read_table(path, columns=["item_id", "title"])  # the columns RankUsers reads
        return cls([str(i) for i in catalog.column("item_id").to_pylist()], catalog.column("title").to_pylist())

    def search(self, query: str, limit: int) -> list[dict]:
        """Up to `limit` catalog items [{item_id, title}] for the query, best matches first."""
        q = normalize(query)
        if not q:
            return []
        found: dict[int, None] = {}  # an ordered set of catalog indices
        if q in self.index_of_id:
            found[self.index_of_id[q]] = None
        for keys in (self.ids_sorted, self.titles_sorted):
            position = bisect.bisect_left(keys, (q, -1))
            while position < len(keys) and len(found) < limit and keys[position][0].startswith(q):
                found.setdefault(keys[position][1], None)
                position += 1
        start = 0
        while len(found) < limit:
            hit = self.text.find(q, start)
            if hit < 0:
                break
            index = int(np.searchsorted(self.starts, hit, side="right")) - 1
            found.setdefault(index, None)
            start = int(self.starts[index + 1])  # one hit per title: go on from the next one
        return [{"item_id": self.item_ids[i], "title": self.titles[i]} for i in list(found)[:limit]]


def normalize(text: str) -> str:
    """Lower case (casefold) with every run of whitespace as one space: the form both sides match in."""
    return " ".join(text.casefold().split())
