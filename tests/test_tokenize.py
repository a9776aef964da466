"""Completion-only tokenization: masks, response ids shared with the trie, history shortening, Ray step."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.templates import GENREC
from genrec.data.tokenize import (
    IGNORE_INDEX,
    RowTooLongError,
    batch_prompt_ids,
    prompt_ids,
    response_ids,
    tokenize_row,
    tokenize_rows,
    tokenize_split,
)
from genrec.models.tiny import train_tokenizer

# Titles chosen to trip a tokenizer: prefixes of one another, the separator inside a title, a leading
# space, unicode, digits, punctuation, and text that reads like a special token.
TITLES = [
    "Heat", "Heat (1995)", "Toy", "Toy Story (1995)", "Toy Story 2 (1999)",
    "Usual Suspects, The (1995)", " Leading space", "Amélie (2001)", "東京物語", "Se7en!!",
    "42", "C'est la vie...", "<eos> and <pad>", "Night 🎬 out", "a",
]
CATALOG = {f"i{n}": title for n, title in enumerate(TITLES)}
INSTRUCTION = GENREC.instructions["generic"][0]


def make_row(history: list[str], target: str, user_id: str = "u1", position: int = 3) -> dict:
    return {
        "instruction": INSTRUCTION,
        "input": GENREC.separator.join(CATALOG[i] for i in history),
        "output": CATALOG[target],
        "history_item_ids": history,
        "target_item_id": target,
        "user_id": user_id,
        "position": position,
    }


@pytest.fixture(scope="module")
def tokenizer():
    rows = [make_row(list(CATALOG)[:n], "i0") for n in range(1, len(CATALOG))]
    texts = [GENREC.render_prompt(r["instruction"], r["input"]) for r in rows] + TITLES
    return train_tokenizer(texts, vocab_size=400)


def response_part(encoded: dict) -> list[int]:
    return [label for label in encoded["labels"] if label != IGNORE_INDEX]


def test_labels_mask_the_prompt_and_keep_the_response_with_eos(tokenizer):
    row = make_row(["i0", "i3", "i5"], "i4")
    encoded = tokenize_row(tokenizer, GENREC, row, max_len=512)
    prompt = batch_prompt_ids(tokenizer, GENREC, [row["instruction"]], [row["input"]])[0]
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids[0] == tokenizer.bos_token_id and ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] == response_ids(tokenizer, row["output"])
    assert labels[-1] == tokenizer.eos_token_id
    assert encoded["history_dropped"] == 0


def test_every_title_response_matches_response_ids_and_decodes_back(tokenizer):
    rows = [make_row(["i1", "i2"], item) for item in CATALOG]
    for row, encoded in zip(rows, tokenize_rows(tokenizer, GENREC, rows, max_len=512)):
        expected = response_ids(tokenizer, row["output"])
        assert response_part(encoded) == expected
        assert expected.count(tokenizer.eos_token_id) == 1 and expected[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(expected[:-1]) == row["output"]


def test_overlong_row_drops_oldest_history_first_and_keeps_the_response(tokenizer):
    history = [f"i{n}" for n in range(1, 12)]
    row = make_row(history, "i3")
    full = tokenize_row(tokenizer, GENREC, row, max_len=10_000, titles=CATALOG)
    max_len = len(full["input_ids"]) - 12
    short = tokenize_row(tokenizer, GENREC, row, max_len=max_len, titles=CATALOG)

    k = short["history_dropped"]
    assert 0 < k < len(history) and len(short["input_ids"]) <= max_len
    kept = GENREC.separator.join(CATALOG[i] for i in history[k:])
    prompt = short["input_ids"][: -len(response_part(short))]
    assert prompt == batch_prompt_ids(tokenizer, GENREC, [INSTRUCTION], [kept])[0]
    assert response_part(short) == response_ids(tokenizer, row["output"])
    # Dropping one title fewer would not have fitted: the fewest oldest titles went.
    one_more = GENREC.separator.join(CATALOG[i] for i in history[k - 1:])
    longer_prompt = batch_prompt_ids(tokenizer, GENREC, [INSTRUCTION], [one_more])[0]
    assert len(longer_prompt) + len(response_part(short)) > max_len


def test_history_split_from_input_when_no_title_holds_the_separator(tokenizer):
    row = make_row(["i0", "i2", "i9", "i10"], "i1")
    full = len(tokenize_row(tokenizer, GENREC, row, max_len=10_000)["input_ids"])
    assert tokenize_row(tokenizer, GENREC, row, max_len=full - 1) == tokenize_row(
        tokenizer, GENREC, row, max_len=full - 1, titles=CATALOG
    )
    ambiguous = make_row(["i0", "i5", "i9"], "i1")  # "Usual Suspects, The (1995)" holds ", "
    with pytest.raises(ValueError, match="pass the catalog titles"):
        tokenize_row(tokenizer, GENREC, ambiguous, max_len=full - 1)


def test_row_that_cannot_fit_names_the_row(tokenizer):
    row = make_row(["i0", "i1"], "i3", user_id="alice", position=7)
    with pytest.raises(RowTooLongError, match="user_id='alice' position=7"):
        tokenize_row(tokenizer, GENREC, row, max_len=8, titles=CATALOG)


def test_tokenize_split_writes_int32_shards_and_counts(ray_session, tokenizer, tmp_path):
    rows = [make_row([f"i{(u + n) % len(TITLES)}" for n in range(1 + u % 9)], f"i{u % len(TITLES)}", f"u{u}", u)
            for u in range(60)]
    (tmp_path / "prepared" / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prepared" / "train" / "part-0.parquet")
    pq.write_table(pa.table({"item_id": list(CATALOG), "title": TITLES}), tmp_path / "prepared" / "catalog.parquet")
    tokenizer.save_pretrained(tmp_path / "tok")
    max_len = 90  # the longest rows lose history, the shortest do not

    stats = tokenize_split(tmp_path / "prepared" / "train", tmp_path / "tokens", str(tmp_path / "tok"), max_len)

    shards = pq.read_table(tmp_path / "tokens")
    for name in ("input_ids", "labels"):
        assert shards.schema.field(name).type == pa.list_(pa.int32())
    assert shards.schema.field("length").type == pa.int32()
    expected = {r["user_id"]: e for r, e in zip(rows, tokenize_rows(tokenizer, GENREC, rows, max_len, CATALOG))}
    for got in shards.to_pylist():
        want = expected[got["user_id"]]
        assert got["input_ids"] == want["input_ids"] and got["labels"] == want["labels"]
        assert got["length"] == len(want["input_ids"]) <= max_len
    assert stats == {
        "rows": 60,
        "tokens": sum(len(e["input_ids"]) for e in expected.values()),
        "response_tokens": sum(len(response_part(e)) for e in expected.values()),
        "rows_truncated": sum(e["history_dropped"] > 0 for e in expected.values()),
        "history_titles_dropped": sum(e["history_dropped"] for e in expected.values()),
    }
    assert 0 < stats["rows_truncated"] < 60
    assert json.loads((tmp_path / "tokens" / "_tokenize.json").read_text())["rows"] == 60


# ------------------------------------------------------------------------------ format=sequence
def test_sequence_rows_are_the_prefix_then_each_title_with_loss_after_the_first(tokenizer):
    row = make_row(["i0", "i5", "i8"], "i4")  # i5 holds the separator: the catalog splits it right
    encoded = tokenize_rows(tokenizer, GENREC, [row], 512, CATALOG, format="sequence")[0]
    prefix = tokenizer(GENREC.render_sequence_prefix(INSTRUCTION), split_special_tokens=True)["input_ids"]
    titles = [response_ids(tokenizer, CATALOG[i]) for i in ("i0", "i5", "i8", "i4")]
    assert encoded["input_ids"] == prefix + sum(titles, [])
    assert encoded["labels"] == [IGNORE_INDEX] * (len(prefix) + len(titles[0])) + sum(titles[1:], [])

    target_only = tokenize_rows(tokenizer, GENREC, [row], 512, CATALOG, format="sequence", history_loss=False)[0]
    assert target_only["input_ids"] == encoded["input_ids"]
    assert response_part(target_only) == titles[-1]


def test_sequence_rows_drop_oldest_whole_titles_and_prompts_end_before_the_target(tokenizer):
    row = make_row(["i0", "i3", "i4", "i5"], "i6")
    prefix = tokenizer(GENREC.render_sequence_prefix(INSTRUCTION), split_special_tokens=True)["input_ids"]
    titles = [response_ids(tokenizer, CATALOG[i]) for i in ("i0", "i3", "i4", "i5", "i6")]
    fits_last_three = len(prefix) + sum(map(len, titles[2:]))
    encoded = tokenize_rows(tokenizer, GENREC, [row], fits_last_three, CATALOG, format="sequence")[0]
    assert encoded["history_dropped"] == 2
    assert encoded["input_ids"] == prefix + sum(titles[2:], [])
    assert response_part(encoded) == titles[3] + titles[4]  # the first kept title is context only

    (prompt,) = prompt_ids(tokenizer, GENREC, [row], 10_000, CATALOG, format="sequence")
    assert prompt == prefix + sum(titles[:4], [])  # what the model reads before writing the target
    (text_prompt,) = prompt_ids(tokenizer, GENREC, [row], 10_000, CATALOG, format="prompt")
    full = tokenize_row(tokenizer, GENREC, row, 10_000, CATALOG)["input_ids"]
    assert text_prompt == full[: len(full) - len(titles[4])]

    with pytest.raises(RowTooLongError, match="position=3"):
        tokenize_rows(tokenizer, GENREC, [row], len(prefix) + len(titles[4]) - 1, CATALOG, format="sequence")
