"""prepare-jobs on the synthetic market: splits by CV, negatives, SFT rows that train-sft tokenizes."""
import json

import pandas as pd
import pytest

from genrec.config import PrepareJobsConfig
from genrec.data.templates import get_template
from genrec.data.tokenize import RowTooLongError, tokenize_rows
from genrec.girl import prompts


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    from genrec.girl.prepare import prepare_jobs

    out = tmp_path_factory.mktemp("jobs") / "prepared"
    stats = prepare_jobs(PrepareJobsConfig(out_dir=str(out), synth_num_cvs=150, synth_num_jds=100,
                                           valid_share=0.2, test_share=0.2, max_cv_words=40, truncated_negatives=1))
    return out, stats


def read_split(folder, split):
    return pd.read_parquet(folder / f"{split}.parquet") if (folder / f"{split}.parquet").exists() \
        else pd.read_parquet(folder / split)


def test_no_cv_in_two_splits(prepared):
    out, stats = prepared
    seen = {}
    for kind, folder, column in (("sft", out / "sft", "user_id"), ("pairs", out / "pairs", "cv_id"),
                                 ("pairs", out / "pairs", "neg_cv_id"), ("interactions", out / "interactions", "cv_id")):
        for split in ("train", "valid", "test"):
            ids = set(read_split(folder, split)[column])
            assert ids, (kind, split)
            for cv in ids:
                assert seen.setdefault(cv, split) == split, f"{cv} in {seen[cv]} and {split} ({kind})"
    cvs = pd.read_parquet(out / "cvs.parquet")
    assert cvs.set_index("cv_id")["split"].to_dict() == {cv: s for cv, s in seen.items() if cv in set(cvs["cv_id"])}


def test_preference_rows(prepared):
    out, stats = prepared
    pairs = pd.concat(read_split(out / "pairs", s) for s in ("train", "valid", "test"))
    inter = pd.concat(read_split(out / "interactions", s) for s in ("train", "valid", "test"))
    matched = set(zip(inter.loc[inter["label"] == 1, "cv_id"], inter.loc[inter["label"] == 1, "jd_id"]))
    assert set(pairs["neg_kind"]) == {"observed", "hard", "related", "random", "truncated"}
    assert all((cv, jd) in matched for cv, jd in zip(pairs["cv_id"], pairs["pos_jd_id"]))
    assert not any((cv, jd) in matched for cv, jd in zip(pairs["cv_id"], pairs["neg_jd_id"]))
    # truncated JD+ (a degenerate JD must score lower), in training only: held-out pairs stay real JDs
    cut = pairs[pairs["neg_kind"] == "truncated"]
    assert len(cut) and "truncated" not in set(read_split(out / "pairs", "test")["neg_kind"])
    assert all(pos.startswith(neg) and len(neg.split()) < len(pos.split()) for pos, neg in zip(cut["pos_text"], cut["neg_text"]))
    assert not pairs.duplicated(["cv_id", "pos_jd_id", "neg_cv_id", "neg_jd_id"]).any()
    jds = pd.read_parquet(out / "jds.parquet").set_index("jd_id")
    hard = pairs[pairs["neg_kind"] == "hard"]
    assert (jds.loc[hard["pos_jd_id"], "group"].to_numpy() == jds.loc[hard["neg_jd_id"], "group"].to_numpy()).all()
    # same role, and mostly another seniority (title) when the role has one to offer
    assert (jds.loc[hard["pos_jd_id"], "title"].to_numpy() != jds.loc[hard["neg_jd_id"], "title"].to_numpy()).mean() > 0.5
    observed = pairs[pairs["neg_kind"] == "observed"]
    assert (observed["neg_grade"] < observed["pos_grade"]).all()
    # the truncation rule: CVs were cut to 40 words
    assert pairs["cv_text"].str.split().str.len().max() <= 40
    assert stats["rows"]["pairs"]["train"] == len(read_split(out / "pairs", "train"))


def test_sft_rows_tokenize_under_cv_to_jd(prepared):
    from genrec.models.tiny import train_tokenizer

    out, _ = prepared
    rows = read_split(out / "sft", "train")
    assert json.loads((out / "sft" / "stats.json").read_text())["template"] == "cv_to_jd"
    template = get_template("cv_to_jd")
    row = rows.iloc[0].to_dict()
    # the serving / PPO prompt is exactly the training prompt of the row
    cv_text = pd.read_parquet(out / "cvs.parquet").set_index("cv_id").loc[row["user_id"], "text"]
    assert prompts.generator_prompt(cv_text, 40) == template.render_prompt(row["instruction"], row["input"])
    catalog = pd.read_parquet(out / "sft" / "catalog.parquet")
    assert row["output"] in set(catalog["title"])
    tokenizer = train_tokenizer(list(catalog["title"]) + list(rows["input"]), vocab_size=500)
    encoded = tokenize_rows(tokenizer, template, [row], max_len=2048)[0]
    response = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert encoded["input_ids"][-len(response):] == response
    assert encoded["labels"][: -len(response)] == [-100] * (len(encoded["labels"]) - len(response))
    # too long: an error naming the row, never a silently emptied CV
    with pytest.raises(RowTooLongError, match=f"user_id='{row['user_id']}'"):
        tokenize_rows(tokenizer, template, [row], max_len=20)
