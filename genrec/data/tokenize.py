"""Completion-only tokenization: prompt rows -> token shards whose loss covers the response alone.

The prompt and the response are tokenized apart, so no BPE merge crosses their boundary and the
response's ids are exactly `response_ids(tokenizer, title)`: what the catalog trie decodes.
Rows over `max_len` lose their oldest history titles (never the response) until they fit.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from genrec.data.item_tokens import item_token_ids
from genrec.data.templates import Template, get_template
from genrec.models.tokenizer import load_tokenizer
from genrec.runtime import init_ray

log = logging.getLogger("genrec.tokenize")

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and transformers' loss) skips
ROW_COLUMNS = ["instruction", "input", "output", "history_item_ids", "user_id", "position"]
SEQUENCE_FORMATS = ("sequence", "item_ids")  # a user's items one after another, each its own ids
OPTIONAL_COLUMNS = ["target_item_id"]  # read when present: item_tokens models learn the target's token


class RowTooLongError(ValueError):
    """A row whose prompt, with no history at all, plus its response still exceeds max_len."""


def batch_response_ids(tokenizer, titles: Sequence[str]) -> list[list[int]]:
    """Response ids of many titles at once; each is exactly `response_ids(tokenizer, title)`."""
    # split_special_tokens: a title is plain text, so a title reading "<eos>" must not end itself.
    encoded = tokenizer(list(titles), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


def response_ids(tokenizer, title: str) -> list[int]:
    """The target ids of an item: its title on its own, then eos. The single source of truth shared
    by training labels and the catalog trie."""
    return batch_response_ids(tokenizer, [title])[0]


def batch_prompt_ids(
    tokenizer, template: Template, instructions: Sequence[str], inputs: Sequence[str]
) -> list[list[int]]:
    """Prompt ids, with the tokenizer's own special tokens (e.g. bos) around the rendered prompt."""
    texts = [template.render_prompt(i, x) for i, x in zip(instructions, inputs)]
    return tokenizer(texts, split_special_tokens=True)["input_ids"]


def history_titles(template: Template, row: Mapping, titles: Mapping[str, str] | None = None) -> list[str]:
    """The row's history titles, oldest first: from the catalog when given, else split from `input`.

    Splitting is exact only when no title contains the separator (the piece count then equals the
    history length); MovieLens titles such as "Usual Suspects, The (1995)" do, hence the catalog.
    """
    item_ids = row.get("history_item_ids")
    if item_ids is None:
        raise RowTooLongError(f"{_row_name(row)}: too long and has no history_item_ids to shorten")
    if len(item_ids) == 0:
        return []
    if titles is not None:
        history = [titles[item] for item in item_ids]
        if template.separator.join(history) != row["input"]:
            raise ValueError(f"{_row_name(row)}: input does not match the catalog titles of its history_item_ids")
        return history
    history = row["input"].split(template.separator)
    if len(history) != len(item_ids):
        raise ValueError(
            f"{_row_name(row)}: input splits into {len(history)} pieces on {template.separator!r} but the row "
            f"has {len(item_ids)} history items (a title contains the separator); pass the catalog titles"
        )
    return history


def tokenize_rows(
    tokenizer,
    template: Template,
    rows: Sequence[Mapping],
    max_len: int,
    titles: Mapping[str, str] | None = None,
    format: str = "prompt",
    history_loss: bool = True,
) -> list[dict]:
    """input_ids, labels (IGNORE_INDEX where no loss) and history_dropped for each row.

    format="prompt" (GenRec): the rendered prompt, then the response; loss on the response.
    format="sequence": see tokenize_sequence_rows; `history_loss` puts loss on the history titles too.
    format="item_ids": the same with each item as its item token alone, without its title.

    `titles` (catalog item_id -> title) is needed only to shorten rows whose titles hold the separator.

    Prompts and responses are encoded in one batched call each; only over-long rows pay for the
    search over shorter histories.
    """
    if format in SEQUENCE_FORMATS:
        return tokenize_sequence_rows(tokenizer, template, rows, max_len, titles, history_loss,
                                      item_titles=format == "sequence")
    if format != "prompt":
        raise ValueError(f"format: expected 'prompt', 'sequence' or 'item_ids', got {format!r}")
    prompts = batch_prompt_ids(tokenizer, template, [r["instruction"] for r in rows], [r["input"] for r in rows])
    responses = batch_response_ids(tokenizer, [r["output"] for r in rows])
    encoded = []
    for row, prompt, response in zip(rows, prompts, responses):
        dropped = 0
        if len(prompt) + len(response) > max_len:
            prompt, dropped = _shorten_history(tokenizer, template, row, len(response), max_len, titles)
        labels = [IGNORE_INDEX] * len(prompt) + response
        encoded.append({"input_ids": prompt + response, "labels": labels, "history_dropped": dropped})
    return encoded


def tokenize_sequence_rows(
    tokenizer,
    template: Template,
    rows: Sequence[Mapping],
    max_len: int,
    titles: Mapping[str, str] | None = None,
    history_loss: bool = True,
    item_titles: bool = True,
) -> list[dict]:
    """format=sequence: the instruction prefix, then each history title and the row's output (when
    not empty) as `response_ids`: the title's own ids and eos, exactly what the catalog trie decodes.

    With `history_loss`, every title after the first kept one carries loss, so one row per user
    trains every next-item prediction of its history at once (as SASRec trains all positions);
    without it (validation) only the output does. Over-long rows drop their oldest titles, whole.
    A tokenizer with item tokens (genrec/data/item_tokens.py) writes each item as its token, then
    its title and eos, and puts the loss on the item token alone: that is what such a model ranks by.
    Without `item_titles` (format=item_ids) each item is its item token alone.
    """
    item_tokens = item_token_ids(tokenizer)
    if not item_titles and not item_tokens:
        raise ValueError("format=item_ids: this tokenizer has no item tokens (train with item_tokens=true)")
    prefixes = tokenizer([template.render_sequence_prefix(r["instruction"]) for r in rows],
                         split_special_tokens=True)["input_ids"]
    if item_titles:
        histories = [history_titles(template, row, titles) for row in rows]
        items = iter(batch_response_ids(tokenizer, [t for row, history in zip(rows, histories)
                                                    for t in history + ([row["output"]] if row["output"] else [])]))
    encoded = []
    for row_number, (row, prefix) in enumerate(zip(rows, prefixes)):
        has_target = bool(row["output"])
        if not item_titles:  # each item as <item:ID> alone
            ids = [[token] for token in _row_item_tokens(row, has_target, item_tokens)]
        else:
            ids = [next(items) for _ in range(len(histories[row_number]) + has_target)]
            if item_tokens:  # each item as <item:ID> title eos; loss on the item token alone
                ids = [[token] + title for token, title in zip(_row_item_tokens(row, has_target, item_tokens), ids)]
        total, first = len(prefix) + sum(map(len, ids)), 0
        while total > max_len and first < len(ids) - 1:
            total, first = total - len(ids[first]), first + 1
        if total > max_len or not ids:
            raise RowTooLongError(
                f"{_row_name(row)}: the instruction ({len(prefix)} tokens) and its last title "
                f"({len(ids[-1]) if ids else 0}) exceed max_len={max_len}; raise max_len")
        input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
        for index in range(first, len(ids)):
            is_target = has_target and index == len(ids) - 1
            input_ids += ids[index]
            learn = is_target or (history_loss and index > first)
            target = ids[index][:1] + [IGNORE_INDEX] * (len(ids[index]) - 1) if item_tokens else ids[index]
            labels += target if learn else [IGNORE_INDEX] * len(ids[index])
        encoded.append({"input_ids": input_ids, "labels": labels, "history_dropped": first})
    return encoded


def _row_item_tokens(row: Mapping, has_target: bool, item_tokens: Mapping[str, int]) -> list[int]:
    """The item tokens of a row's history (and target), oldest first; an item the tokenizer has no
    token for is an error naming the row: the model was trained on another catalog."""
    items = list(row["history_item_ids"] or []) + ([row.get("target_item_id")] if has_target else [])
    missing = [item for item in items if item not in item_tokens]
    if missing:
        raise ValueError(f"{_row_name(row)}: items {missing[:5]} have no item token in this tokenizer "
                         "(item_tokens models know only the catalog they were trained on)")
    return [item_tokens[item] for item in items]


def prompt_ids(
    tokenizer,
    template: Template,
    rows: Sequence[Mapping],
    max_prompt_len: int,
    titles: Mapping[str, str] | None = None,
    format: str = "prompt",
) -> list[list[int]]:
    """The ids a model reads before it writes a row's next item, built as training built them, the
    oldest history titles dropped to fit `max_prompt_len`. Evaluation and serving use this."""
    blank = [dict(row, output="") for row in rows]
    if format in SEQUENCE_FORMATS:
        return [e["input_ids"] for e in tokenize_sequence_rows(tokenizer, template, blank, max_prompt_len, titles,
                                                               item_titles=format == "sequence")]
    # An empty response still encodes as [eos]: budget for it, then cut it off.
    encoded = tokenize_rows(tokenizer, template, blank, max_prompt_len + 1, titles, format)
    return [e["input_ids"][:-1] for e in encoded]


def tokenize_row(
    tokenizer, template: Template, row: Mapping, max_len: int, titles: Mapping[str, str] | None = None
) -> dict:
    return tokenize_rows(tokenizer, template, [row], max_len, titles)[0]


def _shorten_history(
    tokenizer, template: Template, row: Mapping, response_len: int, max_len: int, titles: Mapping[str, str] | None
) -> tuple[list[int], int]:
    """(prompt ids, titles dropped) for the fewest oldest titles dropped so the row fits max_len.

    Binary search over the number dropped: log2(history) re-tokenizations instead of one per title.
    Re-rendering, rather than splicing per-title ids, keeps the ids those of the text the model reads.
    """
    history = history_titles(template, row, titles)
    budget = max_len - response_len

    def prompt_without(k: int) -> list[int]:
        return batch_prompt_ids(tokenizer, template, [row["instruction"]], [template.separator.join(history[k:])])[0]

    best = prompt_without(len(history))
    if len(best) > budget:
        raise RowTooLongError(
            f"{_row_name(row)}: even with an empty history the prompt takes {len(best)} tokens and the response "
            f"{response_len}, over max_len={max_len}; raise max_len"
        )
    too_long, fits = 0, len(history)  # invariant: dropping `too_long` titles is not enough, `fits` is
    while fits - too_long > 1:
        mid = (too_long + fits) // 2
        ids = prompt_without(mid)
        if len(ids) <= budget:
            fits, best = mid, ids
        else:
            too_long = mid
    return best, fits


def _row_name(row: Mapping) -> str:
    return f"row user_id={row.get('user_id')!r} position={row.get('position')!r}"


class TokenizeBatch:
    """Ray Data callable: loads the tokenizer (and catalog titles) once per actor, not per batch."""

    def __init__(self, tokenizer_dir: str, template_name: str, max_len: int, catalog_path: str | None,
                 format: str = "prompt", history_loss: bool = True) -> None:
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.template = get_template(template_name)
        self.max_len, self.format, self.history_loss = max_len, format, history_loss
        self.titles = None
        if catalog_path:
            catalog = pq.read_table(catalog_path, columns=["item_id", "title"])
            self.titles = dict(zip(catalog.column("item_id").to_pylist(), catalog.column("title").to_pylist()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        encoded = tokenize_rows(self.tokenizer, self.template, batch.to_pylist(), self.max_len, self.titles,
                                self.format, self.history_loss)
        token_lists = pa.list_(pa.int32())
        return pa.table(
            {
                "input_ids": pa.array([e["input_ids"] for e in encoded], token_lists),
                "labels": pa.array([e["labels"] for e in encoded], token_lists),
                "length": pa.array([len(e["input_ids"]) for e in encoded], pa.int32()),
                "user_id": batch.column("user_id"),
                "position": batch.column("position"),
                "history_dropped": pa.array([e["history_dropped"] for e in encoded], pa.int32()),
            }
        )


def tokenize_split(
    in_dir: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str,
    max_len: int,
    template_name: str = "genrec",
    catalog_path: str | Path | None = None,
    format: str = "prompt",
    history_loss: bool = True,
) -> dict:
    """A prepared split's prompt parquet (e.g. runs/x/train/) -> token shards in `out_dir`, in the
    given `format` (see tokenize_rows).

    Shards hold input_ids, labels (list<int32>), length, user_id, position and history_dropped
    (oldest titles removed to fit). The catalog defaults to the prepare stage's catalog.parquet
    beside the split. Returns the counts and writes them, with the arguments, to out_dir/_tokenize.json (the leading
    underscore keeps parquet readers from taking it for a shard).
    """
    init_ray()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if catalog_path is None and (in_dir.parent / "catalog.parquet").exists():
        catalog_path = in_dir.parent / "catalog.parquet"
    get_template(template_name)  # an unknown template fails here, not inside an actor
    present = set(pads.dataset(str(in_dir), format="parquet").schema.names)
    rows = ray.data.read_parquet(str(in_dir)).select_columns(ROW_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in present])
    tokens = rows.map_batches(
        TokenizeBatch,
        fn_constructor_args=(tokenizer_dir, template_name, max_len, str(catalog_path) if catalog_path else None,
                             format, history_loss),
        batch_format="pyarrow",
        batch_size=512,
        # `concurrency=` is deprecated since Ray 2.51; the pool grows to the cluster's CPUs.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(ray.cluster_resources().get("CPU", 1)))),
    )
    tokens.write_parquet(str(out_dir), mode=ray.data.SaveMode.OVERWRITE)  # no stale shards from an earlier run
    stats = shard_stats(out_dir)
    if format in SEQUENCE_FORMATS and history_loss:
        users = pc.count_distinct(pads.dataset(str(in_dir), format="parquet").to_table(columns=["user_id"])
                                  .column("user_id")).as_py()
        if users < stats["rows"]:
            log.warning("format=sequence: %d rows for %d users, so the history titles of a user's several "
                        "prefixes train again and again; prepare with samples_per_user=1", stats["rows"], users)
    if stats["rows_truncated"]:
        log.warning("%d of %d rows lost old history titles to fit max_len=%d",
                    stats["rows_truncated"], stats["rows"], max_len)
    record = {"in_dir": str(in_dir), "tokenizer_dir": str(tokenizer_dir), "max_len": max_len,
              "template": template_name, "catalog_path": str(catalog_path) if catalog_path else None,
              "format": format, "history_loss": history_loss, **stats}
    (out_dir / "_tokenize.json").write_text(json.dumps(record, indent=2))
    return stats


def shard_stats(shard_dir: str | Path) -> dict:
    """Counts over token shards, streamed a batch at a time: rows, tokens, response tokens (those
    with a label), rows that lost history and the history titles lost."""
    stats = {"rows": 0, "tokens": 0, "response_tokens": 0, "rows_truncated": 0, "history_titles_dropped": 0}
    dataset = pads.dataset(str(shard_dir), format="parquet")  # skips "_"-prefixed files: _tokenize.json
    for batch in dataset.to_batches(columns=["length", "labels", "history_dropped"]):
        labels = pc.list_flatten(batch.column("labels"))
        dropped = batch.column("history_dropped")
        stats["rows"] += batch.num_rows
        stats["tokens"] += pc.sum(batch.column("length")).as_py() or 0
        stats["response_tokens"] += pc.sum(pc.not_equal(labels, IGNORE_INDEX)).as_py() or 0
        stats["rows_truncated"] += pc.sum(pc.greater(dropped, 0)).as_py() or 0
        stats["history_titles_dropped"] += pc.sum(dropped).as_py() or 0
    return stats
