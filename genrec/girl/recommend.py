"""Job recommendation grounded in real openings, and `genrec evaluate-jobs`.

Generation-enhanced recommendation (GIRL's journal version): for a CV, the fine-tuned generator
writes the JD that would fit it; the JD is embedded and the nearest real JDs are retrieved; the
reward model reranks them. The generated text never reaches the user: only real openings do.

Evaluation (same harness, same targets, full ranking over every JD, genrec/rec/metrics.py):
  generate_retrieve_rerank  generate -> embed -> top `retrieve` by cosine -> reranked by the reward
  generate_retrieve         generate -> embed -> cosine over all JDs (no reward)
  embed_cv                  the CV itself embedded -> cosine over all JDs (no generation)
  reward_only               the reward model scores the CV with every JD
Targets: each held-out CV's best matched JD (highest grade, then smallest id); the CV's other
matched JDs stay in the ranking. On the synthetic market the report adds the hidden true fit of
the generated JDs and of the top-1 recommendation beside that of random JDs.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec.girl import prompts
from genrec.models.embedders import TextEmbedder

log = logging.getLogger("genrec.girl")

METHODS = ("generate_retrieve_rerank", "generate_retrieve", "embed_cv", "reward_only")


class JDGenerator:
    """The fine-tuned CV->JD generator (a train-sft checkpoint on prepare-jobs' sft/ rows)."""

    def __init__(self, generator_dir, device=None, max_new_tokens: int = 160, max_cv_words: int = prompts.MAX_CV_WORDS):
        from genrec.models.loading import load_checkpoint

        self.model, self.tokenizer, self.meta = load_checkpoint(generator_dir, device=device)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.max_new_tokens, self.max_cv_words = max_new_tokens, max_cv_words

    @torch.no_grad()
    def generate(self, cv_texts, batch_size: int = 16) -> list[str]:
        """Greedy JDs, one per CV, from exactly the prompt the generator was trained on."""
        texts = []
        tok = self.tokenizer
        for start in range(0, len(cv_texts), batch_size):
            prompts_ = [prompts.generator_prompt(cv, self.max_cv_words) for cv in cv_texts[start:start + batch_size]]
            # The same call as training's batch_prompt_ids (special tokens, split_special_tokens), left-padded.
            ids = tok(prompts_, split_special_tokens=True)["input_ids"]
            width = max(map(len, ids))
            input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, row in enumerate(ids):
                input_ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
            output = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                         max_new_tokens=self.max_new_tokens, do_sample=False,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            texts += tok.batch_decode(output[:, width:], skip_special_tokens=True)
        return [t.strip() for t in texts]


class JobRecommender:
    """generate -> embed -> retrieve the nearest real JDs -> rerank with the reward model."""

    def __init__(self, generator_dir, reward_dir, jds_path, embedder="minilm", retrieve: int = 50, device=None,
                 max_new_tokens: int = 160):
        from genrec.girl.reward import load_reward

        self.generator = JDGenerator(generator_dir, device, max_new_tokens) if generator_dir else None
        self.reward = load_reward(reward_dir, device) if reward_dir else None
        self.jds = pd.read_parquet(jds_path).reset_index(drop=True)
        if "title" not in self.jds:
            self.jds["title"] = ""
        self.jd_texts = [prompts.truncate_text(t, prompts.MAX_JD_WORDS) for t in self.jds["text"]]
        self.embedder = embedder if isinstance(embedder, TextEmbedder) else TextEmbedder(embedder, device)
        self.embedder.fit(self.jd_texts)
        self.jd_vectors = self.embedder.embed(self.jd_texts)
        self.retrieve = retrieve

    def recommend(self, cv_text: str, k: int) -> list[dict]:
        """The top k real openings for a CV: [{jd_id, title, score}], score = the reward (or cosine
        without a reward model), best first."""
        if self.generator is None:
            raise ValueError("JobRecommender was built without a generator_dir")
        generated = self.generator.generate([cv_text])[0]
        order, scores = self.rank_from_generated([cv_text], [generated], rerank=self.reward is not None)
        return [{"jd_id": str(self.jds["jd_id"][j]), "title": str(self.jds["title"][j]), "score": float(s)}
                for j, s in zip(order[0][:k], scores[0][:k])]

    def rank_from_generated(self, cv_texts, generated, rerank: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(JD indices best first, their scores) per CV: cosine to the generated JD over all JDs, the
        top `retrieve` reranked by the reward when `rerank`."""
        sims = self.embedder.embed(list(generated)) @ self.jd_vectors.T
        orders, scores = [], []
        for i, cv in enumerate(cv_texts):
            order = np.argsort(-sims[i], kind="stable")
            score = sims[i][order]
            if rerank:
                head = order[: self.retrieve]
                rewards = self.reward.score([cv] * len(head), [self.jd_texts[j] for j in head])
                by_reward = np.argsort(-rewards, kind="stable")
                order = np.concatenate([head[by_reward], order[self.retrieve:]])
                score = np.concatenate([rewards[by_reward], score[self.retrieve:]])
            orders.append(order)
            scores.append(score)
        return np.array(orders), np.array(scores)

    def rank_by_cv_embedding(self, cv_texts) -> np.ndarray:
        sims = self.embedder.embed([prompts.truncate_text(c, prompts.MAX_CV_WORDS) for c in cv_texts]) @ self.jd_vectors.T
        return np.argsort(-sims, axis=1, kind="stable")

    def rank_by_reward(self, cv_texts) -> np.ndarray:
        n = len(self.jd_texts)
        orders = []
        for cv in cv_texts:
            orders.append(np.argsort(-self.reward.score([cv] * n, self.jd_texts), kind="stable"))
        return np.array(orders)


def heldout_targets(data_dir: Path, split: str, max_cvs: int) -> pd.DataFrame:
    """cv_id, cv_text, jd_id (the best matched JD) for the split's CVs with a match, by cv_id."""
    inter = pd.read_parquet(data_dir / "interactions" / f"{split}.parquet")
    matched = inter[inter["label"] == 1].sort_values(["cv_id", "grade", "jd_id"], ascending=[True, False, True])
    targets = matched.drop_duplicates("cv_id")[["cv_id", "cv_text", "jd_id"]].reset_index(drop=True)
    return targets.head(max_cvs) if max_cvs else targets


def evaluate_jobs(cfg) -> dict:
    """`genrec evaluate-jobs`: the four rankings of METHODS on held-out CVs; report.json / report.md."""
    from genrec.config_loader import save_config
    from genrec.rec.metrics import ranking_metrics

    started = time.time()
    data, out = Path(cfg.data_dir), Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rec = JobRecommender(cfg.generator_dir, cfg.reward_dir, data / "jds.parquet", cfg.embedder, cfg.retrieve,
                         max_new_tokens=cfg.max_new_tokens)
    targets = heldout_targets(data, cfg.split, cfg.max_cvs)
    if targets.empty:
        raise ValueError(f"{data}: no {cfg.split} CV has a matched JD to hold out")
    index = {j: i for i, j in enumerate(rec.jds["jd_id"])}
    truth = np.array([index[j] for j in targets["jd_id"]])
    cvs = targets["cv_text"].tolist()
    top = max(cfg.ks)
    rankings: dict[str, np.ndarray] = {}
    generated: list[str] = []
    methods = [m for m in cfg.methods]
    seconds: dict[str, float] = {}
    tick = time.time()
    if any(m.startswith("generate") for m in methods):
        generated = rec.generator.generate(cvs, cfg.batch_size)
        seconds["generate"], tick = time.time() - tick, time.time()
    for name in methods:
        if name == "generate_retrieve_rerank":
            rankings[name] = rec.rank_from_generated(cvs, generated, rerank=True)[0]
        elif name == "generate_retrieve":
            rankings[name] = rec.rank_from_generated(cvs, generated, rerank=False)[0]
        elif name == "embed_cv":
            rankings[name] = rec.rank_by_cv_embedding(cvs)
        elif name == "reward_only":
            rankings[name] = rec.rank_by_reward(cvs)
        seconds[name], tick = time.time() - tick, time.time()
    report = {"cvs": len(targets), "jds": len(rec.jds), "split": cfg.split, "embedder": cfg.embedder,
              "retrieve": cfg.retrieve, "methods": {}}
    for name, order in rankings.items():
        report["methods"][name] = ranking_metrics(order[:, :top], truth, cfg.ks)
    report.update(_true_fit_report(data, targets, generated, rankings, cfg.seed))
    report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    report["wall_s"] = round(time.time() - started, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_report(report, cfg.ks))
    pd.DataFrame({"cv_id": targets["cv_id"], "target_jd_id": targets["jd_id"],
                  "generated": generated or [""] * len(targets)}).to_parquet(out / "generated.parquet", index=False)
    log.info("evaluate-jobs: %s", json.dumps(report["methods"]))
    return report


def _true_fit_report(data: Path, targets: pd.DataFrame, generated: list[str], rankings: dict, seed: int) -> dict:
    """Synthetic market only: the hidden true fit of generated JDs, top-1 picks and random JDs."""
    stats = json.loads((data / "stats.json").read_text()) if (data / "stats.json").exists() else {}
    synth = stats.get("synth_dir")
    if not synth:
        return {}
    from genrec.girl.true_fit import fit_of_text, true_fit

    import pyarrow.parquet as pq

    # pyarrow rows keep list columns as lists (true_fit takes sets of them)
    cv_rows = {r["cv_id"]: r for r in pq.read_table(Path(synth) / "cvs.parquet").to_pylist()}
    jd_dicts = pq.read_table(Path(synth) / "jds.parquet").to_pylist()
    jd_rows = pd.DataFrame({"jd_id": [r["jd_id"] for r in jd_dicts]})
    cvs = [cv_rows[c] for c in targets["cv_id"]]
    rng = np.random.default_rng(seed)
    result = {"true_fit": {
        "random_jd": float(np.mean([true_fit(cv, jd_dicts[rng.integers(len(jd_dicts))]) for cv in cvs])),
        "target_jd": float(np.mean([true_fit(cv, jd_dicts[int(np.flatnonzero(jd_rows["jd_id"] == j)[0])])
                                    for cv, j in zip(cvs, targets["jd_id"])])),
    }}
    if generated:
        result["true_fit"]["generated_jd"] = float(np.mean([fit_of_text(cv, g) for cv, g in zip(cvs, generated)]))
    for name, order in rankings.items():
        result["true_fit"][f"top1_{name}"] = float(np.mean([true_fit(cv, jd_dicts[o[0]]) for cv, o in zip(cvs, order)]))
    return result


def render_report(report: dict, ks) -> str:
    lines = [f"# job recommendation ({report['split']}: {report['cvs']} CVs, full ranking over {report['jds']} JDs)", "",
             "| method | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in ks) + " |",
             "|---|" + "---|---|" * len(ks)]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[f'hr@{k}']:.4f} | {m[f'ndcg@{k}']:.4f}" for k in ks) + " |")
    if "true_fit" in report:
        lines += ["", "hidden true fit (synthetic market), mean over held-out CVs:", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in report["true_fit"].items()]
    return "\n".join(lines) + "\n"
