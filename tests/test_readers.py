"""Readers and catalog: every format and variant, malformed rows counted exactly, strict mode, real data."""
import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.config import SourceConfig
from genrec.data import schema
from genrec.data.catalog import build_catalog, clean_title, read_amazon_meta, read_movielens_catalog, unique_titles
from genrec.data.readers import plan_chunks, read_source
from genrec.data.rejects import RejectError
from conftest import shared_data


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def collect(source, blocks: int = 0):
    """All interactions in source order, and the rejects the read tasks reported; `blocks`: the
    number of read tasks expected (each task's output stays one block at these sizes)."""
    import ray

    refs = source.interactions.to_arrow_refs()
    assert not blocks or len(refs) == blocks
    table = pa.concat_tables([ray.get(ref) for ref in refs])
    assert table.schema.equals(schema.INTERACTION_SCHEMA)
    return table.sort_by("order"), ray.get(source.log.get.remote())


def rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in ("user_id", "item_id", "timestamp"))))


# ------------------------------------------------------------------------------------------ catalog
def test_clean_title_unescapes_and_folds_whitespace():
    assert clean_title("Tom &amp;amp; Jerry&#39;s\t  big\n day ") == "Tom & Jerry's big day"
    assert clean_title("&quot;Wally&quot;\u00a0the Pig") == '"Wally" the Pig'
    assert clean_title(None) == ""


def test_unique_titles_appends_k_and_skips_taken_titles():
    titles = ["X", "Y", "X", "X (#2)", "X", "Y"]
    assert unique_titles(titles) == ["X", "Y", "X (#3)", "X (#2)", "X (#4)", "Y (#2)"]


def test_build_catalog_counts_what_it_drops():
    catalog, rejects = build_catalog(
        ["a", "b", "a", None, "d", "e"],
        ["A", " &nbsp; ", "A again", "Z", "A", "&lt;B&gt;"],
        {"genre": ["g1", "g2", "g3", "g4", "g5", 6]},
        source="items.csv",
    )
    assert catalog.to_pylist() == [
        {"item_id": "a", "title": "A", "genre": "g1"},
        {"item_id": "d", "title": "A (#2)", "genre": "g5"},
        {"item_id": "e", "title": "<B>", "genre": "6"},
    ]
    assert rejects.counts == {schema.EMPTY_TITLE: 1, schema.DUPLICATE_CATALOG_ID: 1, schema.BAD_ID: 1}
    assert rejects.examples[schema.DUPLICATE_CATALOG_ID] == "items.csv: item a: 'A again'"


# ---------------------------------------------------------------------------------------- movielens
def ml100k(folder: Path, ratings: str) -> Path:
    write(folder / "u.genre", "unknown|0\nAction|1\nComedy|2\n\n")
    write(
        folder / "u.item",
        "1|Toy Story (1995)|01-Jan-1995||http://a|0|0|1\n"
        "2|Café Society (1995)|01-Jan-1995||http://b|0|1|1\n"
        "3|  Toy Story   (1995) |01-Jan-1995||http://c|1|0|0\n",
        encoding="latin-1",
    )
    write(folder / "u.data", ratings)
    return folder


ML100K_RATINGS = (
    "10\t1\t5\t100\n"  # 1 ok
    "10\t2\t4\t101\n"  # 2 ok
    "11\t1\t3\n"  # 3 wrong field count
    "\n"  # 4 blank: no row
    "\t2\t3\t102\n"  # 5 bad id
    "12\t3\t3\tsoon\n"  # 6 bad timestamp
    "12\t99\t3\t103\n"  # 7 item missing from the catalog
    "12\t3\t3\t104\n"  # 8 ok
)


def test_movielens_100k(ray_session, tmp_path):
    folder = ml100k(tmp_path / "ml-100k", ML100K_RATINGS)
    source = read_source(SourceConfig(format="movielens", path=str(folder)))
    assert source.catalog.to_pylist() == [
        {"item_id": "1", "title": "Toy Story (1995)", "genres": "Comedy"},
        {"item_id": "2", "title": "Café Society (1995)", "genres": "Action|Comedy"},
        {"item_id": "3", "title": "Toy Story (1995) (#2)", "genres": "unknown"},
    ]
    assert source.catalog_rejects.counts == {}
    table, rejects = collect(source)
    assert rows(table) == [("10", "1", 100), ("10", "2", 101), ("12", "3", 104)]
    assert table["order"].to_pylist() == [1, 2, 8]
    assert rejects.counts == {
        schema.WRONG_FIELD_COUNT: 1,
        schema.BAD_ID: 1,
        schema.BAD_TIMESTAMP: 1,
        schema.ITEM_NOT_IN_CATALOG: 1,
    }
    data = folder / "u.data"
    assert rejects.examples[schema.WRONG_FIELD_COUNT] == f"{data}:3: '11\\t1\\t3'"
    assert rejects.examples[schema.BAD_TIMESTAMP] == f"{data}:6: '12\\t3\\t3\\tsoon'"
    assert rejects.examples[schema.ITEM_NOT_IN_CATALOG] == f"{data}:7: '12\\t99\\t3\\t103'"


def test_movielens_1m(ray_session, tmp_path):
    folder = tmp_path / "ml-1m"
    write(folder / "movies.dat", "1::Toy Story (1995)::Animation|Comedy\n2::Jumanji é (1995)::Adventure\n", "latin-1")
    write(folder / "ratings.dat", "1::1::5::978300760\n1::2::3::978300761\n2::1\n3::2::4::x\r\n3::2::4::978300762\r\n")
    source = read_source(SourceConfig(format="movielens", path=str(folder)))
    assert source.catalog["title"].to_pylist() == ["Toy Story (1995)", "Jumanji é (1995)"]
    assert source.catalog["genres"].to_pylist() == ["Animation|Comedy", "Adventure"]
    table, rejects = collect(source)
    assert rows(table) == [("1", "1", 978300760), ("1", "2", 978300761), ("3", "2", 978300762)]
    assert rejects.counts == {schema.WRONG_FIELD_COUNT: 1, schema.BAD_TIMESTAMP: 1}
    assert rejects.examples[schema.WRONG_FIELD_COUNT] == f"{folder / 'ratings.dat'}:3: '2::1'"


def test_movielens_latest_csv(ray_session, tmp_path):
    folder = tmp_path / "ml-latest-small"
    write(
        folder / "movies.csv",
        'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama\n'
        "2,Million Dollar Duck;The (a.k.a. $1,000 000 Duck) (1971),Children|Comedy\n",
    )
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.5,964981247\n1,3,1.0,5\n")
    source = read_source(SourceConfig(format="movielens", path=str(folder)))
    assert source.catalog.to_pylist() == [
        {"item_id": "1", "title": "American President, The (1995)", "genres": "Comedy|Drama"},
        {"item_id": "2", "title": "Million Dollar Duck;The (a.k.a. $1,000 000 Duck) (1971)", "genres": "Children|Comedy"},
    ]
    table, rejects = collect(source)
    assert rows(table) == [("1", "1", 964982703), ("1", "2", 964981247)]
    assert table["order"].to_pylist() == [2, 3]  # line numbers: the header is line 1
    assert rejects.counts == {schema.ITEM_NOT_IN_CATALOG: 1}


def test_movielens_missing_files_are_named(ray_session, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_source(SourceConfig(format="movielens", path=str(tmp_path / "nowhere")))
    folder = tmp_path / "ml"
    write(folder / "movies.csv", "movieId,title,genres\n1,A (1999),Drama\n")
    with pytest.raises(FileNotFoundError, match=r"no ratings file \(one of u.data, ratings.dat, ratings.csv\); found: movies.csv"):
        read_source(SourceConfig(format="movielens", path=str(folder)))


# --------------------------------------------------------------------------------- strict, chunking
def test_strict_raises_quoting_the_line(ray_session, tmp_path):
    folder = ml100k(tmp_path / "ml-100k", ML100K_RATINGS.replace("11\t1\t3\n", "11\t1\t3\t99\n"))
    source = read_source(SourceConfig(format="movielens", path=str(folder), strict=True))
    with pytest.raises(Exception) as raised:
        collect(source)
    # the earliest malformed row of the chunk: line 5 (bad id), not line 6
    assert f"{folder / 'u.data'}:5: '\\t2\\t3\\t102'" in str(raised.value)

    write(folder / "u.item", "1|Toy Story (1995)|x\n")
    with pytest.raises(RejectError, match=r"u.item:1: '1\|Toy Story \(1995\)\|x'"):
        read_source(SourceConfig(format="movielens", path=str(folder), strict=True))


def test_plan_chunks_align_to_line_starts(tmp_path):
    lines = ["header"] + [("x" * (i % 37)) + str(i) for i in range(1, 400)]
    path = write(tmp_path / "f.txt", "\n".join(lines) + "\n")
    data = path.read_bytes()
    chunks = plan_chunks(path, 3, chunk_bytes=64, header=True)
    assert len(chunks) > 20 and chunks[0]["start"] == len("header\n") and chunks[-1]["end"] == len(data)
    for before, after in zip(chunks, chunks[1:]):
        assert before["end"] == after["start"] and data[after["start"] - 1 : after["start"]] == b"\n"
    for chunk in chunks:
        first = data[chunk["start"] :].split(b"\n", 1)[0].decode()
        assert first == lines[chunk["first_line"] - 1] and chunk["file_index"] == 3


def test_order_follows_the_file_across_chunks(ray_session, tmp_path):
    n = 3000
    ratings = [f"{i % 50}\t{1 + i % 3}\t3\t{1000 - i}" for i in range(n)]
    ratings[2344] = "7\t1\t3\tlater"
    folder = ml100k(tmp_path / "ml-100k", "\n".join(ratings) + "\n")
    source = read_source(SourceConfig(format="movielens", path=str(folder)), chunk_bytes=4096)
    chunks = plan_chunks(folder / "u.data", 0, chunk_bytes=4096)
    assert len(chunks) > 5
    table, rejects = collect(source, blocks=len(chunks))  # one read task per chunk
    assert table["order"].to_pylist() == [line for line in range(1, n + 1) if line != 2345]
    assert table["timestamp"].to_pylist() == [1000 - i for i in range(n) if i != 2344]
    assert rejects.counts == {schema.BAD_TIMESTAMP: 1}
    assert rejects.examples[schema.BAD_TIMESTAMP] == f"{folder / 'u.data'}:2345: '7\\t1\\t3\\tlater'"


# ------------------------------------------------------------------------------------------- amazon
def test_amazon_reviews_with_2014_and_2018_meta(ray_session, tmp_path):
    meta = write(
        tmp_path / "meta_Toys.json",
        "{'asin': 'A1', 'title': 'Tom &amp;amp; Jerry   Set', 'price': 3.5, 'categories': [['Toys']]}\n"
        '{"asin": "A2", "title": "Lego"}\n'
        "{'asin': 'A3', 'categories': [['Toys']]}\n"
        '{"asin": "A4", "title": "  "}\n'
        "{'asin': 'A5', 'title': \n",
    )
    reviews = write(
        tmp_path / "reviews_Toys_5.json",
        '{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 100, "overall": 5.0}\n'
        '{"reviewerID": "U1", "asin": "A2", "unixReviewTime": 101}\n'
        '{"reviewerID": "U2", "asin": "A3", "unixReviewTime": 102}\n'
        '{"reviewerID": "U2", "asin": "A1", "unixReviewTime": 103\n'
        '{"asin": "A1", "unixReviewTime": 104}\n'
        '{"reviewerID": "U3", "asin": "A2", "unixReviewTime": "yesterday"}\n'
        '{"reviewerID": "U3", "asin": "A2", "unixReviewTime": 105}\n',
    )
    source = read_source(SourceConfig(format="amazon", path=str(reviews), catalog_path=str(meta)))
    assert source.catalog.to_pylist() == [{"item_id": "A1", "title": "Tom & Jerry Set"}, {"item_id": "A2", "title": "Lego"}]
    assert source.catalog_rejects.counts == {schema.EMPTY_TITLE: 2, schema.MALFORMED_RECORD: 1}
    table, rejects = collect(source)
    assert rows(table) == [("U1", "A1", 100), ("U1", "A2", 101), ("U3", "A2", 105)]
    assert rejects.counts == {
        schema.ITEM_NOT_IN_CATALOG: 1,
        schema.MALFORMED_RECORD: 1,
        schema.BAD_ID: 1,
        schema.BAD_TIMESTAMP: 1,
    }
    assert rejects.examples[schema.MALFORMED_RECORD].startswith(f"{reviews}:4: '{{\"reviewerID\": \"U2\"")

    zipped = tmp_path / "meta_Toys.json.gz"
    zipped.write_bytes(gzip.compress(meta.read_bytes()))
    assert read_amazon_meta(zipped)[0].equals(source.catalog)


# ---------------------------------------------------------------------------------------- sequences
def test_sequences_with_csv_item_table(ray_session, tmp_path):
    items = write(
        tmp_path / "items.csv",
        'id,name,brand\ni1,Alpha &amp; Beta,Acme\ni2,"Gamma, deluxe",Bcme\ni3,Delta,\n',
    )
    seqs = write(tmp_path / "seq.txt", "u1\ti1 i2  i3\nu2 i2\ti9\nu3\n\nu4 i3 i1 \n")
    cfg = SourceConfig(format="sequences", path=str(seqs), catalog_path=str(items), item_col="id", title_col="name")
    source = read_source(cfg, chunk_bytes=8)
    assert source.catalog.to_pylist() == [
        {"item_id": "i1", "title": "Alpha & Beta", "brand": "Acme"},
        {"item_id": "i2", "title": "Gamma, deluxe", "brand": "Bcme"},
        {"item_id": "i3", "title": "Delta", "brand": ""},
    ]
    table, rejects = collect(source)
    assert rows(table) == [("u1", "i1", 0), ("u1", "i2", 1), ("u1", "i3", 2), ("u2", "i2", 0), ("u4", "i3", 0), ("u4", "i1", 1)]
    assert rejects.counts == {schema.ITEM_NOT_IN_CATALOG: 1, schema.WRONG_FIELD_COUNT: 1}
    assert rejects.examples[schema.WRONG_FIELD_COUNT] == f"{seqs}:3: 'u3'"
    assert rejects.examples[schema.ITEM_NOT_IN_CATALOG] == f"{seqs}:2: 'u2 i2\\ti9'"


def test_item_table_missing_column_is_named(ray_session, tmp_path):
    items = write(tmp_path / "items.tsv", "asin\tname\nB1\tA toy\n")
    seqs = write(tmp_path / "seq.txt", "u1 B1\n")
    with pytest.raises(ValueError, match="no title column 'title'; columns found: asin, name"):
        read_source(SourceConfig(format="sequences", path=str(seqs), catalog_path=str(items), item_col="asin"))
    with pytest.raises(FileNotFoundError, match="sequences file"):
        read_source(SourceConfig(format="sequences", path=str(tmp_path / "none.txt"), catalog_path=str(items), item_col="asin", title_col="name"))


# -------------------------------------------------------------------------------------------- table
def parquet_catalog(path: Path) -> Path:
    pq.write_table(pa.table({"item": [1, 2, 3], "title": ["One", "Two", "Three"], "year": [2001, None, 2003]}), path)
    return path


def test_table_parquet_folder(ray_session, tmp_path):
    catalog = parquet_catalog(tmp_path / "items.parquet")
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(  # three row groups of two rows
        pa.table({"uid": [7, 7, None, 8, 8, 9], "iid": [1.0, 2.0, 3.0, 4.0, float("nan"), 3.0], "t": [5, 6, 7, 8, 9, None]}),
        folder / "part-0.parquet",
        row_group_size=2,
    )
    pq.write_table(pa.table({"uid": [9], "iid": [2.0], "t": [1]}), folder / "part-1.parquet")
    cfg = SourceConfig(format="table", path=str(folder), catalog_path=str(catalog), user_col="uid", item_col="iid", time_col="t", catalog_item_col="item")
    source = read_source(cfg)
    assert source.catalog.to_pylist()[1] == {"item_id": "2", "title": "Two", "year": None}
    table, rejects = collect(source, blocks=4)  # one read task per row group
    assert rows(table) == [("7", "1", 5), ("7", "2", 6), ("9", "2", 1)]
    assert table["order"].to_pylist() == [0, 1, 1 << 40]
    assert rejects.counts == {schema.BAD_ID: 2, schema.ITEM_NOT_IN_CATALOG: 1, schema.BAD_TIMESTAMP: 1}
    assert rejects.examples[schema.BAD_ID] == f"{folder / 'part-0.parquet'}: row 2: 'uid=None, iid=3.0, t=7'"


def test_table_csv_in_file_order(ray_session, tmp_path):
    catalog = parquet_catalog(tmp_path / "items.parquet")
    log = write(tmp_path / "log.csv", 'user,item,rating\n"a, b",1,5\nc,2\nc,3,4\n\nd,1,2\n')
    cfg = SourceConfig(format="table", path=str(log), catalog_path=str(catalog), user_col="user", item_col="item", time_col="", catalog_item_col="item")
    table, rejects = collect(read_source(cfg, chunk_bytes=10))
    assert rows(table) == [("a, b", "1", 2), ("c", "3", 4), ("d", "1", 6)]  # timestamp = order = line
    assert rejects.counts == {schema.WRONG_FIELD_COUNT: 1}

    with pytest.raises(ValueError, match="no time column 'ts'; columns found: user, item, rating"):
        read_source(SourceConfig(format="table", path=str(log), catalog_path=str(catalog), user_col="user", item_col="item", time_col="ts", catalog_item_col="item"))


def test_table_jsonl(ray_session, tmp_path):
    catalog = write(tmp_path / "items.jsonl", '{"item_id": 1, "title": "One"}\n{"item_id": 2, "title": "Two", "tags": ["x"]}\n')
    log = write(
        tmp_path / "log.jsonl",
        '{"user_id": 5, "item_id": 1, "timestamp": 10}\n'
        '{"user_id": 5, "item_id": 2.0, "timestamp": 11.0}\n'
        "[1, 2]\n"
        '{"user_id": true, "item_id": 2, "timestamp": 12}\n'
        '{"user_id": "6", "item_id": "2", "timestamp": 1.5}\n',
    )
    source = read_source(SourceConfig(format="table", path=str(log), catalog_path=str(catalog)))
    assert source.catalog["tags"].to_pylist() == [None, '["x"]']
    table, rejects = collect(source)
    assert rows(table) == [("5", "1", 10), ("5", "2", 11)]
    assert rejects.counts == {schema.MALFORMED_RECORD: 1, schema.BAD_ID: 1, schema.BAD_TIMESTAMP: 1}


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.shared_data
def test_real_amazon_toys(ray_session):
    folder = shared_data("amazon-toys")
    cfg = SourceConfig(
        format="sequences", path=str(folder / "sequences_asin.tsv"), catalog_path=str(folder / "items.tsv"), item_col="asin"
    )
    source = read_source(cfg, chunk_bytes=512 << 10)
    table, rejects = collect(source)
    assert source.catalog.num_rows == 11924 and source.catalog_rejects.total == 0 and rejects.total == 0
    assert table.num_rows == 167597
    assert len(set(table["user_id"].to_pylist())) == 19412 and len(set(table["item_id"].to_pylist())) == 11924
    assert len(set(source.catalog["title"].to_pylist())) == 11924


@pytest.mark.shared_data
def test_real_movielens_100k(ray_session):
    source = read_source(SourceConfig(format="movielens", path=str(shared_data("ml-100k"))), chunk_bytes=512 << 10)
    table, rejects = collect(source)
    assert table.num_rows == 100000 and rejects.total == 0 and source.catalog_rejects.total == 0
    assert len(set(table["user_id"].to_pylist())) == 943 and len(set(table["item_id"].to_pylist())) == 1682
    assert source.catalog.num_rows == 1682 and len(set(source.catalog["title"].to_pylist())) == 1682


@pytest.mark.shared_data
def test_real_movielens_25m_catalog():
    catalog, rejects = read_movielens_catalog(shared_data("ml-25m-movies"))
    assert catalog.num_rows == 62423 and rejects.total == 0
    assert len(set(catalog["title"].to_pylist())) == 62423
    assert catalog.column_names == ["item_id", "title", "genres"]
