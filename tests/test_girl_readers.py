"""CV / JD / interaction readers: generic files with clear errors, and the real sets in ../shared/data."""
import json

import pandas as pd
import pytest

from genrec.data.rejects import Rejects
from genrec.girl.readers import (JobDataError, read_cvs, read_generic, read_interactions, read_jds,
                                 read_livecareer_google, read_vanetik, read_zh_screening)

from conftest import shared_data


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_error_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "cvs.jsonl", [{"cv_id": "a", "text": "Nurse in Paris"},
                                                {"cv_id": "b", "text": "  "},
                                                {"cv_id": "c", "text": "Teacher"}])
    with pytest.raises(JobDataError, match=r"cvs\.jsonl:2: CV field 'text' is missing, empty"):
        read_cvs(path)


def test_csv_error_names_row_and_field(tmp_path):
    path = tmp_path / "jds.csv"
    path.write_text("jd_id,title,text\nj1,Nurse,Care for patients\n,Teacher,Teach pupils\n")
    with pytest.raises(JobDataError, match=r"jds\.csv:row 2: JD field 'jd_id' is missing"):
        read_jds(path)


def test_not_json_and_duplicate_ids_are_counted_when_not_strict(tmp_path):
    path = write_jsonl(tmp_path / "cvs.jsonl", [{"cv_id": "a", "text": "x y"}, "{not json",
                                                {"cv_id": "a", "text": "again"}, {"cv_id": 7, "text": "seven"}])
    rejects = Rejects()
    cvs = read_cvs(path, strict=False, rejects=rejects)
    assert cvs["cv_id"].tolist() == ["a", "7"]
    assert rejects.total == 2
    assert any("cvs.jsonl:2" in example for example in rejects.examples.values())
    assert any("duplicate id 'a'" in reason for reason in rejects.counts)


def test_interactions_labels_outcomes_and_unknown_ids(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"cv_id": ["a", "a", "b", "b"], "jd_id": ["j1", "j2", "j1", "j2"],
                  "outcome": ["hired", "rejected", "interviewed", "applied"]}).to_parquet(path)
    table = read_interactions(path, ["a", "b"], ["j1", "j2"], label_col="outcome")
    grades = dict(zip(zip(table["cv_id"], table["jd_id"]), table["grade"]))
    assert grades == {("a", "j1"): 3, ("a", "j2"): 0, ("b", "j1"): 2, ("b", "j2"): 1}
    assert table.set_index(["cv_id", "jd_id"])["label"].to_dict()[("a", "j2")] == 0

    bad = tmp_path / "bad.csv"
    bad.write_text("cv_id,jd_id,label\na,j1,1\na,j9,0\n")
    with pytest.raises(JobDataError, match=r"bad\.csv:row 2: interaction field 'jd_id': unknown JD 'j9'"):
        read_interactions(bad, ["a"], ["j1"])
    maybe = tmp_path / "maybe.jsonl"
    write_jsonl(maybe, [{"cv_id": "a", "jd_id": "j1", "label": "maybe"}])
    with pytest.raises(JobDataError, match=r"maybe\.jsonl:1: interaction field 'label': 'maybe' is not 0/1"):
        read_interactions(maybe)


def test_generic_set_from_three_files(tmp_path):
    cvs = write_jsonl(tmp_path / "cvs.jsonl", [{"cv_id": "a", "text": "Nurse"}, {"cv_id": "b", "text": "Teacher"}])
    jds = tmp_path / "jds.csv"
    jds.write_text("jd_id,title,text,role\nj1,Nurse,Ward nurse,nurse\nj2,Teacher,Class teacher,teacher\n")
    log = write_jsonl(tmp_path / "log.jsonl", [{"cv_id": "a", "jd_id": "j1", "label": True},
                                               {"cv_id": "a", "jd_id": "j2", "label": False},
                                               {"cv_id": "a", "jd_id": "j1", "label": 0}])
    jobs = read_generic(cvs, jds, log, jd_group_col="role")
    assert jobs.jds["group"].tolist() == ["nurse", "teacher"]
    assert len(jobs.interactions) == 2  # the repeated pair keeps its highest grade, counted
    assert jobs.rejects.total == 1


@pytest.mark.shared_data
def test_livecareer_google_weak_labels():
    root = shared_data("job-matching")
    jobs = read_livecareer_google(root, per_cv=2, max_cvs=40)
    assert "WEAK" in jobs.notes
    assert len(jobs.cvs) == 40 and jobs.cvs["cv_id"].is_unique
    assert set(jobs.interactions["grade"]) == {0, 1, 2}
    # match pairs are label 1, related and mismatch 0; the postings repeated across locations are counted
    assert (jobs.interactions["label"] == (jobs.interactions["grade"] == 2)).all()
    assert any("repeated" in reason for reason in jobs.rejects.counts)
    assert "Finance" in jobs.related.get("Business Strategy", set()) or jobs.related


@pytest.mark.shared_data
def test_vanetik_pairs_from_rankings():
    jobs = read_vanetik(shared_data("job-matching", "vanetik-vacancy-resume"))
    assert len(jobs.jds) == 5 and len(jobs.cvs) == 65
    first = jobs.interactions[jobs.interactions["cv_id"] == "1"].set_index("jd_id")["grade"]
    # CV 1's places for the vacancies in file order are [2, 1, 4, 3, 5]; grade = 5 - place
    assert [first[j] for j in jobs.jds["jd_id"]] == [3, 4, 1, 2, 0]
    assert set(jobs.interactions["cv_id"]) == {str(i) for i in range(1, 31)}


@pytest.mark.shared_data
def test_zh_screening_pass_fail():
    jobs = read_zh_screening(shared_data("job-matching", "zh-preliminary-screening"))
    assert len(jobs.interactions) == len(jobs.cvs) > 1000
    assert 50 < jobs.interactions["label"].sum() < 200
    assert len(jobs.jds) >= 4
