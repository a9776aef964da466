"""Synthetic job market: CVs, job descriptions (JDs) and recruiter feedback with a hidden true fit.

This is the embedded data set of the GIRL side of genrec (generate a JD for a CV, learn a reward
model from recruiter feedback, align the generator with PPO). Its ground truth is planted and
hidden, so tests can check what the reward model and PPO learn:

- every CV and JD is drawn from a small taxonomy (role families with their skill pools, seniority
  levels with years of experience, cities, remote work) and written as readable English text;
  the drawn fields are kept in columns prefixed `true_`, which no model may read;
- `true_fit(cv, jd)` (genrec/girl/true_fit.py) is the hidden fit of a CV-JD pair, a documented function of the fields
  (role match dominates; seniority distance, coverage of the required skills, location/remote);
- `fit_of_text(cv, text)` parses ANY text (a generated JD) for role, seniority, skills and
  location by keyword matching against the taxonomy and scores it with the same function, so the
  evaluation can score a model's output; text it cannot parse scores 0, never an error;
- `interactions` draws noisy recruiter feedback (label, grade) from the true fit.

Files written by `synth_jobs(out_dir, ...)`:

  cvs.parquet           cv_id, text, true_role, true_seniority, true_years, true_skills, true_location
  jds.parquet           jd_id, title, text, true_role, true_seniority, true_required_skills,
                        true_location, true_remote
  interactions.parquet  cv_id, jd_id, label (1 = recruiter says match), grade (0..3); what training
                        may read (with the two texts)
  truth.parquet         cv_id, jd_id, true_fit, p_match for the same rows: EVALUATION ONLY, kept
                        out of interactions.parquet so no training stage reads it by accident
  synth.json            config and summary (label rate, mean fit by label, AUC of fit vs label)

Same seed -> identical files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.girl.metrics import auc
from genrec.girl.taxonomy import (COMPANIES, LOCATIONS, ROLE_NAMES, ROLES, SENIORITY, SENIORITY_PMF, SENIORITY_WORD,
                                  SHARED_SKILLS, YEARS)
from genrec.girl.true_fit import GRADE_EXPONENT, LABEL_FLIP, LABEL_MIDPOINT, LABEL_SLOPE, match_probability, true_fit

# ------------------------------------------------------------------------------ generation knobs
CV_CORE_SKILLS = (5, 8)  # core skills on a CV, inclusive
CV_SHARED_SKILLS = (0, 2)
P_CV_NOISE_SKILL = 0.3  # a CV lists one skill from another role's pool (it is a real skill of the person)
JD_REQUIRED_SKILLS = (3, 6)
P_JD_SHARED_SKILL = 0.3
P_REMOTE = 0.2
PER_CV = 10  # JDs shown to each CV
LIKELY_SHARE = 0.5  # of those, the share drawn from JDs of the CV's own role; the rest uniformly

CV_SCHEMA = pa.schema([
    ("cv_id", pa.string()), ("text", pa.string()), ("true_role", pa.string()), ("true_seniority", pa.string()),
    ("true_years", pa.int32()), ("true_skills", pa.list_(pa.string())), ("true_location", pa.string()),
])
JD_SCHEMA = pa.schema([
    ("jd_id", pa.string()), ("title", pa.string()), ("text", pa.string()), ("true_role", pa.string()),
    ("true_seniority", pa.string()), ("true_required_skills", pa.list_(pa.string())),
    ("true_location", pa.string()), ("true_remote", pa.bool_()),
])
INTERACTIONS_SCHEMA = pa.schema([("cv_id", pa.string()), ("jd_id", pa.string()), ("label", pa.int8()),
                                 ("grade", pa.int8())])
TRUTH_SCHEMA = pa.schema([("cv_id", pa.string()), ("jd_id", pa.string()), ("true_fit", pa.float64()),
                          ("p_match", pa.float64())])



# ------------------------------------------------------------------------------ public API
def synth_jobs(out_dir: str | Path, num_cvs: int = 2000, num_jds: int = 1500, seed: int = 0,
               per_cv: int = PER_CV) -> dict:
    """Write cvs, jds, interactions, truth (.parquet) and synth.json to out_dir; return the summary."""
    started = time.perf_counter()
    cvs, jds = generate_market(num_cvs, num_jds, seed)
    pairs = interactions(cvs, jds, seed, per_cv=per_cv)
    truth = truth_table(cvs, jds, pairs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("cvs", cvs), ("jds", jds), ("interactions", pairs), ("truth", truth)):
        pq.write_table(table, out / f"{name}.parquet")
    labels = np.asarray(pairs["label"], dtype=np.int64)
    fits = np.asarray(truth["true_fit"])
    summary = {
        "cvs": num_cvs,
        "jds": num_jds,
        "interactions": pairs.num_rows,
        "label_rate": round(float(labels.mean()), 4),
        "grade_counts": np.bincount(np.asarray(pairs["grade"], dtype=np.int64), minlength=4).tolist(),
        "mean_true_fit_label1": round(float(fits[labels == 1].mean()), 4) if labels.any() else None,
        "mean_true_fit_label0": round(float(fits[labels == 0].mean()), 4) if not labels.all() else None,
        "auc_true_fit_vs_label": round(auc(fits, labels), 4),
        "out_dir": str(out),
        "seconds": round(time.perf_counter() - started, 3),
    }
    # The timing and the folder vary run to run; leave them out of synth.json so same seed = same files.
    recorded = {k: v for k, v in summary.items() if k not in ("seconds", "out_dir")}
    config = {"num_cvs": num_cvs, "num_jds": num_jds, "seed": seed, "per_cv": per_cv}
    (out / "synth.json").write_text(json.dumps({"config": config, "summary": recorded}, indent=2) + "\n")
    return summary


def synth_jobs_stage(cfg) -> dict:
    """`genrec data synth jobs`: synth_jobs with a SynthJobsConfig's values."""
    return synth_jobs(cfg.out_dir, cfg.num_cvs, cfg.num_jds, cfg.seed, per_cv=cfg.per_cv)


def generate_market(num_cvs: int, num_jds: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """(cvs, jds) as pyarrow tables (CV_SCHEMA, JD_SCHEMA); the same arguments give the same tables."""
    if num_cvs < 1 or num_jds < 1:
        raise ValueError(f"num_cvs={num_cvs} and num_jds={num_jds} must be at least 1")
    rng = np.random.default_rng([seed, 0])
    cv_rows = [make_cv(rng) for _ in range(num_cvs)]
    jd_rows = [make_jd(rng) for _ in range(num_jds)]
    cvs = _table(cv_rows, _ids("cv", num_cvs), "cv_id", CV_SCHEMA)
    jds = _table(jd_rows, _ids("jd", num_jds), "jd_id", JD_SCHEMA)
    return cvs, jds


def make_cv(rng: np.random.Generator, role: str | None = None, seniority: str | None = None,
            location: str | None = None) -> dict:
    """One CV row (text + true_ fields, no id); unspecified fields are drawn at random."""
    role = role or ROLE_NAMES[rng.integers(len(ROLE_NAMES))]
    seniority = seniority or SENIORITY[rng.choice(len(SENIORITY), p=SENIORITY_PMF)]
    location = location or LOCATIONS[rng.integers(len(LOCATIONS))]
    years = int(rng.integers(YEARS[seniority][0], YEARS[seniority][1] + 1))
    core = ROLES[role][1]
    skills = _pick(rng, core, rng.integers(CV_CORE_SKILLS[0], CV_CORE_SKILLS[1] + 1))
    skills += _pick(rng, SHARED_SKILLS, rng.integers(CV_SHARED_SKILLS[0], CV_SHARED_SKILLS[1] + 1))
    if rng.random() < P_CV_NOISE_SKILL:
        other = ROLE_NAMES[rng.integers(len(ROLE_NAMES))]
        skills += [s for s in _pick(rng, ROLES[other][1], 1) if s not in skills]
    skills = [skills[i] for i in rng.permutation(len(skills))]
    text = _cv_text(rng, role, seniority, years, skills, location)
    return {"text": text, "true_role": role, "true_seniority": seniority, "true_years": years,
            "true_skills": skills, "true_location": location}


def make_jd(rng: np.random.Generator, role: str | None = None, seniority: str | None = None,
            location: str | None = None, remote: bool | None = None) -> dict:
    """One JD row (title, text + true_ fields, no id); unspecified fields are drawn at random."""
    role = role or ROLE_NAMES[rng.integers(len(ROLE_NAMES))]
    seniority = seniority or SENIORITY[rng.choice(len(SENIORITY), p=SENIORITY_PMF)]
    location = location or LOCATIONS[rng.integers(len(LOCATIONS))]
    remote = bool(rng.random() < P_REMOTE) if remote is None else bool(remote)
    required = _pick(rng, ROLES[role][1], rng.integers(JD_REQUIRED_SKILLS[0], JD_REQUIRED_SKILLS[1] + 1))
    if rng.random() < P_JD_SHARED_SKILL:
        required += _pick(rng, SHARED_SKILLS, 1)
    title = f"{SENIORITY_WORD[seniority]} {ROLES[role][0]}"
    text = _jd_text(rng, role, title, required, location, remote)
    return {"title": title, "text": text, "true_role": role, "true_seniority": seniority,
            "true_required_skills": required, "true_location": location, "true_remote": remote}


def interactions(cvs: pa.Table, jds: pa.Table, seed: int, per_cv: int = PER_CV) -> pa.Table:
    """Recruiter feedback: per CV, `per_cv` distinct JDs (about LIKELY_SHARE from the CV's own role,
    the rest uniform), each labelled from the true fit (INTERACTIONS_SCHEMA). Deterministic by seed.
    The fit itself stays out of this table: see `truth_table`.
    """
    return _draw_pairs(cvs, jds, seed, per_cv)


def truth_table(cvs: pa.Table, jds: pa.Table, pairs: pa.Table) -> pa.Table:
    """Evaluation only: true_fit and P(label = 1) of each (cv_id, jd_id) row of `pairs`."""
    cv_index = {cv_id: i for i, cv_id in enumerate(cvs["cv_id"].to_pylist())}
    jd_index = {jd_id: i for i, jd_id in enumerate(jds["jd_id"].to_pylist())}
    cv_rows, jd_rows = cvs.to_pylist(), jds.to_pylist()
    cv_ids, jd_ids = pairs["cv_id"].to_pylist(), pairs["jd_id"].to_pylist()
    fits = np.array([true_fit(cv_rows[cv_index[c]], jd_rows[jd_index[j]]) for c, j in zip(cv_ids, jd_ids)])
    return pa.table({"cv_id": pa.array(cv_ids, pa.string()), "jd_id": pa.array(jd_ids, pa.string()),
                     "true_fit": fits, "p_match": match_probability(fits)}, schema=TRUTH_SCHEMA)


# ------------------------------------------------------------------------------ internals
def _draw_pairs(cvs: pa.Table, jds: pa.Table, seed: int, per_cv: int) -> pa.Table:
    if per_cv < 1:
        raise ValueError(f"per_cv={per_cv} must be at least 1")
    rng = np.random.default_rng([seed, 1])
    num_jds = jds.num_rows
    per_cv = min(per_cv, num_jds)
    jd_rows = jds.to_pylist()
    by_role: dict[str, np.ndarray] = {}
    jd_role = np.array([r["true_role"] for r in jd_rows])
    for role in ROLE_NAMES:
        by_role[role] = np.flatnonzero(jd_role == role)
    likely = int(round(per_cv * LIKELY_SHARE))
    cv_ids, jd_idx, fits = [], [], []
    for cv in cvs.to_pylist():
        own = by_role.get(cv["true_role"], np.empty(0, dtype=np.int64))
        chosen = list(rng.choice(own, size=min(likely, len(own)), replace=False)) if len(own) else []
        taken = set(chosen)
        while len(chosen) < per_cv:
            j = int(rng.integers(num_jds))
            if j not in taken:
                taken.add(j)
                chosen.append(j)
        chosen = [int(chosen[i]) for i in rng.permutation(len(chosen))]
        for j in chosen:
            cv_ids.append(cv["cv_id"])
            jd_idx.append(j)
            fits.append(true_fit(cv, jd_rows[j]))
    fits_arr = np.array(fits)
    p = 1.0 / (1.0 + np.exp(-LABEL_SLOPE * (fits_arr - LABEL_MIDPOINT)))
    labels = rng.random(len(fits_arr)) < p
    labels ^= rng.random(len(fits_arr)) < LABEL_FLIP
    # A funnel: each further stage (interviewed, hired) is reached with probability fit**3.
    stage = np.clip(fits_arr, 0, 1) ** GRADE_EXPONENT
    interviewed = rng.random(len(fits_arr)) < stage
    hired = interviewed & (rng.random(len(fits_arr)) < stage)
    grades = np.where(labels, 1 + interviewed.astype(np.int64) + hired.astype(np.int64), 0)
    jd_ids = jds["jd_id"].take(pa.array(jd_idx, pa.int64())) if jd_idx else pa.array([], pa.string())
    table = pa.table({"cv_id": pa.array(cv_ids, pa.string()), "jd_id": jd_ids,
                      "label": pa.array(labels.astype(np.int8)), "grade": pa.array(grades.astype(np.int8))},
                     schema=INTERACTIONS_SCHEMA)
    return table


def _ids(prefix: str, n: int) -> pa.Array:
    width = max(5, len(str(n - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


def _table(rows: list[dict], ids: pa.Array, id_col: str, schema: pa.Schema) -> pa.Table:
    columns = {id_col: ids}
    for name in schema.names[1:]:
        columns[name] = pa.array([r[name] for r in rows], schema.field(name).type)
    return pa.table(columns, schema=schema)


def _pick(rng: np.random.Generator, pool: tuple[str, ...], k: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), size=min(int(k), len(pool)), replace=False)]


def _choice(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[rng.integers(len(options))]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


_CV_EXTRAS = ("Looking for a new challenge.", "Happy to relocate for the right team.",
              "Enjoys mentoring and learning from others.", "Available to start next month.", "")


def _cv_text(rng, role, seniority, years, skills, location) -> str:
    sen = SENIORITY_WORD[seniority]
    span = f"{years} year{'s' if years != 1 else ''}"
    style = int(rng.integers(4))
    company = _choice(rng, COMPANIES)
    extra = _choice(rng, _CV_EXTRAS)
    half = len(skills) // 2 + 1
    if style == 0:
        text = f"{sen} {role} with {span} of experience in {_join(skills)}, based in {location}. {extra}"
    elif style == 1:
        text = (f"{sen} {role} based in {location}. Over the past {span} I have worked with "
                f"{_join(skills[:half])}; I also know {_join(skills[half:] or ['the basics of the trade'])}. "
                f"Previously at {company}. {extra}")
    elif style == 2:
        text = f"{sen} {role} | {location} | {span} of experience. Skills: {', '.join(skills)}. {extra}"

    else:
        text = (f"I am {_article(sen)} {sen.lower()} {role} from {location} with {span} of experience, "
                f"most recently at {company}. My toolbox: {_join(skills)}. {extra}")
    return text.strip()


def _jd_text(rng, role, title, required, location, remote) -> str:
    duties = _pick(rng, ROLES[role][2], 2)
    company = _choice(rng, COMPANIES)
    remote_line = (_choice(rng, ("This position is fully remote.", "Remote work is welcome.",
                                 "You can work remote from anywhere in your time zone."))
                   if remote else _choice(rng, ("The role is on site.", "You will work from our office.", "")))
    style = int(rng.integers(3))
    if style == 0:
        text = (f"We are hiring {_article(title)} {title} in {location}. You will {duties[0]} and {duties[1]}. "
                f"Requirements: {', '.join(required)}. {remote_line}")
    elif style == 1:
        text = (f"{title} - {location}. Join {company} and {duties[0]}; you will also {duties[1]}. "
                f"What we look for: {_join(required)}. {remote_line}")
    else:
        text = (f"{company} is looking for {_article(title)} {title} to join its {location} office. "
                f"In this role you will {duties[0]}. You bring experience with {_join(required)}. {remote_line}")
    return text.strip()
