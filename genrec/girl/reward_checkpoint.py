"""A reward checkpoint's description file, genrec.json: written by every reward model's save and read
by `genrec.girl.reward.load_reward`, the one loader of all backbones (neural and tfidf)."""
from __future__ import annotations

import json
from pathlib import Path

META_FILE = "genrec.json"


def write_meta(directory: Path, meta: dict) -> None:
    """genrec.json for a reward checkpoint in `directory` (its stage is "reward")."""
    (Path(directory) / META_FILE).write_text(json.dumps(dict(meta, stage="reward"), indent=2, default=str))


def read_meta(path) -> tuple[Path, dict]:
    """(the checkpoint folder, its genrec.json) for train-reward's out_dir/final or that out_dir;
    an error naming the folder when it holds no reward checkpoint."""
    path = Path(path)
    if not (path / META_FILE).exists() and (path / "final" / META_FILE).exists():
        path = path / "final"
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a reward checkpoint: {META_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("stage") != "reward":
        raise ValueError(f"{path} holds a {meta.get('stage')!r} checkpoint, not a reward model")
    meta["checkpoint"] = str(path.resolve())
    return path, meta
