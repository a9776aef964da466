"""The synthetic job market: determinism, readable texts, a parseable true fit, and noisy labels."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from genrec.girl import market as J
from genrec.girl import taxonomy as T
from genrec.girl import true_fit as F
from genrec.girl.metrics import auc

SMALL = dict(num_cvs=300, num_jds=240)


@pytest.fixture(scope="module")
def market():
    cvs, jds = J.generate_market(**SMALL, seed=0)
    pairs = J.interactions(cvs, jds, seed=0)
    return cvs, jds, pairs, J.truth_table(cvs, jds, pairs)


def test_same_seed_same_tables_other_seed_other_tables():
    cvs, jds = J.generate_market(**SMALL, seed=5)
    again_cvs, again_jds = J.generate_market(**SMALL, seed=5)
    other_cvs, other_jds = J.generate_market(**SMALL, seed=6)
    assert cvs.equals(again_cvs) and jds.equals(again_jds)
    assert not cvs.equals(other_cvs) and not jds.equals(other_jds)
    assert J.interactions(cvs, jds, 5).equals(J.interactions(cvs, jds, 5))
    assert not J.interactions(cvs, jds, 5).equals(J.interactions(cvs, jds, 6))


def test_same_seed_writes_byte_identical_files(tmp_path):
    names = ("cvs.parquet", "jds.parquet", "interactions.parquet", "truth.parquet", "synth.json")
    summary = J.synth_jobs(tmp_path / "a", num_cvs=120, num_jds=90, seed=3, per_cv=6)
    J.synth_jobs(tmp_path / "b", num_cvs=120, num_jds=90, seed=3, per_cv=6)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    recorded = json.loads((tmp_path / "a" / "synth.json").read_text())
    assert recorded["config"] == {"num_cvs": 120, "num_jds": 90, "seed": 3, "per_cv": 6}
    assert recorded["summary"]["interactions"] == summary["interactions"] == 120 * 6
    interactions = pq.read_table(tmp_path / "a" / "interactions.parquet")
    assert interactions.column_names == ["cv_id", "jd_id", "label", "grade"]  # no hidden truth in here
    truth = pq.read_table(tmp_path / "a" / "truth.parquet")
    assert truth["cv_id"].equals(interactions["cv_id"]) and truth["jd_id"].equals(interactions["jd_id"])


def test_texts_are_readable_and_mention_their_fields(market):
    cvs, jds, _, _ = market
    for cv in cvs.to_pylist():
        text = cv["text"].lower()
        assert cv["text"].strip() and cv["true_role"] in text
        assert T.SENIORITY_WORD[cv["true_seniority"]].lower() in text
        assert cv["true_location"].lower() in text and f"{cv['true_years']} year" in text
        assert all(skill.lower() in text for skill in cv["true_skills"]), cv
        lo, hi = T.YEARS[cv["true_seniority"]]
        assert lo <= cv["true_years"] <= hi
    for jd in jds.to_pylist():
        assert jd["title"] == f"{T.SENIORITY_WORD[jd['true_seniority']]} {T.ROLES[jd['true_role']][0]}"
        assert jd["title"] in jd["text"] and jd["true_location"] in jd["text"]
        assert all(skill in jd["text"] for skill in jd["true_required_skills"]), jd
        assert ("remote" in jd["text"].lower()) == jd["true_remote"]
    # The taxonomy is varied: every role, seniority and city occurs; texts are mostly distinct.
    assert set(cvs["true_role"].to_pylist()) == set(T.ROLE_NAMES)
    assert set(jds["true_seniority"].to_pylist()) == set(T.SENIORITY)
    assert set(cvs["true_location"].to_pylist()) == set(T.LOCATIONS)
    assert len(set(cvs["text"].to_pylist())) == cvs.num_rows


def test_every_skill_name_parses_to_itself_alone():
    # Guards the keyword matcher against names hiding inside others ('Java' in 'JavaScript',
    # 'SQL' in 'PostgreSQL', 'React' in 'React Native').
    for skill in T.ALL_SKILLS:
        assert F.parse_jd_text(f"Requirements: {skill}.")["required_skills"] == [skill]


def test_fit_of_text_recovers_true_fit_of_generated_jds(market):
    # The parser reads the generator's own templates, so it should recover the fields exactly and
    # the fit to float precision. We allow 2% of JDs to differ (a future template that happens to
    # contain a keyword) but no more than one term's worth (the smallest weight, 0.15).
    cvs, jds, _, _ = market
    cv_rows = cvs.to_pylist()[:20]
    diffs = np.array([[abs(F.fit_of_text(cv, jd["text"]) - F.true_fit(cv, jd)) for cv in cv_rows]
                      for jd in jds.to_pylist()])
    assert (diffs.max(axis=1) < 1e-9).mean() >= 0.98
    assert diffs.max() <= F.W_LOCATION + 1e-9


def test_unparseable_or_stuffed_text_scores_low(market):
    cvs, jds, _, _ = market
    cv = cvs.to_pylist()[0]
    for junk in ("", "lorem ipsum dolor sit amet", "!!!", None, 42):
        assert F.fit_of_text(cv, junk) == 0.0
    # Listing every skill of the taxonomy buys almost no skill credit: coverage of required skills.
    stuffed = "Requirements: " + ", ".join(T.ALL_SKILLS)
    assert F.fit_of_text(cv, stuffed) < 0.1


def test_fit_is_highest_for_a_jd_made_for_the_cvs_own_role_seniority_and_location(market):
    cvs, jds, _, _ = market
    rng = np.random.default_rng(0)
    for cv in cvs.to_pylist()[:60]:
        own = J.make_jd(rng, cv["true_role"], cv["true_seniority"], cv["true_location"], remote=False)
        other_role = next(r for r in T.ROLE_NAMES if r != cv["true_role"])
        other_level = T.SENIORITY[(T.SENIORITY.index(cv["true_seniority"]) + 2) % 4]
        other_city = next(c for c in T.LOCATIONS if c != cv["true_location"])
        fit = F.true_fit(cv, own)
        for change in ({"true_role": other_role}, {"true_seniority": other_level}, {"true_location": other_city}):
            assert F.true_fit(cv, {**own, **change}) < fit, change
        assert F.fit_of_text(cv, own["text"]) == pytest.approx(fit)
        # ... and the same JD with the CV's skills as requirements is a perfect fit.
        assert F.true_fit(cv, {**own, "true_required_skills": cv["true_skills"]}) == pytest.approx(1.0)
    # Over the whole market, a CV's best JD is of its own role.
    jd_rows = jds.to_pylist()
    best_roles = [jd_rows[int(np.argmax([F.true_fit(cv, jd) for jd in jd_rows]))]["true_role"] == cv["true_role"]
                  for cv in cvs.to_pylist()[:100]]
    assert np.mean(best_roles) >= 0.95


def test_interactions_pair_each_cv_with_distinct_likely_and_random_jds(market):
    cvs, jds, pairs, truth = market
    assert pairs.num_rows == cvs.num_rows * J.PER_CV
    keys = list(zip(pairs["cv_id"].to_pylist(), pairs["jd_id"].to_pylist()))
    assert len(set(keys)) == len(keys)
    role_of_cv = dict(zip(cvs["cv_id"].to_pylist(), cvs["true_role"].to_pylist()))
    role_of_jd = dict(zip(jds["jd_id"].to_pylist(), jds["true_role"].to_pylist()))
    same_role = np.mean([role_of_cv[c] == role_of_jd[j] for c, j in keys])
    assert 0.45 < same_role < 0.65  # half drawn from the own role, plus random hits (1/12 of the rest)
    labels, grades = np.asarray(pairs["label"]), np.asarray(pairs["grade"])
    assert set(np.unique(grades)) <= {0, 1, 2, 3} and ((grades > 0) == (labels == 1)).all()
    fits = np.asarray(truth["true_fit"])
    assert ((0 <= fits) & (fits <= 1)).all()


def test_labels_are_noisy_but_follow_true_fit(market):
    _, _, pairs, truth = market
    labels, fits = np.asarray(pairs["label"]), np.asarray(truth["true_fit"])
    assert 0.15 < labels.mean() < 0.45
    assert fits[labels == 1].mean() - fits[labels == 0].mean() > 0.2
    fit_auc = auc(fits, labels)
    assert 0.75 < fit_auc < 0.99, fit_auc
    # Hires come from higher fits than mere applications.
    grades = np.asarray(pairs["grade"])
    assert fits[grades == 3].mean() > fits[grades == 1].mean()


def test_auc_helper():
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
