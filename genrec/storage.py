"""Stage folders on object storage.

A stage's data_dir, out_dir or checkpoint_dir may be a URI (`s3://bucket/prefix`, or any scheme
pyarrow's FileSystem.from_uri knows: `gs://`, `hdfs://`, ...) as well as a local path. The nodes of
a real cluster share no disk: a worker on one node cannot read a folder the driver wrote on another,
but all of them reach the same bucket.

A stage works on a node-local `Mirror` of such a folder: it pulls what it is about to read, reads and
writes plain files as it would locally, and pushes what it wrote once the write is whole (the
tokenizer, a best or final model, the metrics log). For a local path the mirror is the folder
itself and pull and push do nothing, so the local code path is the one every test runs.

Credentials and endpoints come from the environment, the way pyarrow reads them (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an S3-compatible server); on a
cluster they reach every worker through the job's runtime_env env_vars. Ray Train's checkpoints go
to `<out_dir>/ray` on the same storage through Ray Train's own pyarrow support.

Mirrors live in $GENREC_CACHE/mirrors/<hash of the URI> (default ~/.cache/genrec/mirrors).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from genrec.models.pretrained import cache_root  # $GENREC_CACHE, as the model presets use it

MANIFEST = ".genrec_mirror.json"  # files known to equal the remote copy: relative path -> [size, mtime]
LOCK = ".genrec_mirror.lock"
WRITTEN_LAST = "genrec.json"  # a folder's marker file: pushed last, so whoever sees it sees the whole folder


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, *names: str) -> str:
    """`location`/names as a string, for a URI or a local path."""
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *names])
    return str(Path(location, *names))


class Mirror:
    """A folder at `location` (a URI or a local path) and its copy on this node, `local`."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.remote = is_uri(location)
        if self.remote:
            self.fs, root = pafs.FileSystem.from_uri(self.location)
            self.root = root.rstrip("/")
            self.local = cache_root() / "mirrors" / hashlib.sha256(self.location.encode()).hexdigest()[:20]
            self.local.mkdir(parents=True, exist_ok=True)
        else:  # a stage creates its own out_dir; a missing input stays missing, for its error to name
            self.local = Path(location)

    def __repr__(self) -> str:
        return f"Mirror({self.location!r} at {self.local})" if self.remote else f"Mirror({self.location!r})"

    def exists(self, name: str) -> bool:
        """Whether `name` (a file or folder in the location) exists there."""
        if not self.remote:
            return (self.local / name).exists()
        return self.fs.get_file_info(f"{self.root}/{name}").type != pafs.FileType.NotFound

    def pull(self, *names: str) -> Path:
        """Make the local copies of `names` (files or folders; the whole location when none) equal the
        remote ones: download what is new or changed, delete what an earlier pull or push brought and
        the location no longer holds. Files made only on this node and never pushed stay. Returns `local`."""
        if not self.remote:
            return self.local
        with self._locked():
            manifest = self._manifest()
            remote = {}
            for name in names or ("",):
                remote.update(self._remote_files(name))
            for rel in [rel for rel in manifest if _under(rel, names) and rel not in remote]:
                (self.local / rel).unlink(missing_ok=True)
                del manifest[rel]
            for rel, stamp in remote.items():
                if manifest.get(rel) != stamp or not (self.local / rel).exists():
                    target = self.local / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(target.name + ".partial")
                    pafs.copy_files(f"{self.root}/{rel}", str(partial), source_filesystem=self.fs,
                                    destination_filesystem=pafs.LocalFileSystem())
                    os.replace(partial, target)
                    manifest[rel] = stamp
            self._save_manifest(manifest)
        return self.local

    def push(self, *names: str, last: str = WRITTEN_LAST) -> None:
        """Upload the local `names` (files or folders) to the location, replacing what is there under
        those names (a name missing here is removed there); a folder's `last` file (its marker of a
        whole folder) goes last."""
        if not self.remote:
            return
        with self._locked():
            manifest = self._manifest()
            for name in names:
                path = self.local / name
                files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
                files.sort(key=lambda p: p.name == last)
                local = {p.relative_to(self.local).as_posix() for p in files}
                for rel in self._remote_files(name):
                    if rel not in local:
                        self.fs.delete_file(f"{self.root}/{rel}")
                        manifest.pop(rel, None)
                for file in files:
                    rel = file.relative_to(self.local).as_posix()
                    pafs.copy_files(str(file), f"{self.root}/{rel}", source_filesystem=pafs.LocalFileSystem(),
                                    destination_filesystem=self.fs)
                    manifest[rel] = self._stamp(self.fs.get_file_info(f"{self.root}/{rel}"))
            self._save_manifest(manifest)

    def children(self, name: str) -> list[str]:
        """The names directly inside folder `name`, listed where they live (the location, for a URI)."""
        if not self.remote:
            folder = self.local / name
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        return sorted({rel[len(name) + 1:].split("/", 1)[0] for rel in self._remote_files(name)})

    def delete(self, name: str) -> None:
        """Remove the file or folder `name`, here and at the location."""
        path = self.local / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        if self.remote:
            with self._locked():
                manifest = self._manifest()
                for rel in self._remote_files(name):
                    self.fs.delete_file(f"{self.root}/{rel}")
                    manifest.pop(rel, None)
                self._save_manifest(manifest)

    # --------------------------------------------------------------------------------- internals
    def _remote_files(self, name: str) -> dict[str, list]:
        path = f"{self.root}/{name}".rstrip("/")
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return {}
        if info.type == pafs.FileType.File:
            return {name: self._stamp(info)}
        found = self.fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return {i.path[len(self.root) + 1:]: self._stamp(i) for i in found if i.type == pafs.FileType.File}

    @staticmethod
    def _stamp(info: pafs.FileInfo) -> list:
        return [info.size, info.mtime_ns]

    def _manifest(self) -> dict:
        path = self.local / MANIFEST
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_manifest(self, manifest: dict) -> None:
        partial = self.local / (MANIFEST + ".partial")
        partial.write_text(json.dumps(manifest, sort_keys=True))
        os.replace(partial, self.local / MANIFEST)

    @contextlib.contextmanager
    def _locked(self):
        """One pull or push at a time per mirror on this node (two workers of a run may share a node)."""
        with open(self.local / LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _under(rel: str, names: tuple[str, ...]) -> bool:
    return not names or any(rel == n or rel.startswith(n.rstrip("/") + "/") for n in names)


def fetch(location: str | Path) -> Path:
    """A folder to read: the local path itself, or a URI's local mirror, pulled in full."""
    return Mirror(location).pull()


def fetch_file(location: str | Path) -> Path:
    """A file to read: the local path itself, or a URI's copy on this node."""
    if not is_uri(location):
        return Path(location)
    folder, name = str(location).rstrip("/").rsplit("/", 1)
    return Mirror(folder).pull(name) / name


def localize(location: str | Path) -> Path:
    """A file or folder to read, as a local path: itself, or a URI's copy on this node."""
    if not is_uri(location):
        return Path(location)
    fs, path = pafs.FileSystem.from_uri(str(location))
    return fetch_file(location) if fs.get_file_info(path).type == pafs.FileType.File else fetch(location)


def local_inputs(cfg):
    """`cfg` (a stage config) with every input path (its INPUT_PATHS) that is a URI replaced by this
    node's copy; each process that reads them calls this where it runs."""
    import dataclasses

    found = {name: str(localize(getattr(cfg, name))) for name in getattr(type(cfg), "INPUT_PATHS", ())
             if is_uri(getattr(cfg, name) or "")}
    return dataclasses.replace(cfg, **found) if found else cfg


def shown(location: str | Path) -> str:
    """How a location is reported (logs, /v1/models): a URI as written, a local path made absolute."""
    return str(location) if is_uri(location) else str(Path(location).resolve())
