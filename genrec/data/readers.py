"""Interaction readers: MovieLens, Amazon reviews, SASRec-style sequence files, generic tables.

`read_source(cfg)` gives a lazy Ray Dataset of interactions (schema.INTERACTION_SCHEMA), the catalog
(read in the driver: see catalog.py) and the RejectLog that the read tasks report their rejects to.

How the reading is split:
- Text files: the driver cuts each file into byte ranges of about chunk_mb MiB, moved forward to line
  starts, so a chunk owns exactly the lines that start inside it; it counts the newlines before each
  chunk, so every task knows the number of its first line (for `order`, and to quote rejects as
  file:line). One Ray Data task per chunk. CSV values must not hold line breaks (chunks split at any
  newline).
- Parquet: one task per (file, row group).

Tasks parse vectorised with pyarrow (JSON lines excepted) and check every row: ids present, timestamp
an integer, item in the catalog. A row that fails is counted under the first reason it fails (the
reasons are schema's constants) with its first example; blank lines hold no row and are skipped.
Every other input row comes out as an interaction.

`order` = file_index << 40 | line number (text, 1-based) or row number (parquet, 0-based), so it
increases with the row's place in the input. A sequences file (one file, many interactions per line)
uses line << 24 | position in the line instead.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import ray
import ray.data
from ray.actor import ActorHandle

from genrec.config import SourceConfig
from genrec.data import schema
from genrec.data.catalog import (
    existing_file,
    id_strings,
    id_text,
    read_amazon_meta,
    read_item_table,
    read_movielens_catalog,
    require_column,
    sniff_delimiter,
)
from genrec.data.rejects import RejectLog, Rejects, report

FILE_SHIFT = 40  # order = file_index << 40 | line: up to 2**40 lines per file, 2**23 files
POSITION_BITS = 24  # sequences: order = line << 24 | position: up to 16M items per line
COUNT_PIECE = 64 << 20  # bytes read at a time while counting newlines


@dataclasses.dataclass
class Source:
    interactions: ray.data.Dataset  # lazy; exactly schema.INTERACTION_SCHEMA
    catalog: pa.Table  # item_id, title (+ string attribute columns); only items with a usable title
    catalog_rejects: Rejects  # what reading the catalog dropped (known at once)
    log: ActorHandle  # a RejectLog; the interactions' read tasks report to it as the dataset executes


def read_source(cfg: SourceConfig, chunk_bytes: Optional[int] = None) -> Source:
    """Read `cfg.format`; Ray must already be initialised. `chunk_bytes` overrides cfg.chunk_mb (tests)."""
    readers = {"movielens": _movielens, "amazon": _amazon, "sequences": _sequences, "table": _table}
    if cfg.format not in readers:
        raise ValueError(f"unknown source format {cfg.format!r}; known: {', '.join(readers)}")
    return readers[cfg.format](cfg, chunk_bytes or cfg.chunk_mb << 20)


# ---------------------------------------------------------------------------------------- formats
@dataclasses.dataclass(frozen=True)
class TextLayout:
    """How the lines of one text file become (user, item, time) fields."""

    kind: Literal["delimited", "json", "sequences"]
    user: str = ""
    item: str = ""
    time: str = ""  # "" = file order
    columns: tuple[str, ...] = ()  # delimited: every field of a line, in order
    delimiter: str = ""  # delimited: "" = sniffed from the file; "," means CSV quoting, others none
    separator: str = ""  # a multi-byte separator (ml-1m "::"), replaced by `delimiter` before parsing
    header: bool = False  # delimited: the first line names the columns


_ML_FIELDS = ("user", "item", "rating", "time")
# The ratings file present tells the MovieLens variant.
MOVIELENS_RATINGS = {
    "u.data": TextLayout("delimited", "user", "item", "time", _ML_FIELDS, delimiter="\t"),
    "ratings.dat": TextLayout("delimited", "user", "item", "time", _ML_FIELDS, delimiter="\x1f", separator="::"),
    "ratings.csv": TextLayout("delimited", "userId", "movieId", "timestamp", delimiter=",", header=True),
}


def _movielens(cfg: SourceConfig, chunk_bytes: int) -> Source:
    catalog, catalog_rejects = read_movielens_catalog(cfg.path, strict=cfg.strict)
    folder = Path(cfg.path)
    name = next((n for n in MOVIELENS_RATINGS if (folder / n).is_file()), None)
    if name is None:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FileNotFoundError(f"{folder} holds no ratings file (one of {', '.join(MOVIELENS_RATINGS)}); found: {found}")
    return _text_source(catalog, catalog_rejects, [folder / name], MOVIELENS_RATINGS[name], chunk_bytes, cfg.strict)


def _amazon(cfg: SourceConfig, chunk_bytes: int) -> Source:
    catalog, catalog_rejects = read_amazon_meta(cfg.catalog_path, strict=cfg.strict)
    reviews = existing_file(cfg.path, "Amazon reviews file")
    layout = TextLayout("json", "reviewerID", "asin", "unixReviewTime")
    return _text_source(catalog, catalog_rejects, [reviews], layout, chunk_bytes, cfg.strict)


def _sequences(cfg: SourceConfig, chunk_bytes: int) -> Source:
    catalog, catalog_rejects = _item_table(cfg)
    path = existing_file(cfg.path, "sequences file")
    return _text_source(catalog, catalog_rejects, [path], TextLayout("sequences"), chunk_bytes, cfg.strict)


def _table(cfg: SourceConfig, chunk_bytes: int) -> Source:
    catalog, catalog_rejects = _item_table(cfg)
    files, kind = _table_files(cfg.path)
    if kind == "parquet":
        return _parquet_source(catalog, catalog_rejects, files, cfg)
    layout = TextLayout(kind, cfg.user_col, cfg.item_col, cfg.time_col, header=kind == "delimited")
    return _text_source(catalog, catalog_rejects, files, layout, chunk_bytes, cfg.strict)


def _item_table(cfg: SourceConfig) -> tuple[pa.Table, Rejects]:
    return read_item_table(cfg.catalog_path, cfg.catalog_item_col or cfg.item_col, cfg.title_col, strict=cfg.strict)


TABLE_KINDS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "delimited", ".tsv": "delimited",
    ".jsonl": "json", ".json": "json", ".ndjson": "json",
}


def _table_files(path: str) -> tuple[list[Path], str]:
    """The input files (a file, or a folder's files in name order) and their one kind."""
    if not path:
        raise ValueError("no interactions path given: set source.path")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"interactions path {path!r} does not exist")
    if root.is_dir():
        files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith((".", "_")))
    else:
        files = [root]
    unknown = [f.name for f in files if f.suffix.lower() not in TABLE_KINDS]
    if unknown or not files:
        raise ValueError(f"{path}: expected {', '.join(TABLE_KINDS)} files; found: {', '.join(unknown) or 'none'}")
    kinds = {TABLE_KINDS[f.suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes file kinds ({', '.join(sorted(kinds))}); keep one kind per folder")
    return files, kinds.pop()


# ----------------------------------------------------------------------------------- the dataset
def _dataset_source(catalog, catalog_rejects, descriptors, task, task_kwargs) -> Source:
    """One task per descriptor; the catalog's ids are broadcast once through the object store."""
    log = RejectLog.remote()
    if not descriptors:  # only empty parquet files: nothing to read
        return Source(ray.data.from_arrow(schema.INTERACTION_SCHEMA.empty_table()), catalog, catalog_rejects, log)
    kwargs = dict(task_kwargs, catalog_ids=ray.put(catalog["item_id"].combine_chunks()), log=log)
    interactions = ray.data.from_items(descriptors, override_num_blocks=len(descriptors)).map_batches(
        task, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs
    )
    return Source(interactions, catalog, catalog_rejects, log)


def _text_source(catalog, catalog_rejects, paths: list[Path], layout: TextLayout, chunk_bytes: int, strict: bool) -> Source:
    chunks, layouts = [], []
    for file_index, path in enumerate(paths):
        if path.suffix.lower() == ".gz":
            raise ValueError(f"{path}: decompress it first (chunked reading needs plain text)")
        layouts.append(_file_layout(path, layout))
        chunks += plan_chunks(path, file_index, chunk_bytes, header=layout.header)
    return _dataset_source(catalog, catalog_rejects, chunks, _read_text_chunks, {"layouts": layouts, "strict": strict})


def _file_layout(path: Path, layout: TextLayout) -> TextLayout:
    """The layout completed from this file's first line (column names, delimiter), its columns checked."""
    if layout.kind == "json":
        found = _first_record_keys(path)
        if found is None:
            return layout  # the task counts a malformed first line like any other
    elif layout.header:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            header = f.readline().rstrip("\r\n")
        delimiter = layout.delimiter or sniff_delimiter(path, header)
        quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        found = [name.strip() for name in next(csv.reader([header], delimiter=delimiter, quoting=quoting), [])]
        layout = dataclasses.replace(layout, columns=tuple(found), delimiter=delimiter)
    else:
        return layout
    for role, column in (("user", layout.user), ("item", layout.item), ("time", layout.time)):
        if column:
            require_column(found, column, role, path)
    return layout


def _first_record_keys(path: Path) -> Optional[list[str]]:
    """The keys of a JSON-lines file's first record, to name a missing column before any task runs."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        record = json.loads(first)
    except ValueError:
        return None
    return list(record) if isinstance(record, dict) else None


def plan_chunks(path: Path, file_index: int, chunk_bytes: int, header: bool = False) -> list[dict]:
    """Byte ranges of about chunk_bytes, each starting at a line start, with its first line's number."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = len(f.readline()) if header else 0
        bounds = [start]
        for nominal in range(start + chunk_bytes, size, chunk_bytes):
            bound = _next_line_start(f, nominal)
            if bounds[-1] < bound < size:
                bounds.append(bound)
        bounds.append(size)
        chunks, line = [], 2 if header else 1
        for begin, end in zip(bounds, bounds[1:]):
            if begin >= end:  # an empty or header-only file: no rows, no task
                continue
            chunks.append({"path": str(path), "file_index": file_index, "start": begin, "end": end, "first_line": line})
            if end < size:
                line += _count_newlines(f, begin, end)
    return chunks


def _next_line_start(f, pos: int) -> int:
    f.seek(pos - 1)
    f.readline()  # reads just b"\n" when pos already starts a line
    return f.tell()


def _count_newlines(f, begin: int, end: int) -> int:
    f.seek(begin)
    count, left = 0, end - begin
    while left > 0:
        piece = f.read(min(COUNT_PIECE, left))
        if not piece:
            break
        count += piece.count(b"\n")
        left -= len(piece)
    return count


def _parquet_source(catalog, catalog_rejects, files: list[Path], cfg: SourceConfig) -> Source:
    columns = {"user": cfg.user_col, "item": cfg.item_col, "time": cfg.time_col}
    parts = []
    for file_index, path in enumerate(files):
        meta = pq.ParquetFile(path).metadata
        for role, column in columns.items():
            if column:
                require_column(meta.schema.to_arrow_schema().names, column, role, path)
        first_row = 0
        for group in range(meta.num_row_groups):
            parts.append({"path": str(path), "file_index": file_index, "row_group": group, "first_row": first_row})
            first_row += meta.row_group(group).num_rows
    return _dataset_source(catalog, catalog_rejects, parts, _read_row_groups, {"columns": columns, "strict": cfg.strict})


# -------------------------------------------------------------------------------------- the tasks
@dataclasses.dataclass
class _Rows:
    """A chunk's parsed rows, before checking."""

    user: pa.Array  # strings; null where there is no usable id
    item: pa.Array
    time: pa.Array  # int64; null where the source value is not an integer
    place: np.ndarray  # each row's line (text) or row (parquet) number in its file
    order: np.ndarray
    quote: Callable[[int], str]  # the source text of row i, for reject examples


class _Problems:
    """One chunk's rejects: a count per reason and the earliest example. Under strict=true the
    earliest malformed row of the chunk raises, whatever its reason."""

    def __init__(self, label: str):
        self.label = label  # "path:" or "path: row ", followed by the line or row number
        self.counts: dict[str, int] = {}
        self.first: dict[str, tuple[int, str]] = {}

    def add(self, reason: str, place: int, text: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        if reason not in self.first or place < self.first[reason][0]:
            self.first[reason] = (int(place), text)

    def rejects(self, strict: bool) -> Rejects:
        out = Rejects()
        for reason, (place, text) in sorted(self.first.items(), key=lambda kv: kv[1][0]):
            out.add(reason, f"{self.label}{place}", text, n=self.counts[reason], strict=strict)
        return out


def _read_text_chunks(batch: pa.Table, layouts: list[TextLayout], catalog_ids, log, strict: bool) -> pa.Table:
    known = ray.get(catalog_ids)
    rejects, tables = Rejects(), []
    for chunk in batch.to_pylist():
        with open(chunk["path"], "rb") as f:
            f.seek(chunk["start"])
            data = f.read(chunk["end"] - chunk["start"])
        layout = layouts[chunk["file_index"]]
        problems = _Problems(chunk["path"] + ":")
        rows = _TEXT_PARSERS[layout.kind](data, chunk, layout, problems)
        tables.append(_checked(rows, known, problems))
        rejects.merge(problems.rejects(strict))
    report(log, rejects)
    return pa.concat_tables(tables)


def _read_row_groups(batch: pa.Table, columns: dict[str, str], catalog_ids, log, strict: bool) -> pa.Table:
    known = ray.get(catalog_ids)
    wanted = list(dict.fromkeys(c for c in columns.values() if c))
    rejects, tables = Rejects(), []
    for part in batch.to_pylist():
        table = pq.ParquetFile(part["path"]).read_row_group(part["row_group"], columns=wanted)
        problems = _Problems(part["path"] + ": row ")
        tables.append(_checked(_parquet_rows(table, part, columns), known, problems))
        rejects.merge(problems.rejects(strict))
    report(log, rejects)
    return pa.concat_tables(tables)


def _checked(rows: _Rows, known: pa.Array, problems: _Problems) -> pa.Table:
    """The rows that pass every check, as INTERACTION_SCHEMA; the others counted in `problems`."""
    bad_id = _mask(pc.or_(pc.is_null(rows.user), pc.is_null(rows.item)))
    bad_time = ~bad_id & _mask(pc.is_null(rows.time))
    unknown = ~bad_id & ~bad_time & ~_mask(pc.fill_null(pc.is_in(rows.item, value_set=known), False))
    for reason, mask in ((schema.BAD_ID, bad_id), (schema.BAD_TIMESTAMP, bad_time), (schema.ITEM_NOT_IN_CATALOG, unknown)):
        if mask.any():
            first = int(np.argmax(mask))
            problems.add(reason, rows.place[first], rows.quote(first), int(mask.sum()))
    table = pa.table([rows.user, rows.item, rows.time, pa.array(rows.order, pa.int64())], schema=schema.INTERACTION_SCHEMA)
    return table.filter(pa.array(~(bad_id | bad_time | unknown)))


def _mask(values: pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


class _Lines:
    """Where each line of a chunk starts and ends: to skip blank lines and quote rejected ones."""

    def __init__(self, data: bytes):
        self.data = data
        newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
        self.starts = np.concatenate([[0], newlines + 1])
        self.ends = np.concatenate([newlines, [len(data)]])
        if not data or data.endswith(b"\n"):  # nothing follows the last newline
            self.starts, self.ends = self.starts[:-1], self.ends[:-1]
        length = self.ends - self.starts
        last_byte = np.frombuffer(data, np.uint8)[np.maximum(self.ends - 1, 0)] if data else np.zeros(0, np.uint8)
        self.blank = (length == 0) | ((length == 1) & (last_byte == ord("\r")))

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, i: int) -> bytes:
        return self.data[self.starts[i] : self.ends[i]].rstrip(b"\r")

    def text(self, i: int) -> str:
        return self.raw(i).decode("utf-8", "replace")

    def strings(self) -> pa.Array:
        """Every line as one string array without copying (each holds its newline; trim before use)."""
        offsets = np.concatenate([self.starts, [len(self.data)]]).astype(np.int64)
        lines = pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(offsets), pa.py_buffer(self.data))
        lines.validate(full=True)  # raises on bytes that are not UTF-8
        return lines


def _parse_delimited(data: bytes, chunk: dict, layout: TextLayout, problems: _Problems) -> _Rows:
    """pyarrow's CSV parser on the chunk; every line comes out as a row or goes to on_invalid."""
    lines = _Lines(data)
    if layout.separator:
        data = data.replace(layout.separator.encode(), layout.delimiter.encode())
    invalid: list[int] = []

    def on_invalid(row) -> str:
        invalid.append(row.number - 1)  # physical line, since empty lines are kept as rows
        return "skip"

    wanted = list(dict.fromkeys(c for c in (layout.user, layout.item, layout.time) if c))
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=list(layout.columns), use_threads=False, block_size=16 << 20),
        parse_options=pacsv.ParseOptions(
            delimiter=layout.delimiter,
            quote_char='"' if layout.delimiter == "," else False,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted}),
    )
    parsed = np.ones(len(lines), bool)
    parsed[invalid] = False
    row_lines = np.flatnonzero(parsed)
    if len(row_lines) != table.num_rows:
        raise ValueError(
            f"{chunk['path']}: lines {chunk['first_line']}..{chunk['first_line'] + len(lines) - 1} gave "
            f"{table.num_rows} rows; line breaks inside values or bare carriage returns are not supported"
        )
    wrong = [i for i in invalid if not lines.blank[i]]
    if wrong:
        problems.add(schema.WRONG_FIELD_COUNT, chunk["first_line"] + wrong[0], lines.text(wrong[0]), len(wrong))
    filled = ~lines.blank[row_lines]
    table, row_lines = table.filter(pa.array(filled)), row_lines[filled]
    place = chunk["first_line"] + row_lines
    order = chunk["file_index"] << FILE_SHIFT | place
    return _Rows(
        user=id_strings(table[layout.user]),
        item=id_strings(table[layout.item]),
        time=timestamps(table[layout.time]) if layout.time else pa.array(order),
        place=place,
        order=order,
        quote=lambda i: lines.text(row_lines[i]),
    )


def _parse_json(data: bytes, chunk: dict, layout: TextLayout, problems: _Problems) -> _Rows:
    """One JSON object per line, parsed with json.loads (JSON inputs here are small)."""
    lines = _Lines(data)
    users, items, times, kept = [], [], [], []
    for i in range(len(lines)):
        raw = lines.raw(i)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            problems.add(schema.MALFORMED_RECORD, chunk["first_line"] + i, lines.text(i))
            continue
        users.append(id_text(record.get(layout.user)))
        items.append(id_text(record.get(layout.item)))
        times.append(_integer(record.get(layout.time)) if layout.time else 0)
        kept.append(i)
    kept_lines = np.asarray(kept, dtype=np.int64)
    place = chunk["first_line"] + kept_lines
    order = chunk["file_index"] << FILE_SHIFT | place
    return _Rows(
        user=pa.array(users, pa.string()),
        item=pa.array(items, pa.string()),
        time=pa.array(times, pa.int64()) if layout.time else pa.array(order),
        place=place,
        order=order,
        quote=lambda i: lines.text(kept_lines[i]),
    )


def _parse_sequences(data: bytes, chunk: dict, layout: TextLayout, problems: _Problems) -> _Rows:
    """`user item item ...` per line (tabs and/or spaces); timestamp = the item's position in the line."""
    lines = _Lines(data)
    tokens = pc.split_pattern_regex(pc.utf8_trim_whitespace(lines.strings()), r"[ \t]+")
    count = pc.list_value_length(tokens).to_numpy()
    blank = _mask(pc.equal(pc.list_element(tokens, 0), "")) if len(tokens) else np.zeros(0, bool)
    no_items = np.flatnonzero((count < 2) & ~blank)  # a user with no items is a malformed line
    if len(no_items):
        problems.add(schema.WRONG_FIELD_COUNT, chunk["first_line"] + no_items[0], lines.text(no_items[0]), len(no_items))
    full = np.flatnonzero(count >= 2)
    tokens = tokens.take(pa.array(full))
    items = pc.list_slice(tokens, 1)
    parent = pc.list_parent_indices(items).to_numpy()
    offsets = items.offsets.to_numpy()
    position = np.arange(len(parent)) - (offsets[parent] - offsets[0])
    if len(position) and position.max() >= 1 << POSITION_BITS:
        raise ValueError(f"{chunk['path']}: a line holds more than {1 << POSITION_BITS} items")
    line_of = full[parent]
    place = chunk["first_line"] + line_of
    return _Rows(
        user=id_strings(pc.list_element(tokens, 0).take(pa.array(parent))),
        item=id_strings(pc.list_flatten(items)),
        time=pa.array(position, pa.int64()),
        place=place,
        order=place << POSITION_BITS | position,
        quote=lambda i: lines.text(line_of[i]),
    )


_TEXT_PARSERS = {"delimited": _parse_delimited, "json": _parse_json, "sequences": _parse_sequences}


def _parquet_rows(table: pa.Table, part: dict, columns: dict[str, str]) -> _Rows:
    place = part["first_row"] + np.arange(table.num_rows, dtype=np.int64)
    order = part["file_index"] << FILE_SHIFT | place
    return _Rows(
        user=id_strings(table[columns["user"]]),
        item=id_strings(table[columns["item"]]),
        time=timestamps(table[columns["time"]]) if columns["time"] else pa.array(order),
        place=place,
        order=order,
        quote=lambda i: ", ".join(f"{name}={table[name][i].as_py()!r}" for name in table.column_names),
    )


# -------------------------------------------------------------------------------------- timestamps
_INTEGER = re.compile(r"^-?\d{1,18}$")  # at most 18 digits always fits int64


def timestamps(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Times as int64; null where a value is not an integer. Arrow timestamps and dates become unix seconds."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    kind = values.type
    if pa.types.is_integer(kind):
        return pc.cast(values, pa.int64())
    if pa.types.is_floating(kind):
        whole = pc.and_(pc.is_finite(values), pc.equal(pc.floor(values), values))
        return pc.cast(pc.if_else(whole, values, None), pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:  # the common case, every value a plain integer, without the slower regex pass
            return pc.cast(values, pa.int64())
        except pa.ArrowInvalid:
            pass
        text = pc.utf8_trim_whitespace(values)
        integer = pc.match_substring_regex(text, _INTEGER.pattern)
        return pc.cast(pc.if_else(integer, text, None), pa.int64())
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pc.cast(pc.cast(values, pa.timestamp("s"), safe=False), pa.int64())
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.int64())
    raise ValueError(f"timestamps of type {kind} are not supported: expected integers (e.g. unix seconds)")


def _integer(value: Any) -> Optional[int]:
    """A JSON value as an integer time, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(1 << 63) <= value < 1 << 63 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**63 else None
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        return int(value)
    return None
