"""Grounding free text to catalog items, as BIGRec does: embed the generated title and take the
catalog items nearest to it, so that every returned item is a real one.

BIGRec ranks the whole catalog by the distance between one generated text and every item. With K
beams we keep the beams' order: each returned text in turn takes its nearest catalog item not
already taken (a text that is exactly a catalog title takes that item), and the remaining slots
are the catalog ranked by cosine similarity to the top beam's text. With one text this is exactly
BIGRec's ranking.

Embedders: `minilm`, `tfidf` or an HF encoder path through genrec.models.embedders.TextEmbedder, or
`model`: the generative model's own last-layer hidden states, mean pooled over the title's tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MAX_SCORES = 1 << 24  # similarity floats computed at once (64 MB): users are grounded in batches this size


class ModelEmbedder:
    """Title embeddings from a causal LM: its last hidden layer, mean pooled over the title's tokens
    (tokenized as training tokenizes responses, without the EOS), L2-normalised."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        # The transformer without its LM head (a LoRA model keeps its adapters: peft injects them in place).
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.encoder, self.tokenizer, self.batch_size = causal_lm.base_model, tokenizer, batch_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from genrec.data.tokenize import batch_response_ids

        pad, device = self.tokenizer.pad_token_id, next(self.encoder.parameters()).device
        # An empty text has no tokens to pool: embed the EOS alone instead.
        ids = [row[:-1] or row[-1:] for row in batch_response_ids(self.tokenizer, [t or " " for t in texts])]
        out = []
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start:start + self.batch_size]
            width = max(map(len, batch))
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch], device=device)
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.config.hidden_size), np.float32)


class Grounder:
    """Maps generated texts to catalog items by embedding similarity; built once per actor."""

    def __init__(self, titles: Sequence[str], embedder: str = "minilm", model=None, tokenizer=None, device=None):
        from genrec.models.embedders import TextEmbedder

        self.title_index = {title: index for index, title in enumerate(titles)}
        if embedder == "model":
            if model is None or tokenizer is None:
                raise ValueError("Grounder(embedder='model') needs the generative model and its tokenizer")
            self.embedder = ModelEmbedder(model, tokenizer)
        else:
            self.embedder = TextEmbedder(embedder, device).fit(titles)
        # One float32 matrix, rows L2-normalised; TF-IDF stays sparse (dense, a 62k-title catalog's
        # TF-IDF would take gigabytes), the dense similarities are computed a user batch at a time.
        self.catalog = self._embed(list(titles))

    def _embed(self, texts: list[str]):
        if isinstance(self.embedder, ModelEmbedder):
            return self.embedder.embed(texts)
        return self.embedder.embed(texts, sparse=True)  # sparse=True: only tfidf returns a sparse matrix

    def similarity(self, texts: list[str]) -> np.ndarray:
        """Cosine similarity of each text to every catalog item, float32 [len(texts), catalog]."""
        scores = self._embed(texts) @ self.catalog.T
        return np.asarray(scores.todense() if hasattr(scores, "todense") else scores, dtype=np.float32)

    def ground(self, texts_per_user: list[list[str]], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int64 [n, top_k], similarity float32 [n, top_k]): K distinct catalog indices per user
        (K = min(top_k, catalog size)), each with the cosine similarity of the text that chose it."""
        n, size = len(texts_per_user), len(self.title_index)
        k = min(top_k, size)
        items, similarity = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
        per_user = max(1, min(k, max((len(t) for t in texts_per_user), default=1)))
        step = max(1, MAX_SCORES // (per_user * size))
        for start in range(0, n, step):
            users = [texts[:k] or [""] for texts in texts_per_user[start:start + step]]  # no text: ground ""
            scores = self.similarity([text for texts in users for text in texts])
            row = 0
            for user, texts in enumerate(users, start):
                items[user], similarity[user] = self._rank(texts, scores[row:row + len(texts)], k)
                row += len(texts)
        return items, similarity

    def _rank(self, texts: list[str], scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        taken: list[int] = []
        chosen_by: list[int] = []  # which text's similarity each slot carries
        for beam, text in enumerate(texts):
            item = self.title_index.get(text, -1)
            if item < 0 or item in taken:
                masked = scores[beam].copy()
                masked[taken] = -np.inf
                item = int(np.argmax(masked))
            taken.append(item)
            chosen_by.append(beam)
        if len(taken) < k:  # BIGRec's ranking by the top beam's text fills the rest
            taken_set = set(taken)
            for item in np.argsort(-scores[0], kind="stable"):
                if len(taken) == k:
                    break
                if item not in taken_set:
                    taken.append(int(item))
                    chosen_by.append(0)
        items = np.array(taken, np.int64)
        return items, scores[chosen_by, items]
