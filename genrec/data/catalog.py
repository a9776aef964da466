"""The item catalog: read in the driver (it is small), titles cleaned, every title unique.

Titles are what GenRec generates, and decoding maps a generated title back to exactly one item, so
two items must never share a title. `build_catalog` makes them unique by this rule:

  Among items whose cleaned titles are equal, the first in catalog order keeps the title and the
  k-th (k = 2, 3, ...) gets " (#k)" appended. If "title (#k)" is already taken (by another item's
  own title or by an earlier rename), k increases until the title is free.

So ["X", "X (#2)", "X"] becomes ["X", "X (#2)", "X (#3)"]. The rule depends only on catalog order,
so the same input always gives the same titles.

Items whose title is empty after cleaning are dropped (`empty title`); of items sharing an id, the
first with a title is kept and the rest dropped (`duplicate catalog id`); rows with no id are
dropped (`bad id`). Those outcomes are counted, never raised, even under strict=true: they are
decisions about the catalog's content. Rows that cannot be parsed at all (`wrong field count`,
`malformed record`) raise under strict=true like malformed interaction rows do.

Ids become strings the same way here and in the interaction readers (`id_strings`, `id_text`), so
an integer id 42 in a parquet catalog matches "42" in a CSV log.
"""
from __future__ import annotations

import ast
import csv
import gzip
import html
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data import schema
from genrec.data.rejects import Rejects


# ------------------------------------------------------------------------------------ ids, titles
def id_text(value: Any) -> Optional[str]:
    """An id from a parsed record (JSON, Python literal) as a string; None where there is none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else None
    if isinstance(value, str):
        return value.strip() or None
    return None


def id_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ids as trimmed strings, integers in plain decimal; null where missing, empty or not an id."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    kind = values.type
    if pa.types.is_dictionary(kind):
        return id_strings(values.dictionary_decode())
    if pa.types.is_integer(kind):
        return pc.cast(values, pa.string())
    if pa.types.is_floating(kind):
        # 42.0 -> "42" (pyarrow writes whole floats without a fraction); NaN and 1.5 are no ids.
        whole = pc.and_(pc.is_finite(values), pc.equal(pc.floor(values), values))
        return pc.cast(pc.cast(pc.if_else(whole, values, None), pa.int64()), pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
        return pc.if_else(pc.equal(text, ""), None, text)
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    raise ValueError(f"ids of type {kind} are not supported: expected integers or strings")


def clean_title(title: Any) -> str:
    """HTML entities unescaped (repeatedly: Amazon has "&amp;amp;"), whitespace runs folded, stripped."""
    text = "" if title is None else str(title)
    unescaped = html.unescape(text)
    while unescaped != text:  # each pass that changes something shortens the text, so this ends
        text, unescaped = unescaped, html.unescape(unescaped)
    return " ".join(text.split())


def unique_titles(titles: Sequence[str]) -> list[str]:
    """Apply the module's rule: the k-th item with an already used title gets " (#k)", k raised past collisions."""
    taken = set(titles)
    seen: dict[str, int] = {}
    out = []
    for title in titles:
        k = seen.get(title, 0) + 1
        seen[title] = k
        if k == 1:
            out.append(title)
            continue
        while f"{title} (#{k})" in taken:
            k += 1
        renamed = f"{title} (#{k})"
        taken.add(renamed)
        out.append(renamed)
    return out


def build_catalog(
    item_ids: Sequence[Optional[str]],
    titles: Sequence[Any],
    extra_columns: Optional[Mapping[str, Sequence[Any]]] = None,
    source: str = "catalog",
) -> tuple[pa.Table, Rejects]:
    """A catalog table (item_id, title, extra string columns) and what was dropped, per the module rules.

    `item_ids` are strings (None or "" for a missing id); `source` names the file in reject examples.
    """
    extra_columns = dict(extra_columns or {})
    clash = {"item_id", "title"} & set(extra_columns)
    if clash:
        raise ValueError(f"attribute columns may not be named {sorted(clash)}: those are the catalog's own")
    rejects = Rejects()
    keep, kept_titles, seen_ids = [], [], set()
    for row, (item_id, raw_title) in enumerate(zip(item_ids, titles)):
        title = clean_title(raw_title)
        if not item_id:
            rejects.add(schema.BAD_ID, f"{source}: record {row + 1}", title)
        elif not title:
            rejects.add(schema.EMPTY_TITLE, f"{source}: item {item_id}")
        elif item_id in seen_ids:
            rejects.add(schema.DUPLICATE_CATALOG_ID, f"{source}: item {item_id}", title)
        else:
            seen_ids.add(item_id)
            keep.append(row)
            kept_titles.append(title)
    columns = {
        "item_id": pa.array([item_ids[i] for i in keep], pa.string()),
        "title": pa.array(unique_titles(kept_titles), pa.string()),
    }
    for name, values in extra_columns.items():
        columns[name] = pa.array([_text_or_none(values[i]) for i in keep], pa.string())
    return pa.table(columns), rejects


def _text_or_none(value: Any) -> Optional[str]:
    """An attribute value as text; whole floats as integers, like ids, so 42.0 reads "42"."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ------------------------------------------------------------------------------------- movielens
# Each MovieLens release names its item file differently; the file present tells the variant.
MOVIELENS_ITEM_FILES = ("u.item", "movies.dat", "movies.csv")


def read_movielens_catalog(folder: str | Path, strict: bool = False) -> tuple[pa.Table, Rejects]:
    """Titles and genres from a MovieLens folder: ml-100k `u.item`, ml-1m `movies.dat` or ml-latest/25m `movies.csv`."""
    if not str(folder):
        raise ValueError("no MovieLens folder given: set source.path")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MovieLens folder {folder} does not exist")
    for name in MOVIELENS_ITEM_FILES:
        if (folder / name).is_file():
            break
    else:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"{folder} holds no MovieLens item file (one of {', '.join(MOVIELENS_ITEM_FILES)}); found: {found}"
        )
    path = folder / name
    rejects = Rejects()
    if name == "u.item":
        ids, titles, genres = _ml100k_items(path, _ml100k_genre_names(folder / "u.genre"), rejects, strict)
    elif name == "movies.dat":
        rows = ((number, line.split("::")) for number, line in _numbered_lines(path, "latin-1"))
        ids, titles, genres = _ml_items(rows, "::", path, rejects, strict)
    else:
        ids, titles, genres = _ml_items(_csv_rows(path), ",", path, rejects, strict)
    extra = {"genres": genres} if genres is not None else {}
    catalog, cleaning = build_catalog(ids, titles, extra, source=str(path))
    return catalog, rejects.merge(cleaning)


def _numbered_lines(path: Path, encoding: str):
    """(line number, line) for the non-blank lines of a text file, gzipped or not (Amazon ships meta as .json.gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding, newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _ml100k_genre_names(path: Path) -> Optional[list[str]]:
    """u.genre's `name|index` lines, in flag order; None when the file is absent (then no genres column)."""
    if not path.is_file():
        return None
    pairs = [line.split("|") for _, line in _numbered_lines(path, "latin-1")]
    return [name for name, _ in sorted(pairs, key=lambda pair: int(pair[1]))]


def _ml100k_items(path: Path, genre_names: Optional[list[str]], rejects: Rejects, strict: bool):
    """u.item: id|title|release date|video date|IMDb URL|one 0/1 flag per genre."""
    ids, titles, genres = [], [], []
    for number, line in _numbered_lines(path, "latin-1"):
        fields = line.split("|")
        if len(fields) < 5 or (genre_names and len(fields) != 5 + len(genre_names)):
            rejects.add(schema.WRONG_FIELD_COUNT, f"{path}:{number}", line, strict=strict)
            continue
        ids.append(id_text(fields[0]))
        titles.append(fields[1])
        if genre_names:
            genres.append("|".join(g for g, flag in zip(genre_names, fields[5:]) if flag.strip() == "1"))
    return ids, titles, (genres if genre_names else None)


def _csv_rows(path: Path):
    """(line number, fields) of movies.csv after its header; CSV quoting honoured."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["movieId", "title", "genres"]:
            raise ValueError(f"{path}: expected the header movieId,title,genres, found {header}")
        for fields in reader:
            if any(field.strip() for field in fields):
                yield reader.line_num, fields


def _ml_items(rows: Iterable[tuple[int, list[str]]], separator: str, path: Path, rejects: Rejects, strict: bool):
    """`id<sep>title<sep>genres` rows. A title holding the separator unquoted (some copies of
    movies.csv have "$1,000 000 Duck") is rejoined: the id is the first field, genres the last."""
    ids, titles, genres = [], [], []
    for number, fields in rows:
        if len(fields) < 3:
            rejects.add(schema.WRONG_FIELD_COUNT, f"{path}:{number}", separator.join(fields), strict=strict)
            continue
        ids.append(id_text(fields[0]))
        titles.append(separator.join(fields[1:-1]))
        genres.append(fields[-1])
    return ids, titles, genres


# ---------------------------------------------------------------------------------------- amazon
def read_amazon_meta(path: str | Path, strict: bool = False) -> tuple[pa.Table, Rejects]:
    """Amazon product metadata (asin, title): the 2014 form (a Python dict literal per line) or the
    2018 form (JSON lines), told apart per line by trying JSON first."""
    path = existing_file(path, "Amazon metadata")
    rejects = Rejects()
    ids, titles = [], []
    for number, line in _numbered_lines(path, "utf-8"):
        record = _json_or_literal(line)
        if not isinstance(record, dict):
            rejects.add(schema.MALFORMED_RECORD, f"{path}:{number}", line, strict=strict)
            continue
        ids.append(id_text(record.get("asin")))
        titles.append(record.get("title"))
    catalog, cleaning = build_catalog(ids, titles, source=str(path))
    return catalog, rejects.merge(cleaning)


def _json_or_literal(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        pass
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


# ------------------------------------------------------------------------------ generic item table
def read_item_table(
    path: str | Path, item_col: str, title_col: str, strict: bool = False
) -> tuple[pa.Table, Rejects]:
    """An item table in parquet, CSV/TSV (header row) or JSON lines; columns besides id and title are kept as strings."""
    path = existing_file(path, "item table")
    suffix = path.suffix.lower()
    rejects = Rejects()
    if suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        table = _json_lines_table(path, rejects, strict)
    else:
        table = _delimited_table(path, rejects, strict)
    for role, column in (("item id", item_col), ("title", title_col)):
        require_column(table.column_names, column, role, path)
    ids = id_strings(table[item_col]).to_pylist()
    extra = {
        name: table[name].to_pylist()
        for name in table.column_names
        if name not in (item_col, title_col, "item_id", "title")
    }
    catalog, cleaning = build_catalog(ids, table[title_col].to_pylist(), extra, source=str(path))
    return catalog, rejects.merge(cleaning)


def require_column(found: Sequence[str], column: str, role: str, path: Any) -> None:
    if column not in found:
        raise ValueError(f"{path}: no {role} column {column!r}; columns found: {', '.join(found)}")


def sniff_delimiter(path: Path, header: str) -> str:
    """Tab for .tsv, comma for .csv; otherwise whichever of the two the header line holds."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    return "\t" if "\t" in header else ","


def _delimited_table(path: Path, rejects: Rejects, strict: bool) -> pa.Table:
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\r\n")
    delimiter = sniff_delimiter(path, header)
    names = next(csv.reader([header], delimiter=delimiter))

    def on_invalid(row) -> str:
        # Raising here would not reach the caller (pyarrow swallows it), so strict raises after reading.
        problems.append(row)
        return "skip"

    problems: list = []
    table = pacsv.read_csv(
        path,
        # TSV has no quoting convention: titles like `"Wally" the Flying Pig` are literal.
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, quote_char='"' if delimiter == "," else False, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in names}),
    )
    for row in problems:
        rejects.add(schema.WRONG_FIELD_COUNT, f"{path}: row {row.number}", row.text, strict=strict)
    return table


def _json_lines_table(path: Path, rejects: Rejects, strict: bool) -> pa.Table:
    records = []
    for number, line in _numbered_lines(path, "utf-8"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            rejects.add(schema.MALFORMED_RECORD, f"{path}:{number}", line, strict=strict)
            continue
        records.append(record)
    names = list(dict.fromkeys(key for record in records for key in record))
    # Column by column as strings: a JSON column may mix numbers and strings, which arrow would refuse.
    return pa.table(
        {name: pa.array([_text_or_none(r.get(name)) for r in records], pa.string()) for name in names}
    )


def existing_file(path: str | Path, what: str) -> Path:
    if not str(path):
        raise ValueError(f"no {what} given: set its path in the source config")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} is not a file")
    return Path(path)
