"""How stage configs (genrec/config.py) are declared, loaded, checked and written.

A config is a dataclass deriving from `Config`. Each field is declared with `field(default, help,
ge=.., gt=.., le=.., lt=..)`: the help text feeds `genrec <verb> --help`, the bounds are checked
for every instance (however it was built) by `check_bounds`, and rules that tie fields together
live in the class's `validate`. Nested sections (`sub`) are addressed with dotted keys
(`lora.r=8`). Unknown keys and values of the wrong type are errors naming the key.

Keys that were renamed keep working: a class's RENAMED maps an old key to its new dotted key (and
RENAMED_VALUES an old value of a key to its new one); loading such a config logs the new name and
reads the value under it, so configs and scripts written for the old names still run (a warning, not
an error: a renamed key has one meaning, so reading it is never a guess).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import operator
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

from genrec.models.pretrained import PRESETS as PRETRAINED_PRESETS

log = logging.getLogger("genrec.config")

# Model names that are presets, never paths (even where a folder of that name exists).
PRESET_MODELS = ("tiny", "minilm", "tfidf", *PRETRAINED_PRESETS)

BOUNDS = {"ge": (operator.ge, "at least"), "gt": (operator.gt, "more than"),
          "le": (operator.le, "at most"), "lt": (operator.lt, "less than")}


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass; the message names the key."""


def field(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with a help text and optional bounds (ge, gt, le, lt); mutable defaults are
    copied per instance."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"field: unknown bound {sorted(unknown)}; use {sorted(BOUNDS)}")
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def sub(cls: type, help: str, **defaults: Any) -> Any:
    """A nested section; `defaults` override the section's own defaults for this stage."""
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"help": help, "defaults": defaults})


class Config:
    """Base of every config dataclass: bounds are checked, then the class's own `validate`."""

    RENAMED: ClassVar[dict[str, str]] = {}
    RENAMED_VALUES: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        check_bounds(self)
        self.validate()

    def validate(self) -> None:
        """Rules that tie fields together; a subclass raises ConfigError naming the key."""


def check_bounds(config: Any) -> None:
    """Every field's declared bounds (nested sections check their own when they are built)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for name, limit in f.metadata.get("bounds", {}).items():
            holds, words = BOUNDS[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # e.g. samples_per_user: "all"; its numbers are still checked
            if not holds(value, limit):
                raise ConfigError(f"{f.name}: must be {words} {limit}, got {value}")


# ---------------------------------------------------------------------------------------- loading
def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build `cls` from an optional YAML file, then apply `key=value` overrides (dotted for nesting)."""
    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        data = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), Override(raw))
    return from_dict(cls, data)


class Override(str):
    """A command-line value, kept as typed: a str field takes it as is (`run_name=007` stays "007"),
    any other field reads it as YAML (`lr=1e-3`, `strict=true`, `fields=[a, b]`)."""

    def parsed(self) -> Any:
        return yaml.safe_load(self) if self != "" else ""


def set_dotted(data: dict, key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b", making sections as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = value


def renamed(cls: type, data: dict, prefix: str = "") -> dict:
    """`data` with the class's old keys and values under their new names (each logged)."""
    data = dict(data)
    for old, new in getattr(cls, "RENAMED", {}).items():
        value = data[old].parsed() if isinstance(data.get(old), Override) else data.get(old)
        if new.startswith(old + ".") and isinstance(value, dict):
            continue  # `lora:` written as the section it now is, not the old flag
        if old in data:
            log.warning("config: %s is now %s; reading it as that", prefix + old, prefix + new)
            set_dotted(data, new, data.pop(old))
    for key, values in getattr(cls, "RENAMED_VALUES", {}).items():
        value = data.get(key)
        if isinstance(value, str) and str(value) in values:
            log.warning("config: %s=%s is now %s=%s; reading it as that", prefix + key, value, prefix + key,
                        values[str(value)])
            data[key] = values[str(value)]
    return data


def from_dict(cls: type, data: dict, prefix: str = ""):
    data = renamed(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix + unknown[0]!r} for {cls.__name__}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, Override) and dataclasses.is_dataclass(hints[name]):
            value = value.parsed()  # a section given on the command line: `lora={r: 8}`
        section_defaults = fields[name].metadata.get("defaults", {})
        if section_defaults and isinstance(value, dict):  # this stage's own defaults for the section
            value = {**section_defaults, **value}
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(prefix + str(e)) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is looser than the type."""
    if isinstance(value, Override):
        if tp is str:
            return str(value)
        value = value.parsed()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin in (list, tuple):
        if isinstance(value, str):  # "1,5,10": each element typed as a command-line value of its own
            value = [Override(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


# -------------------------------------------------------------------------------------- describing
def describe(cls: type, prefix: str = "", defaults: dict | None = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every field, nested sections flattened with dotted keys."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + ".", f.metadata.get("defaults", {})))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = (defaults or {}).get(f.name, default)
        bounds = ", ".join(f"{BOUNDS[name][1]} {limit}" for name, limit in f.metadata.get("bounds", {}).items())
        help_text = f.metadata.get("help", "") + (f" ({bounds})" if bounds else "")
        rows.append((prefix + f.name, _type_name(tp), json.dumps(default), help_text))
    return rows


def keys(cls: type) -> set[str]:
    """Every key of `cls`, dotted for nested sections."""
    return {row[0] for row in describe(cls)}


def absolute_input_paths(cls: type, values: dict) -> dict:
    """The entries of `values` that `cls.INPUT_PATHS` names, made absolute where they name a file or
    folder on this machine; presets and hub ids name none and are left out (they stay as written).

    Ray Train starts each worker, and Tune each trial, in a folder of its own: a relative path from a
    config or the command line must be resolved where the user wrote it, before either starts."""
    return {name: str(Path(values[name]).resolve()) for name in getattr(cls, "INPUT_PATHS", ())
            if values.get(name) and values[name] not in PRESET_MODELS and Path(values[name]).exists()}


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Every run writes its config next to its outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
