"""Synthetic job market: CVs, job descriptions (JDs) and recruiter feedback with a hidden true fit.

This is the embedded data set of the GIRL side of genrec (generate a JD for a CV, learn a reward
model from recruiter feedback, align the generator with PPO). Its ground truth is planted and
hidden, so tests can check what the reward model and PPO learn:

- every CV and JD is drawn from a small taxonomy (role families with their skill pools, seniority
  levels with years of experience, cities, remote work) and written as readable English text;
  the drawn fields are kept in columns prefixed `true_`, which no model may read;
- `true_fit(cv, jd)` is the hidden fit of a CV-JD pair, a documented function of the fields
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
import re
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# ------------------------------------------------------------------------------ taxonomy
# role -> (display title, core skills, duties). Duties are prose that names no skill, role,
# seniority word, city or the word "remote", so that parsing a JD finds exactly its fields.
ROLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "data scientist": (
        "Data Scientist",
        ("Python", "pandas", "scikit-learn", "PyTorch", "TensorFlow", "SQL", "statistics", "A/B testing",
         "machine learning", "deep learning", "NLP", "Spark", "Jupyter", "data visualization"),
        ("build models that predict customer behaviour", "design experiments with the product team",
         "turn raw data into decisions", "present findings to the leadership team"),
    ),
    "backend engineer": (
        "Backend Engineer",
        ("Golang", "Java", "PostgreSQL", "Kubernetes", "Docker", "REST APIs", "gRPC", "Redis", "Kafka",
         "microservices", "Spring Boot", "Node.js", "MySQL", "system design"),
        ("design and run the services behind our products", "keep our systems fast and reliable",
         "review code and mentor colleagues", "own features from idea to production"),
    ),
    "frontend engineer": (
        "Frontend Engineer",
        ("JavaScript", "TypeScript", "React", "Vue.js", "Angular", "HTML", "CSS", "Redux", "webpack",
         "web accessibility", "Next.js", "responsive design", "Jest"),
        ("build the screens our customers use every day", "work closely with designers",
         "make our web app fast and pleasant", "review code and mentor colleagues"),
    ),
    "devops engineer": (
        "DevOps Engineer",
        ("Terraform", "AWS", "Kubernetes", "Docker", "Ansible", "Jenkins", "Linux", "Prometheus", "Grafana",
         "CI/CD", "Bash", "Helm", "Azure", "Google Cloud"),
        ("automate how we build and ship software", "keep our platform secure and available",
         "run our cloud infrastructure", "help teams deploy with confidence"),
    ),
    "mobile developer": (
        "Mobile Developer",
        ("Swift", "Kotlin", "SwiftUI", "Jetpack Compose", "Xcode", "Firebase", "Objective-C", "Flutter", "Dart",
         "React Native", "Core Data", "push notifications", "mobile UI design"),
        ("build the apps our customers carry in their pockets", "ship new app releases every two weeks",
         "work closely with designers", "keep our apps fast and stable"),
    ),
    "product designer": (
        "Product Designer",
        ("Figma", "Sketch", "user research", "wireframing", "prototyping", "interaction design", "design systems",
         "usability testing", "Adobe Illustrator", "Adobe Photoshop", "visual design", "information architecture",
         "journey mapping"),
        ("shape how our customers experience the product", "talk to users every week",
         "turn rough ideas into polished flows", "work with engineers on every release"),
    ),
    "nurse": (
        "Nurse",
        ("patient care", "medication administration", "wound care", "triage", "IV therapy",
         "electronic health records", "BLS certification", "ACLS certification", "infection control",
         "vital signs monitoring", "patient education", "intensive care", "pediatric care", "palliative care"),
        ("care for patients on a busy ward", "work with doctors and therapists",
         "support patients and their families", "keep accurate records of every shift"),
    ),
    "accountant": (
        "Accountant",
        ("bookkeeping", "IFRS", "US GAAP", "financial reporting", "tax preparation", "accounts payable",
         "accounts receivable", "auditing", "SAP", "QuickBooks", "MS Excel", "budgeting", "payroll",
         "reconciliation"),
        ("close the books every month", "prepare statements for the board",
         "work with auditors and tax advisers", "keep our finances in order"),
    ),
    "teacher": (
        "Teacher",
        ("lesson planning", "classroom management", "curriculum design", "mathematics teaching", "literacy",
         "special education", "student assessment", "Google Classroom", "differentiated instruction", "phonics",
         "STEM education", "behaviour management", "parent communication"),
        ("teach small classes of motivated pupils", "help every child make progress",
         "work with parents and colleagues", "bring fresh ideas to the school"),
    ),
    "sales representative": (
        "Sales Representative",
        ("CRM", "Salesforce", "prospecting", "cold calling", "contract negotiation", "account management",
         "sales forecasting", "B2B sales", "pipeline management", "HubSpot", "closing deals",
         "customer retention", "territory planning"),
        ("win new customers in your region", "grow our existing accounts",
         "meet clients face to face", "hit ambitious quarterly targets"),
    ),
    "marketing manager": (
        "Marketing Manager",
        ("SEO", "SEM", "Google Analytics", "content marketing", "email marketing", "social media marketing",
         "brand strategy", "copywriting", "marketing automation", "campaign management", "market research",
         "HubSpot", "paid advertising"),
        ("grow awareness of our brand", "plan and run our campaigns",
         "work with sales on new customers", "measure what works and drop what does not"),
    ),
    "mechanical engineer": (
        "Mechanical Engineer",
        ("SolidWorks", "AutoCAD", "finite element analysis", "CAD modeling", "thermodynamics", "GD&T", "MATLAB",
         "ANSYS", "product development", "manufacturing processes", "3D printing", "HVAC design",
         "tolerance analysis"),
        ("design parts for our next machines", "work with the factory on new products",
         "test designs in our workshop", "improve products already in the field"),
    ),
}
ROLE_NAMES = tuple(ROLES)
# Extra names under which a role is recognised in free text (the display title always is).
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "data scientist": ("data scientist", "machine learning scientist"),
    "backend engineer": ("backend engineer", "back-end engineer", "backend developer", "back-end developer"),
    "frontend engineer": ("frontend engineer", "front-end engineer", "frontend developer", "front-end developer"),
    "devops engineer": ("devops engineer", "site reliability engineer", "platform engineer"),
    "mobile developer": ("mobile developer", "mobile engineer", "app developer"),
    "product designer": ("product designer", "ux designer", "ui/ux designer"),
    "nurse": ("registered nurse", "nurse"),
    "accountant": ("accountant",),
    "teacher": ("school teacher", "teacher"),
    "sales representative": ("sales representative", "sales executive", "account executive"),
    "marketing manager": ("marketing manager",),
    "mechanical engineer": ("mechanical engineer",),
}
# Pairs of roles that share work (a related role earns part of the role credit).
RELATED_ROLES = frozenset(
    frozenset(pair) for pair in (
        *[(a, b) for i, a in enumerate(("data scientist", "backend engineer", "frontend engineer",
                                         "devops engineer", "mobile developer"))
          for b in ("data scientist", "backend engineer", "frontend engineer", "devops engineer",
                    "mobile developer")[i + 1:]],
        ("product designer", "frontend engineer"), ("product designer", "mobile developer"),
        ("product designer", "marketing manager"), ("sales representative", "marketing manager"),
    )
)
SHARED_SKILLS = ("communication skills", "teamwork", "project management", "stakeholder management", "Agile",
                 "English", "German", "French", "Spanish", "problem solving", "time management")

SENIORITY = ("junior", "mid", "senior", "lead")
SENIORITY_WORD = {"junior": "Junior", "mid": "Mid-level", "senior": "Senior", "lead": "Lead"}
SENIORITY_ALIASES = {
    "junior": ("junior", "entry-level", "entry level", "graduate", "trainee"),
    "mid": ("mid-level", "mid level", "intermediate"),
    "senior": ("senior",),
    "lead": ("lead", "principal"),
}
YEARS = {"junior": (1, 2), "mid": (3, 5), "senior": (6, 9), "lead": (10, 20)}  # inclusive
SENIORITY_PMF = (0.25, 0.35, 0.28, 0.12)

LOCATIONS = ("Berlin", "London", "Paris", "Amsterdam", "Madrid", "New York", "Toronto", "Singapore")
LOCATION_ALIASES = {"New York": ("new york", "nyc")}
COMPANIES = ("Northwind", "Bluefin Labs", "Helios", "Meridian Group", "Copperleaf", "Orbis", "Tidewater",
             "Kestrel & Co", "Brightline", "Foxglove")

# ------------------------------------------------------------------------------ generation knobs
CV_CORE_SKILLS = (5, 8)  # core skills on a CV, inclusive
CV_SHARED_SKILLS = (0, 2)
P_CV_NOISE_SKILL = 0.3  # a CV lists one skill from another role's pool (it is a real skill of the person)
JD_REQUIRED_SKILLS = (3, 6)
P_JD_SHARED_SKILL = 0.3
P_REMOTE = 0.2

# ------------------------------------------------------------------------------ the true fit
# fit = W_ROLE·role + W_SENIORITY·seniority + W_SKILLS·skills + W_LOCATION·location, each term in [0, 1]:
#   role      1 same role, RELATED_CREDIT for a related role (RELATED_ROLES), 0 otherwise or unknown;
#   seniority 1 - |level(cv) - level(jd)| / 3 over junior < mid < senior < lead; 0 when unknown;
#   skills    coverage |cv skills ∩ required| / |required| (0 when nothing is required), so listing
#             every skill in a JD lowers the fit instead of raising it;
#   location  1 when the JD is remote or in the CV's city, 0 otherwise (or unknown).
# Role dominates: it has the largest weight, and skill coverage follows the role (skills pools).
W_ROLE, W_SENIORITY, W_SKILLS, W_LOCATION = 0.40, 0.20, 0.25, 0.15
RELATED_CREDIT = 0.4

# ------------------------------------------------------------------------------ recruiter feedback
# P(label = 1) = sigmoid(LABEL_SLOPE · (fit - LABEL_MIDPOINT)), then each label flips with LABEL_FLIP.
# Grade: 0 no interest (label 0); for label 1 a funnel: 1 applied/shortlisted, 2 interviewed
# (probability fit**GRADE_EXPONENT), 3 hired (again fit**GRADE_EXPONENT once interviewed).
LABEL_SLOPE = 12.0
LABEL_MIDPOINT = 0.7
LABEL_FLIP = 0.05
GRADE_EXPONENT = 3.0
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


def true_fit(cv_row: Mapping[str, Any], jd_fields: Mapping[str, Any]) -> float:
    """The hidden ground-truth fit in [0, 1] of a CV and a JD (see the weights above).

    cv_row: role, seniority, skills, location, with or without the `true_` prefix (a CV table row).
    jd_fields: role, seniority, required_skills (or skills), location, remote, with or without the
    `true_` prefix (a JD table row or `parse_jd_text`'s result); None means unknown and earns 0.
    """
    cv_role, jd_role = _get(cv_row, "role"), _get(jd_fields, "role")
    if jd_role is None:
        role = 0.0
    elif jd_role == cv_role:
        role = 1.0
    elif frozenset((cv_role, jd_role)) in RELATED_ROLES:
        role = RELATED_CREDIT
    else:
        role = 0.0
    cv_level, jd_level = _level(_get(cv_row, "seniority")), _level(_get(jd_fields, "seniority"))
    seniority = 0.0 if cv_level is None or jd_level is None else 1.0 - abs(cv_level - jd_level) / 3.0
    required = set(_get(jd_fields, "required_skills", "skills") or ())
    skills = len(required & set(_get(cv_row, "skills") or ())) / len(required) if required else 0.0
    jd_location = _get(jd_fields, "location")
    same_city = jd_location is not None and jd_location == _get(cv_row, "location")
    location = 1.0 if bool(_get(jd_fields, "remote")) or same_city else 0.0
    return W_ROLE * role + W_SENIORITY * seniority + W_SKILLS * skills + W_LOCATION * location


def parse_jd_text(text: str) -> dict:
    """Role, seniority, required skills, location and remote found in free text by keyword matching.

    role: the role alias that occurs first (None if none); seniority: the seniority word right before
    that role mention, else the first seniority word anywhere (None if none); skills: every taxonomy
    skill mentioned (sorted); location: the first city mentioned (None if none); remote: the word
    "remote" occurs, not negated ("no remote", "not remote", "non-remote").
    Never raises on strings; non-strings count as empty text.
    """
    text = text if isinstance(text, str) else ""
    role, seniority = None, None
    match = _ROLE_RE.search(text)
    if match:
        role = _ROLE_OF[match.group(0).lower()]
        before = _SENIORITY_BEFORE_RE.search(text[:match.start()])
        if before:
            seniority = _SENIORITY_OF[_norm(before.group(1))]
    if seniority is None:
        for found in _SENIORITY_RE.finditer(text):
            seniority = _SENIORITY_OF[_norm(found.group(0))]
            break
    skills = sorted({_SKILL_OF[m.group(0).lower()] for m in _SKILL_RE.finditer(text)})
    where = _LOCATION_RE.search(text)
    location = _LOCATION_OF[_norm(where.group(0))] if where else None
    remote = bool(_REMOTE_RE.search(text)) and not _NOT_REMOTE_RE.search(text)
    return {"role": role, "seniority": seniority, "required_skills": skills, "location": location,
            "remote": remote}


def fit_of_text(cv_row: Mapping[str, Any], jd_text: str) -> float:
    """The true fit of a CV and any JD text (e.g. a model's output), parsed with `parse_jd_text`."""
    return true_fit(cv_row, parse_jd_text(jd_text))


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


def match_probability(fit: np.ndarray | float) -> np.ndarray:
    """P(label = 1 | fit) including the label flips."""
    p = 1.0 / (1.0 + np.exp(-LABEL_SLOPE * (np.asarray(fit, dtype=np.float64) - LABEL_MIDPOINT)))
    return p * (1 - LABEL_FLIP) + (1 - p) * LABEL_FLIP


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` predicting binary `labels` (ties count half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


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


def _get(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        for key in (f"true_{name}", name):
            if key in row:
                return row[key]
    return None


def _level(seniority: Any) -> int | None:
    return SENIORITY.index(seniority) if seniority in SENIORITY else None


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


# ------------------------------------------------------------------------------ keyword matching
def _norm(word: str) -> str:
    return re.sub(r"[\s-]+", " ", word.lower())


_ALL_SKILLS = sorted({s for _, skills, _ in ROLES.values() for s in skills} | set(SHARED_SKILLS))
_SKILL_OF = {s.lower(): s for s in _ALL_SKILLS}


def _keywords(phrases) -> str:
    """One regex for a set of phrases: longest first, so 'React Native' wins over 'React' at the same
    position; the lookarounds keep 'Java' out of 'JavaScript', 'SQL' out of 'PostgreSQL'."""
    body = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return rf"(?<![\w+#/&])(?:{body})(?![\w+#/&])"


_SKILL_RE = re.compile(_keywords(_ALL_SKILLS), re.IGNORECASE)
_ROLE_OF = {}
for _role, (_title, _, _) in ROLES.items():
    for _alias in (_title.lower(), *ROLE_ALIASES.get(_role, ())):
        _ROLE_OF[_alias] = _role
_ROLE_RE = re.compile(_keywords(_ROLE_OF), re.IGNORECASE)
_SENIORITY_OF = {_norm(a): level for level, aliases in SENIORITY_ALIASES.items() for a in aliases}
_SENIORITY_ALT = "|".join(re.escape(a).replace(r"\-", "[\\s-]").replace(r"\ ", "[\\s-]")
                          for a in sorted(_SENIORITY_OF, key=len, reverse=True))
_SENIORITY_RE = re.compile(rf"(?<![\w-])(?:{_SENIORITY_ALT})(?![\w-])", re.IGNORECASE)
_SENIORITY_BEFORE_RE = re.compile(rf"(?<![\w-])({_SENIORITY_ALT})[\s-]+$", re.IGNORECASE)
_LOCATION_OF = {loc.lower(): loc for loc in LOCATIONS}
for _loc, _aliases in LOCATION_ALIASES.items():
    _LOCATION_OF.update({_norm(a): _loc for a in _aliases})
_LOCATION_RE = re.compile(_keywords(_LOCATION_OF), re.IGNORECASE)
_REMOTE_RE = re.compile(r"\bremote\b", re.IGNORECASE)
_NOT_REMOTE_RE = re.compile(r"\b(?:no|not|non)[\s-]+remote\b", re.IGNORECASE)
