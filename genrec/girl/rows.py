"""Training rows from a JobSet, built per batch of CVs (a Ray Data map_batches function).

SFT rows (CV -> a matched JD, template cv_to_jd), in the row format of `genrec prepare` so that
`genrec train-sft` reads them unchanged: instruction, input (the truncated CV), output (the
truncated JD), history_item_ids (null: there is no item history to shorten, so a row over
train-sft's max_len is an error naming it, never a silently emptied CV), user_id (= cv_id),
position (the n-th matched JD of that CV), target_item_id (= jd_id).

Preference rows: (CV, JD+) should score above (CV', JD-). For each matched JD of a CV (label 1,
grade g), negatives of these kinds, each JD- never a matched JD of that CV:
  observed  a JD this CV was shown with a lower grade (recruiter feedback)
  hard      a JD of the same group (role / job category) as JD+, preferring a different title
            (same role, other seniority; else other skills or place)
  related   a JD of a group related to JD+'s (JobSet.related)
  random    any JD
  truncated JD+ itself cut to its first 5-40% of words (training split only; on by default): a
            degenerate JD must score below the whole one. Without these a reward model can prefer
            near-empty JDs, and PPO then learns to write them (seen on the synthetic market: reward
            up, true fit down)
  other_cv  another CV of the same split graded lower for JD+'s group (for JD+ itself when JDs
            have no group), with the JD it was graded for: sets where every candidate saw one job,
            like the Chinese screening pairs. CV' != CV only here
margin = margin_per_grade * (g - grade of the negative; 0 for drawn JDs). Rows are deduplicated on
(cv_id, pos_jd_id, neg_cv_id, neg_jd_id).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa

from genrec.girl import prompts

SPLITS = ("train", "valid", "test")
SFT_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("history_item_ids", pa.list_(pa.string())), ("target_item_id", pa.string()),
    ("instruction", pa.string()), ("input", pa.string()), ("output", pa.string()), ("position", pa.int32()),
    ("split", pa.string()),
])
PAIR_SCHEMA = pa.schema([
    ("cv_id", pa.string()), ("cv_text", pa.string()), ("pos_jd_id", pa.string()), ("pos_text", pa.string()),
    ("neg_jd_id", pa.string()), ("neg_text", pa.string()), ("neg_kind", pa.string()), ("margin", pa.float32()),
    ("neg_cv_id", pa.string()), ("neg_cv_text", pa.string()), ("pos_grade", pa.int8()), ("neg_grade", pa.int8()),
    ("split", pa.string()),
])


@dataclasses.dataclass
class RowSpec:
    seed: int = 0
    sft_per_cv: int = 3
    pos_per_cv: int = 3
    observed_negatives: int = 2
    hard_negatives: int = 1
    related_negatives: int = 1
    random_negatives: int = 1
    other_cv_negatives: int = 0
    margin_per_grade: float = 0.0
    truncated_negatives: int = 0


def stable_hash(*parts) -> int:
    """A hash that is the same in every process and run (Python's hash() of a str is salted)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def assign_splits(cv_ids, valid_share: float, test_share: float, seed: int) -> np.ndarray:
    """train / valid / test per CV from a stable hash of (seed, cv_id): a CV is in exactly one split."""
    u = np.array([stable_hash(seed, "split", c) % 1_000_000 for c in cv_ids]) / 1_000_000
    return np.where(u < test_share, "test", np.where(u < test_share + valid_share, "valid", "train"))


class JobIndex:
    """What row building looks up, shared read-only by every batch (put in the object store once)."""

    def __init__(self, cvs: pd.DataFrame, jds: pd.DataFrame, interactions: pd.DataFrame, related: dict,
                 max_cv_words: int, max_jd_words: int):
        self.jd_ids = jds["jd_id"].to_numpy()
        self.jd_text = {j: prompts.truncate_text(t, max_jd_words) for j, t in zip(jds["jd_id"], jds["text"])}
        self.jd_title = dict(zip(jds["jd_id"], jds["title"]))
        self.jd_group = dict(zip(jds["jd_id"], jds["group"]))
        self.by_group: dict[str, np.ndarray] = {g: np.array(sorted(ids)) for g, ids in
                                                jds.groupby("group")["jd_id"] if g}
        self.related = {g: sorted(r) for g, r in related.items()}
        self.cv_text = {c: prompts.truncate_text(t, max_cv_words) for c, t in zip(cvs["cv_id"], cvs["text"])}
        self.cv_split = dict(zip(cvs["cv_id"], cvs["split"]))
        self.shown = {cv: list(zip(g["jd_id"], g["grade"], g["label"])) for cv, g in interactions.groupby("cv_id")}
        # for other_cv negatives: per JD group (the JD itself when it has none) and split, every
        # (cv_id, jd_id, grade) shown
        self.applicants: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
        for cv, jd, grade in zip(interactions["cv_id"], interactions["jd_id"], interactions["grade"]):
            key = (self.jd_group.get(jd) or jd, self.cv_split.get(cv, ""))
            self.applicants.setdefault(key, []).append((cv, jd, int(grade)))


def positives(index: JobIndex, cv_id: str, limit: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """The CV's matched JDs (label 1), highest grade first, at most `limit` (0 = all), ties in random order."""
    shown = [(jd, int(g)) for jd, g, label in index.shown.get(cv_id, []) if label == 1]
    order = rng.permutation(len(shown))
    shown = sorted((shown[i] for i in order), key=lambda x: -x[1])
    return shown[:limit] if limit else shown


def _resolve(index):
    """The JobIndex itself, or fetched from the object store (prepare passes it by reference)."""
    import ray

    return ray.get(index) if isinstance(index, ray.ObjectRef) else index


def sft_rows(batch: pd.DataFrame, index: JobIndex, spec: RowSpec) -> pa.Table:
    index, rows = _resolve(index), []
    instruction = prompts.instruction()
    for cv_id in batch["cv_id"]:
        rng = np.random.default_rng([spec.seed, stable_hash("sft", cv_id) % 2**32])
        for position, (jd_id, _) in enumerate(positives(index, cv_id, spec.sft_per_cv, rng)):
            rows.append({"user_id": cv_id, "history_item_ids": None, "target_item_id": jd_id,
                         "instruction": instruction, "input": index.cv_text[cv_id], "output": index.jd_text[jd_id],
                         "position": position, "split": index.cv_split[cv_id]})
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA)


def _draw(rng: np.random.Generator, pool, k: int, exclude: set) -> list:
    pool = [p for p in pool if p not in exclude]
    if k <= 0 or not pool:
        return []
    return [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]


def pair_rows(batch: pd.DataFrame, index: JobIndex, spec: RowSpec) -> pa.Table:
    index, rows, seen = _resolve(index), [], set()
    for cv_id in batch["cv_id"]:
        rng = np.random.default_rng([spec.seed, stable_hash("pairs", cv_id) % 2**32])
        split = index.cv_split[cv_id]
        matched = {jd for jd, _, label in index.shown.get(cv_id, []) if label == 1}
        for pos, grade in positives(index, cv_id, spec.pos_per_cv, rng):
            negatives: list[tuple[str, str, str, int]] = []  # (kind, neg_cv_id, neg_jd_id, neg_grade)
            lower = [(jd, g) for jd, g, _ in index.shown.get(cv_id, []) if g < grade and jd not in matched]
            for jd, g in _draw(rng, lower, spec.observed_negatives, set()):
                negatives.append(("observed", cv_id, jd, g))
            group = index.jd_group.get(pos, "")
            if group and spec.hard_negatives:
                same_group = index.by_group.get(group, np.array([]))
                other_title = [j for j in same_group if index.jd_title[j] != index.jd_title[pos]]
                same_title = [j for j in same_group if index.jd_title[j] == index.jd_title[pos]]
                picked = _draw(rng, other_title, spec.hard_negatives, matched)
                picked += _draw(rng, same_title, spec.hard_negatives - len(picked), matched)
                negatives += [("hard", cv_id, j, 0) for j in picked]
            if group and spec.related_negatives:
                pool = [j for g in index.related.get(group, []) for j in index.by_group.get(g, [])]
                negatives += [("related", cv_id, j, 0) for j in _draw(rng, pool, spec.related_negatives, matched)]
            if spec.random_negatives:
                picked = []
                for _ in range(20 * spec.random_negatives):  # rejection sampling: matched JDs are few
                    j = index.jd_ids[rng.integers(len(index.jd_ids))]
                    if j not in matched and j not in picked:
                        picked.append(j)
                        if len(picked) == spec.random_negatives:
                            break
                negatives += [("random", cv_id, j, 0) for j in picked]
            if spec.other_cv_negatives:
                key = (index.jd_group.get(pos) or pos, split)
                others = [(c, j, g) for c, j, g in index.applicants.get(key, []) if g < grade and c != cv_id]
                negatives += [("other_cv", c, j, g) for c, j, g in _draw(rng, others, spec.other_cv_negatives, set())]
            texts = {}
            if split == "train":  # held-out pairs stay real JDs, so their accuracy is comparable
                words = index.jd_text[pos].split()
                for n in range(spec.truncated_negatives):
                    keep = max(1, int(len(words) * rng.uniform(0.05, 0.4)))
                    texts[f"{pos}#truncated{n}"] = " ".join(words[:keep])
                    negatives.append(("truncated", cv_id, f"{pos}#truncated{n}", 0))
            for kind, neg_cv, neg_jd, neg_grade in negatives:
                key = (cv_id, pos, neg_cv, neg_jd)
                if key in seen:
                    continue
                seen.add(key)
                neg_text = texts[neg_jd] if kind == "truncated" else index.jd_text[neg_jd]
                rows.append({"cv_id": cv_id, "cv_text": index.cv_text[cv_id], "pos_jd_id": pos,
                             "pos_text": index.jd_text[pos], "neg_jd_id": neg_jd, "neg_text": neg_text,
                             "neg_kind": kind, "margin": spec.margin_per_grade * (grade - neg_grade),
                             "neg_cv_id": neg_cv, "neg_cv_text": index.cv_text[neg_cv], "pos_grade": grade,
                             "neg_grade": neg_grade, "split": split})
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
