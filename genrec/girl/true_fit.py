"""The synthetic market's hidden ground truth: the true fit of a CV and a JD, the recruiter-feedback
model drawn from it, and a keyword parser that reads any JD text (a model's output) for the fields
the fit needs, so evaluation can score generated text. Text it cannot parse scores 0, never an error.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from genrec.girl.taxonomy import (ALL_SKILLS, LOCATION_ALIASES, LOCATIONS, RELATED_ROLES, ROLE_ALIASES, ROLES,
                                  SENIORITY, SENIORITY_ALIASES)

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


def match_probability(fit: np.ndarray | float) -> np.ndarray:
    """P(label = 1 | fit) including the label flips."""
    p = 1.0 / (1.0 + np.exp(-LABEL_SLOPE * (np.asarray(fit, dtype=np.float64) - LABEL_MIDPOINT)))
    return p * (1 - LABEL_FLIP) + (1 - p) * LABEL_FLIP


def _get(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        for key in (f"true_{name}", name):
            if key in row:
                return row[key]
    return None


def _level(seniority: Any) -> int | None:
    return SENIORITY.index(seniority) if seniority in SENIORITY else None


# ------------------------------------------------------------------------------ keyword matching
def _norm(word: str) -> str:
    return re.sub(r"[\s-]+", " ", word.lower())


_SKILL_OF = {s.lower(): s for s in ALL_SKILLS}


def _keywords(phrases) -> str:
    """One regex for a set of phrases: longest first, so 'React Native' wins over 'React' at the same
    position; the lookarounds keep 'Java' out of 'JavaScript', 'SQL' out of 'PostgreSQL'."""
    body = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return rf"(?<![\w+#/&])(?:{body})(?![\w+#/&])"


_SKILL_RE = re.compile(_keywords(ALL_SKILLS), re.IGNORECASE)
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
