"""genrec/storage.py: folders on an S3-compatible server on 127.0.0.1 (moto), mirrored on two "nodes"
(two GENREC_CACHE folders), and a local path as its own mirror."""
import uuid

import pyarrow.fs as pafs
import pytest

from genrec.storage import MANIFEST, Mirror, fetch, is_uri, join


@pytest.fixture()
def s3(s3_server, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return f"s3://genrec/{uuid.uuid4().hex[:8]}"  # a fresh prefix per test


def on_node(monkeypatch, tmp_path, node: str, location: str) -> Mirror:
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / node))
    return Mirror(location)


def files(mirror: Mirror) -> dict:
    return {p.relative_to(mirror.local).as_posix(): p.read_text() for p in mirror.local.rglob("*")
            if p.is_file() and not p.name.startswith(".genrec_mirror")}


def test_a_folder_pushed_on_one_node_is_pulled_whole_on_another(s3, monkeypatch, tmp_path):
    a = on_node(monkeypatch, tmp_path, "a", s3)
    (a.local / "best").mkdir()
    (a.local / "best" / "model.bin").write_text("weights")
    (a.local / "best" / "genrec.json").write_text("{}")
    (a.local / "metrics.jsonl").write_text("1\n")
    a.push("best", "metrics.jsonl")
    b = on_node(monkeypatch, tmp_path, "b", s3)
    assert b.local != a.local and not b.exists("nothing") and b.exists("best") and b.exists("best/model.bin")
    assert b.pull("best") == b.local and files(b) == {"best/model.bin": "weights", "best/genrec.json": "{}"}
    b.pull()
    assert files(b) == files(a)


def test_pull_follows_changes_and_deletions_and_keeps_what_was_made_only_here(s3, monkeypatch, tmp_path):
    a = on_node(monkeypatch, tmp_path, "a", s3)
    (a.local / "tokens").mkdir()
    for name in ("part-0", "part-1"):
        (a.local / "tokens" / name).write_text(name)
    a.push("tokens")
    b = on_node(monkeypatch, tmp_path, "b", s3)
    b.pull()
    (b.local / "item_text_vectors.parquet").write_text("made on b, never pushed")

    # a rewrites the folder with one file changed and one gone: the push deletes it on S3 too.
    (a.local / "tokens" / "part-1").unlink()
    (a.local / "tokens" / "part-0").write_text("part-0, longer now")
    a.push("tokens")
    fs, root = pafs.FileSystem.from_uri(s3)
    listed = {i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File}
    assert listed == {f"{root}/tokens/part-0"}
    b.pull()
    assert files(b) == {"tokens/part-0": "part-0, longer now", "item_text_vectors.parquet": "made on b, never pushed"}
    assert (b.local / MANIFEST).exists()


def test_a_local_path_is_its_own_mirror(tmp_path):
    mirror = Mirror(tmp_path / "out")
    assert not mirror.remote and mirror.local == tmp_path / "out" and not mirror.local.exists()  # made by its stage
    mirror.local.mkdir()
    (mirror.local / "x").write_text("1")
    mirror.push("x")
    assert mirror.pull("x") == mirror.local and files(mirror) == {"x": "1"}
    assert fetch(tmp_path / "out") == tmp_path / "out"
    assert not is_uri(tmp_path) and is_uri("s3://b/p") and join("s3://b/p/", "ray") == "s3://b/p/ray"
    assert join(tmp_path, "ray") == str(tmp_path / "ray")
