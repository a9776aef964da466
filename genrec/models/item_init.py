"""Item-token embeddings that start from what a pretrained text encoder makes of each item's title.

An item_tokens model (genrec/data/item_tokens.py) learns one embedding per catalog item from the
interactions alone, so an item seen a few times in training barely moves from its random start.
With `item_init: <encoder>` each catalog title is encoded by a pretrained model (minilm:
all-MiniLM-L6-v2; a causal-LM preset such as smollm2-135m, or an HF path: its last hidden states),
mean-pooled, and the item rows of the model's embedding start from those vectors, projected to the
model width by PCA (the directions along which the titles differ most) and scaled to the spread of
the other tokens' rows. Items with related titles start near each other, which is what the long tail
has to go on.

The title vectors are computed once per catalog and encoder with Ray Data (an actor holding the
encoder) and cached beside the catalog: <data_dir>/item_text_vectors/<encoder>.parquet, columns
item_id and vector, in catalog order; a cache whose item ids are not the catalog's is rebuilt.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

log = logging.getLogger("genrec.train")


def cache_path(data_dir: str | Path, encoder: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder).strip("_")
    return Path(data_dir) / "item_text_vectors" / f"{slug}.parquet"


class EncodeTitles:
    """Ray Data actor: the encoder loaded once, each batch of titles to mean-pooled vectors."""

    def __init__(self, encoder: str) -> None:
        from genrec.models.embedders import TextEmbedder

        torch.set_num_threads(1)  # one core per actor, as Ray reserves it
        self.embedder = TextEmbedder(encoder, device="cpu", max_len=64)

    def __call__(self, batch: dict) -> dict:
        return {"index": batch["index"], "vector": list(self.embedder.embed(list(batch["title"])))}


def title_vectors(data_dir: str | Path, encoder: str, actors: int = 1) -> Path:
    """The cached vectors of every catalog title under `encoder` (computed when absent or stale);
    returns the cache file."""
    import ray

    catalog = pq.read_table(Path(data_dir) / "catalog.parquet", columns=["item_id", "title"])
    item_ids = [str(i) for i in catalog.column("item_id").to_pylist()]
    path = cache_path(data_dir, encoder)
    if path.exists() and [str(i) for i in pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()] == item_ids:
        return path
    titles = catalog.column("title").to_pylist()
    log.info("item_init: encoding %d catalog titles with %s (Ray Data, %d actor(s))", len(titles), encoder, actors)
    rows = ray.data.from_items([{"index": i, "title": t or " "} for i, t in enumerate(titles)])
    encoded = rows.map_batches(EncodeTitles, fn_constructor_args=(encoder,), batch_size=256, concurrency=actors,
                               num_cpus=1, batch_format="numpy").to_pandas()
    vectors = np.stack(encoded.sort_values("index")["vector"].to_list()).astype(np.float32)
    if len(vectors) != len(item_ids):
        raise RuntimeError(f"item_init: {len(vectors)} vectors for {len(item_ids)} catalog items")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"item_id": item_ids, "vector": pa.array(list(vectors), pa.list_(pa.float32()))})
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.rename(path)  # atomic: a killed run leaves no half-written cache behind
    return path


def project(vectors: np.ndarray, width: int, std: float) -> np.ndarray:
    """[items, width]: the centred vectors on their first `width` principal directions (zeros past
    the encoder's dimension), scaled as one so that the entries' standard deviation is `std`."""
    centred = vectors.astype(np.float64) - vectors.mean(0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    k = min(width, directions.shape[0])
    out = np.zeros((len(vectors), width))
    out[:, :k] = centred @ directions[:k].T
    spread = out.std()
    return (out * (std / spread if spread > 0 else 0.0)).astype(np.float32)


@torch.no_grad()
def init_item_embeddings(model: torch.nn.Module, tokenizer, vectors_path: str | Path) -> int:
    """Set the item tokens' rows of the input embedding (and of an untied output embedding) from the
    cached title vectors; returns the number of rows set."""
    from genrec.data.item_tokens import catalog_token_ids

    table = pq.read_table(vectors_path)
    item_ids = [str(i) for i in table.column("item_id").to_pylist()]
    rows = torch.tensor(catalog_token_ids(tokenizer, item_ids))
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    for weight in weights:
        # Scaled to the spread of the text tokens' rows: rows added by resizing a pretrained
        # model's embedding start near their mean, far tighter than the rows they sit among.
        others = torch.ones(weight.shape[0], dtype=torch.bool)
        others[rows] = False
        start = project(vectors, weight.shape[1], float(weight[others].float().std()))
        weight[rows] = torch.from_numpy(start).to(weight.device, weight.dtype)
    return len(rows)
