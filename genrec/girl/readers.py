"""CV / JD / interaction readers: a generic one for any user's files, and one per real set.

Every reader returns a `JobSet`:
  cvs           DataFrame cv_id, text
  jds           DataFrame jd_id, title, text, group   (group: a role or job category, "" if unknown;
                hard negatives are drawn from the positive's group)
  interactions  DataFrame cv_id, jd_id, label (1 matched / 0 mismatched), grade (0..)
  related       group -> groups that share work with it ("related category" negatives)
  notes         what the labels are (e.g. weak labels), for the prepared folder's stats.json
  rejects       rows skipped, counted per reason with the first example (strict=False)

Generic files (`read_cvs`, `read_jds`, `read_interactions`): JSONL, CSV or parquet, chosen by the
file's extension. A malformed row (missing id or text, empty text, duplicate id, unknown label or
outcome, an id that names no CV / JD) raises `JobDataError` naming the file, the row and the field;
with strict=False it is counted in `rejects` instead, never dropped silently.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from genrec.data.rejects import Rejects

# Outcomes a recruiter log may hold instead of a 0/1 label, mapped to a grade; grade >= 1 is a match.
OUTCOME_GRADES = {
    "rejected": 0, "declined": 0, "mismatch": 0, "mismatched": 0, "no": 0, "fail": 0, "failed": 0,
    "viewed": 0, "applied": 1, "shortlisted": 1, "match": 1, "matched": 1, "yes": 1, "pass": 1,
    "passed": 1, "interviewed": 2, "offer": 3, "hired": 3,
}


class JobDataError(ValueError):
    """A malformed CV / JD / interaction row; the message names file:row and the field."""


@dataclasses.dataclass
class JobSet:
    name: str
    cvs: pd.DataFrame
    jds: pd.DataFrame
    interactions: pd.DataFrame
    related: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    notes: str = ""
    rejects: Rejects = dataclasses.field(default_factory=Rejects)


# ------------------------------------------------------------------------------------- generic files
def iter_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for every row of a .jsonl/.json, .csv or .parquet file; `where` is file:row
    (1-based data rows; for CSV the header is row 0, so row n is the file's line n+1 when no field
    spans lines)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{n}", {"__error__": f"not JSON ({e.msg})", "__line__": line}
                    continue
                if not isinstance(record, dict):
                    yield f"{path}:{n}", {"__error__": "not a JSON object", "__line__": line}
                    continue
                yield f"{path}:{n}", record
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            for n, record in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), 1):
                yield f"{path}:row {n}", record
    elif suffix == ".parquet":
        for n, record in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}:row {n}", record
    else:
        raise JobDataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .csv or .parquet")


def _bad(rejects: Rejects, strict: bool, reason: str, where: str, record: dict) -> None:
    if strict:
        raise JobDataError(f"{where}: {reason}; row: {_short(record)}")
    rejects.add(reason, where, _short(record))


def _short(record: dict) -> str:
    return str({k: (str(v)[:40] if v is not None else None) for k, v in record.items() if k != "__line__"})[:200]


def _readable_records(path, kind: str, strict: bool, rejects: Rejects):
    """iter_records without the lines that are not a JSON object: those are counted (or raised)."""
    for where, record in iter_records(path):
        if "__error__" in record:
            _bad(rejects, strict, f"{kind} row is {record['__error__']}", where, record)
            continue
        yield where, record


def _text_table(path, id_col: str, text_col: str, kind: str, strict: bool, rejects: Rejects,
                extra: dict[str, str] | None = None) -> pd.DataFrame:
    rows, seen = [], set()
    for where, record in _readable_records(path, kind, strict, rejects):
        key, text = record.get(id_col), record.get(text_col)
        if key is None or str(key).strip() == "":
            _bad(rejects, strict, f"{kind} field {id_col!r} is missing or empty", where, record)
            continue
        if not isinstance(text, str) or not text.strip():
            _bad(rejects, strict, f"{kind} field {text_col!r} is missing, empty or not text", where, record)
            continue
        key = str(key).strip()
        if key in seen:
            _bad(rejects, strict, f"{kind} field {id_col!r}: duplicate id {key!r}", where, record)
            continue
        seen.add(key)
        row = {"id": key, "text": text}
        for name, column in (extra or {}).items():
            value = record.get(column) if column else None
            row[name] = "" if value is None else str(value)
        rows.append(row)
    return pd.DataFrame(rows, columns=["id", "text", *(extra or {})])


def read_cvs(path, id_col: str = "cv_id", text_col: str = "text", strict: bool = True,
             rejects: Rejects | None = None) -> pd.DataFrame:
    """cv_id, text from a JSONL / CSV / parquet file."""
    table = _text_table(path, id_col, text_col, "CV", strict, rejects if rejects is not None else Rejects())
    return table.rename(columns={"id": "cv_id"})


def read_jds(path, id_col: str = "jd_id", text_col: str = "text", title_col: str = "title", group_col: str = "",
             strict: bool = True, rejects: Rejects | None = None) -> pd.DataFrame:
    """jd_id, title, text, group from a JSONL / CSV / parquet file (title and group may be absent: "")."""
    table = _text_table(path, id_col, text_col, "JD", strict, rejects if rejects is not None else Rejects(),
                        extra={"title": title_col, "group": group_col})
    return table.rename(columns={"id": "jd_id"})


def parse_grade(record: dict, label_col: str, grade_col: str) -> tuple[int | None, str]:
    """(grade, problem): a grade column (integer >= 0) wins; else the label column holds 0/1,
    true/false or an outcome word (OUTCOME_GRADES)."""
    if grade_col and record.get(grade_col) not in (None, ""):
        raw = record[grade_col]
        try:
            grade = int(float(raw))
        except (TypeError, ValueError):
            return None, f"field {grade_col!r}: {raw!r} is not an integer grade"
        return (grade, "") if grade >= 0 else (None, f"field {grade_col!r}: negative grade {grade}")
    raw = record.get(label_col)
    if raw is None or raw == "":
        return None, f"field {label_col!r} is missing"
    if isinstance(raw, bool):
        return int(raw), ""
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return int(raw), ""
    word = str(raw).strip().lower()
    if word in ("0", "1", "true", "false"):
        return int(word in ("1", "true")), ""
    if word in OUTCOME_GRADES:
        return OUTCOME_GRADES[word], ""
    return None, f"field {label_col!r}: {raw!r} is not 0/1, true/false or an outcome ({', '.join(sorted(OUTCOME_GRADES))})"


def read_interactions(path, cv_ids=None, jd_ids=None, cv_col: str = "cv_id", jd_col: str = "jd_id",
                      label_col: str = "label", grade_col: str = "grade", strict: bool = True,
                      rejects: Rejects | None = None) -> pd.DataFrame:
    """cv_id, jd_id, label, grade. An id that names no known CV / JD (when cv_ids / jd_ids are given)
    is a malformed row. The same pair twice keeps its highest grade (counted)."""
    rejects = rejects if rejects is not None else Rejects()
    cv_ids = set(cv_ids) if cv_ids is not None else None
    jd_ids = set(jd_ids) if jd_ids is not None else None
    rows = []
    for where, record in _readable_records(path, "interaction", strict, rejects):
        cv, jd = record.get(cv_col), record.get(jd_col)
        if cv is None or str(cv).strip() == "":
            _bad(rejects, strict, f"interaction field {cv_col!r} is missing or empty", where, record)
            continue
        if jd is None or str(jd).strip() == "":
            _bad(rejects, strict, f"interaction field {jd_col!r} is missing or empty", where, record)
            continue
        cv, jd = str(cv).strip(), str(jd).strip()
        if cv_ids is not None and cv not in cv_ids:
            _bad(rejects, strict, f"interaction field {cv_col!r}: unknown CV {cv!r}", where, record)
            continue
        if jd_ids is not None and jd not in jd_ids:
            _bad(rejects, strict, f"interaction field {jd_col!r}: unknown JD {jd!r}", where, record)
            continue
        grade, problem = parse_grade(record, label_col, grade_col)
        if grade is None:
            _bad(rejects, strict, f"interaction {problem}", where, record)
            continue
        rows.append((cv, jd, grade))
    table = pd.DataFrame(rows, columns=["cv_id", "jd_id", "grade"])
    return _finish_interactions(table, rejects)


def _finish_interactions(table: pd.DataFrame, rejects: Rejects) -> pd.DataFrame:
    before = len(table)
    table = table.groupby(["cv_id", "jd_id"], as_index=False, sort=True)["grade"].max()
    rejects.add("duplicate (cv_id, jd_id) interaction (highest grade kept)", "interactions", n=before - len(table))
    table["label"] = (table["grade"] >= 1).astype(np.int8)
    table["grade"] = table["grade"].astype(np.int8)
    return table[["cv_id", "jd_id", "label", "grade"]]


def read_generic(cvs_path, jds_path, interactions_path, strict: bool = True, name: str = "generic", **cols) -> JobSet:
    """Any user's three files (see the module docstring); `cols` renames columns (cv_text_col, ...)."""
    rejects = Rejects()
    cvs = read_cvs(cvs_path, cols.get("cv_id_col", "cv_id"), cols.get("cv_text_col", "text"), strict, rejects)
    jds = read_jds(jds_path, cols.get("jd_id_col", "jd_id"), cols.get("jd_text_col", "text"),
                   cols.get("jd_title_col", "title"), cols.get("jd_group_col", ""), strict, rejects)
    interactions = read_interactions(interactions_path, cvs["cv_id"], jds["jd_id"],
                                     cols.get("cv_id_col", "cv_id"), cols.get("jd_id_col", "jd_id"),
                                     cols.get("label_col", "label"), cols.get("grade_col", "grade"), strict, rejects)
    return JobSet(name, cvs, jds, interactions, notes="labels as given in the interactions file", rejects=rejects)


# ------------------------------------------------------------------------------------- the real sets
def read_synthetic(folder) -> JobSet:
    """`genrec data synth jobs` output. The hidden `true_` columns stay out (truth.parquet and the
    true_ fields are for evaluation only); a JD's group is its title without the seniority word, i.e.
    its role, as any reader of the text sees it."""
    from genrec.girl import taxonomy as S

    folder = Path(folder)
    cvs = pq.read_table(folder / "cvs.parquet", columns=["cv_id", "text"]).to_pandas()
    jds = pq.read_table(folder / "jds.parquet", columns=["jd_id", "title", "text"]).to_pandas()
    words = "|".join(re.escape(w) for w in S.SENIORITY_WORD.values())
    jds["group"] = jds["title"].str.replace(rf"^(?:{words})\s+", "", regex=True)
    interactions = pq.read_table(folder / "interactions.parquet").to_pandas()
    rejects = Rejects()
    interactions = _finish_interactions(interactions[["cv_id", "jd_id", "grade"]].copy(), rejects)
    related: dict[str, set[str]] = {}
    for pair in S.RELATED_ROLES:
        a, b = (S.ROLES[r][0] for r in pair)
        related.setdefault(a, set()).add(b)
        related.setdefault(b, set()).add(a)
    return JobSet("synthetic", cvs, jds, interactions, related,
                  notes="noisy recruiter labels drawn from a hidden true fit (truth.parquet, evaluation only)",
                  rejects=rejects)


def read_livecareer_google(root, per_cv: int = 6, seed: int = 0, max_cvs: int = 0) -> JobSet:
    """livecareer resumes x Google postings with WEAK labels from category_map.csv.

    No recruiter saw these pairs: a resume category and a job category are declared match / related
    in category_map.csv, and every unmapped pair is a mismatch. Per CV, `per_cv` postings are drawn
    from each of the three relations (fewer where a relation has fewer postings): match -> grade 2
    (label 1), related -> grade 1 (label 0), mismatch -> grade 0. Resumes whose category matches no
    job category (e.g. CHEF) get no pairs and are counted. Postings repeated in several locations
    (same title and responsibilities) are kept once (counted).
    """
    root = Path(root)
    rejects = Rejects()
    resumes = pd.read_csv(root / "livecareer-resumes" / "livecareer_resumes_text.csv", dtype={"ID": str})
    empty = resumes["Resume_str"].isna() | (resumes["Resume_str"].fillna("").str.strip() == "")
    for i in np.flatnonzero(empty.to_numpy()):
        rejects.add("livecareer resume with empty text", f"livecareer_resumes_text.csv:row {i + 1}",
                    str(resumes.iloc[i]["ID"]))
    resumes = resumes[~empty]
    postings = pd.read_csv(root / "google-job-skills" / "job_skills.csv", encoding="utf-8-sig").fillna("")
    postings["row"] = np.arange(1, len(postings) + 1)
    duplicate = postings.duplicated(["Title", "Responsibilities"])
    rejects.add("Google posting repeated in another location (kept once)", "job_skills.csv", n=int(duplicate.sum()))
    postings = postings[~duplicate]
    no_text = postings["Responsibilities"].str.strip() == ""
    for row in postings.loc[no_text, "row"]:
        rejects.add("Google posting with empty Responsibilities", f"job_skills.csv:row {row}")
    postings = postings[~no_text]
    jds = pd.DataFrame({
        "jd_id": "g" + postings["row"].astype(str),
        "title": postings["Title"].str.strip(),
        "text": (postings["Title"] + "\nResponsibilities: " + postings["Responsibilities"] + "\nMinimum qualifications: "
                 + postings["Minimum Qualifications"] + "\nPreferred qualifications: " + postings["Preferred Qualifications"]),
        "group": postings["Category"],
    }).reset_index(drop=True)
    category_map = pd.read_csv(root / "category_map.csv")
    relation = {(r.resume_category, r.job_category): r.relation for r in category_map.itertuples()}
    matched_categories = {c for (c, _), rel in relation.items() if rel == "match"}
    unmatched = ~resumes["Category"].isin(matched_categories)
    rejects.add("resume category matches no job category in category_map.csv (no pairs)", "livecareer_resumes_text.csv",
                ", ".join(sorted(resumes.loc[unmatched, "Category"].unique())), n=int(unmatched.sum()))
    resumes = resumes[~unmatched]
    if max_cvs:
        resumes = resumes.sample(n=min(max_cvs, len(resumes)), random_state=seed)
    cvs = pd.DataFrame({"cv_id": "lc" + resumes["ID"], "text": resumes["Resume_str"]}).reset_index(drop=True)

    rng = np.random.default_rng(seed)
    groups = jds["group"].to_numpy()
    rows = []
    for cv_id, category in zip(cvs["cv_id"], resumes["Category"]):
        rel = np.array([relation.get((category, g), "mismatch") for g in groups])
        for name, grade in (("match", 2), ("related", 1), ("mismatch", 0)):
            pool = np.flatnonzero(rel == name)
            for j in rng.choice(pool, size=min(per_cv, len(pool)), replace=False):
                rows.append((cv_id, jds["jd_id"][j], grade))
    interactions = pd.DataFrame(rows, columns=["cv_id", "jd_id", "grade"])
    interactions = _finish_interactions(interactions, rejects)
    interactions["label"] = (interactions["grade"] >= 2).astype(np.int8)  # only "match" is a match
    # Two job categories are related when one resume category maps to both.
    related: dict[str, set[str]] = {}
    by_resume: dict[str, set[str]] = {}
    for (resume, job), _ in relation.items():
        by_resume.setdefault(resume, set()).add(job)
    for jobs in by_resume.values():
        for job in jobs:
            related.setdefault(job, set()).update(jobs - {job})
    return JobSet("livecareer_google", cvs, jds, interactions, related,
                  notes="WEAK labels: match/related/mismatch from resume and job categories (category_map.csv), "
                        "not from recruiters", rejects=rejects)


def read_vanetik(root, annotator: int = 1) -> JobSet:
    """65 anonymised CVs, 5 vacancies, human rankings of the 5 vacancies for CVs 1-30 (one annotator).

    rankings[i][j] is the place (1 best .. 5 worst) of vacancy j for CV i+1; grade = 5 - place, so
    preference pairs come from every two vacancies with different places (ties, which the file has,
    give none); label 1 for the first place.
    """
    root = Path(root)
    rejects = Rejects()
    cvs = read_cvs(root / "cvs.jsonl", strict=True, rejects=rejects)
    jds = read_jds(root / "5_vacancies.csv", id_col="id", text_col="job_description", title_col="job_title",
                   strict=True, rejects=rejects)
    rankings = json.loads((root / "rankings.json").read_text())[f"ANNOTATOR_{annotator}_RANKINGS"]
    rows = []
    for i, places in enumerate(rankings):
        if len(places) != len(jds):
            raise JobDataError(f"{root / 'rankings.json'}: ANNOTATOR_{annotator}_RANKINGS[{i}] has {len(places)} places, "
                               f"not one per vacancy ({len(jds)})")
        for jd_id, place in zip(jds["jd_id"], places):
            rows.append((str(i + 1), jd_id, 5 - int(place)))
    interactions = pd.DataFrame(rows, columns=["cv_id", "jd_id", "grade"])
    interactions = _finish_interactions(interactions, rejects)
    interactions["label"] = (interactions["grade"] == 4).astype(np.int8)
    return JobSet("vanetik", cvs, jds, interactions,
                  notes=f"human rankings of 5 vacancies per CV (annotator {annotator}), pairs by place", rejects=rejects)


def read_zh_screening(root) -> JobSet:
    """Chinese preliminary screening: one row per (candidate, job) with pass (1) / fail (0).

    The CV is the candidate's work and project experience, the JD the job's duties and requirements
    (text already stripped of stop words upstream). Every candidate applied to one posting, so
    preference pairs compare a passed and a failed candidate of the same job family (group; neg_kind
    other_cv), not two jobs for one CV.
    """
    path = Path(root) / "PreprocessedData.csv"
    data = pd.read_csv(path).fillna("")
    rejects = Rejects()
    cv_text = (data["clean_工作经历"].astype(str) + " " + data["clean_项目经历"].astype(str)).str.strip()
    jd_text = (data["clean_岗位职责"].astype(str) + " " + data["clean_岗位要求"].astype(str)).str.strip()
    bad = (cv_text == "") | (jd_text == "") | ~data["标签"].isin([0, 1])
    for i in np.flatnonzero(bad.to_numpy()):
        rejects.add("screening row with empty CV or JD text or a label not 0/1", f"{path}:row {i + 1}")
    keep = ~bad.to_numpy()
    jd_keys = pd.Series(jd_text[keep].to_numpy())
    codes, uniques = pd.factorize(jd_keys)
    # The job column (4 values, z-scored upstream) is the posting's job family: its group.
    family = pd.Series(data["岗位"].to_numpy()[keep]).round(4).astype(str)
    jds = pd.DataFrame({"jd_id": [f"zhjd{k}" for k in range(len(uniques))], "title": "", "text": uniques,
                        "group": [f"job{f}" for f in family.groupby(codes).first().to_numpy()]})
    rows = np.flatnonzero(keep)
    cvs = pd.DataFrame({"cv_id": [f"zh{i + 1}" for i in rows], "text": cv_text.to_numpy()[rows]})
    interactions = pd.DataFrame({"cv_id": cvs["cv_id"], "jd_id": jds["jd_id"].to_numpy()[codes],
                                 "grade": data["标签"].to_numpy()[rows].astype(int)})
    interactions = _finish_interactions(interactions, rejects)
    return JobSet("zh_screening", cvs, jds, interactions,
                  notes="pass/fail of a preliminary screening, one job per candidate; heavy imbalance", rejects=rejects)


def read_jobset(source: str, path: str = "", **kwargs) -> JobSet:
    """By name: synthetic (a synth folder), livecareer_google / vanetik / zh_screening (their folder
    under ../shared/data/job-matching; livecareer_google takes the job-matching folder itself)."""
    readers = {"synthetic": read_synthetic, "livecareer_google": read_livecareer_google,
               "vanetik": read_vanetik, "zh_screening": read_zh_screening}
    if source not in readers:
        raise ValueError(f"unknown job data source {source!r}; known: {sorted(readers)} or generic")
    return readers[source](path, **kwargs)
