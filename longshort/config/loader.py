"""Typed recipes: YAML files + `key=value` overrides -> validated dataclasses.

Every section is a dataclass whose fields carry `metadata={"help": ...}`. The loader checks each key
against the dataclass (unknown keys, wrong types, missing required values) and raises `ConfigError`
with a one-line message naming the dotted key and the file (or "command line").

Numbers are checked from their declared type alone, so no section can forget it: every `float` must be finite
(NaN and ±inf are refused: a NaN learning rate trains a NaN model), and every number must be >= 0 (no count, size,
rate, probability, weight or seed of a recipe is negative) and at most `MAX_INT` (an int32: larger counts are
typos no machine could run, and torch/numpy refuse such seeds). Sections check their tighter ranges themselves.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from longshort.errors import ConfigError

T = TypeVar("T")
_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
MISSING = dataclasses.MISSING
MAX_INT = 2**31 - 1


def doc(help: str, default: Any = MISSING, *, factory: Any = MISSING, path: bool = False, recipe: bool = False) -> Any:
    """A dataclass field with a help string (shown by `longshort config keys`).

    `path`: the value is an input path (or a mapping of names to paths); a relative one is looked up next to the
    recipe file first, then in the working directory (`anchor_paths`). `recipe`: the value holds recipe sections
    (a pipeline stage's overlay), whose paths are anchored the same way.
    """
    meta = {"help": help, "path": path, "recipe": recipe}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


KEYWORDS = ("tiny",)  # values of path keys that name no path (`model.base: tiny` builds the embedded model)


def _anchor(value: Any, folder: Path) -> Any:
    """`value` next to the recipe file when it is a relative path that exists there, else unchanged (the working
    directory then resolves it, as before); mappings of names to paths are anchored value by value."""
    if isinstance(value, dict):
        return {k: _anchor(v, folder) for k, v in value.items()}
    if not isinstance(value, str) or not value or value in KEYWORDS or Path(value).is_absolute():
        return value
    there = folder / value
    try:
        return str(there) if there.exists() else value
    except (OSError, ValueError):  # no file name at all (`model.chat_template` may hold the Jinja text itself)
        return value


def anchor_paths(cls: type, data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of recipe mapping `data` (shaped as dataclass `cls`) with its input paths anchored at `folder`."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        value, tp = out[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out[f.name] = anchor_paths(tp, value, folder)
        elif f.metadata.get("path"):
            out[f.name] = _anchor(value, folder)
        elif f.metadata.get("recipe") and isinstance(value, dict):
            from longshort.config.recipe import Recipe  # a stage overlay is shaped as a whole recipe

            out[f.name] = anchor_paths(Recipe, value, folder)
    return out


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against type `tp`; return it (ints widen to floats). Raise ConfigError naming key."""
    origin, args = get_origin(tp), get_args(tp)

    def bad() -> ConfigError:
        return ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got {value!r}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message (a range error says more than "expected ...")
            return _coerce(value, options[0], key, where)
        for a in options:
            try:
                return _coerce(value, a, key, where)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value in args:
            return value
        raise bad()
    if dataclasses.is_dataclass(tp):
        presets = getattr(tp, "PRESETS", None)  # a section may be named by a preset (`rl.rewards: paper`)
        if isinstance(value, str) and presets:
            if value not in presets:
                raise ConfigError(f"{where}: key '{key}': unknown preset {value!r} (one of {', '.join(presets)}, or a mapping)")
            value = presets[value]
        if not isinstance(value, dict):
            raise bad()
        return build(tp, value, where, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        (item_tp,) = args[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        ktp, vtp = args or (Any, Any)
        return {_coerce(k, ktp, key, where): _coerce(v, vtp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _in_range(value, key, where)
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _in_range(float(value), key, where)
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):  # YAML 1.1 reads `1e-4` as a string
            return _in_range(float(value), key, where)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise bad()


def _in_range(value: int | float, key: str, where: str) -> int | float:
    """The checks every number of a recipe gets (module docstring); sections add their own tighter ranges."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: key '{key}': expected a finite number, got {value}")
    if value < 0:
        raise ConfigError(f"{where}: key '{key}' must be >= 0, got {value}")
    if value > MAX_INT:
        raise ConfigError(f"{where}: key '{key}' must be <= {MAX_INT}, got {value}")
    return value


def build(cls: type[T], data: dict[str, Any], where: str, prefix: str = "") -> T:
    """Build dataclass `cls` from a plain dict, validating every key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in fields:
            renamed = getattr(cls, "RENAMED", {})  # old spellings a section still recognises (`rl.lora_r` -> `rl.lora.r`)
            if k in renamed:
                raise ConfigError(f"{where}: key '{prefix}{k}' was renamed: use '{prefix}{renamed[k]}'")
            close = [f for f in fields if f.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{prefix}{k}'{hint}")
        default = fields[k].default_factory
        if isinstance(v, dict) and dataclasses.is_dataclass(hints[k]) and default is not MISSING:
            v = deep_merge(to_dict(default()), v)  # a partial section keeps the field's own defaults (roles.long.stop)
        elif isinstance(v, dict) and typing.get_origin(hints[k]) is dict and default is not MISSING:
            v = deep_merge(default(), v)  # so does a dict with defaults (`pipeline.rl_length.rl.steps` keeps its rewards)
        kwargs[k] = _coerce(v, hints[k], prefix + k, where)
    for name, f in fields.items():
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{where}: missing required key '{prefix}{name}'")
    try:
        obj = cls(**kwargs)
    except ConfigError as e:  # __post_init__ validation
        # A type used in several places (roles.long/short, sft.lora/rl.lora) cannot know its own path: its message
        # starts with a bare field name ("r must be >= 1"), named here as the dotted key; other messages get the section.
        msg, first = str(e), str(e).split(" ", 1)[0]
        if prefix and "key '" not in msg:
            msg = f"key '{prefix}{first}'{msg[len(first):]}" if first in fields else f"section '{prefix[:-1]}': {msg}"
        raise ConfigError(f"{where}: {msg}") from None
    return obj


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in first:
                raise ConfigError(f"{self.name}:{line}: key {key!r} is given twice (lines {first[key]} and {line})")
            first.setdefault(key, line)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, _seen: tuple[Path, ...] = (), schema: type | None = None) -> dict[str, Any]:
    """Read a YAML mapping; `base: other.yaml` (relative to this file) is merged underneath. With `schema` (the
    dataclass the mapping describes), each file's input paths are anchored at that file's folder (`anchor_paths`)."""
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}" + (f" (the 'base' of {_seen[-1]})" if _seen else ""))
    real = path.resolve()
    if real in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, real))
        raise ConfigError(f"{_seen[-1]}: key 'base': recipes include each other in a cycle ({chain})")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is not content
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
    try:
        loader = _StrictLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: key 'base': expected a path string, got {base!r}")
        data = deep_merge(read_yaml(path.parent / base, (*_seen, real), schema), anchor_paths(schema, data, path.parent) if schema else data)
    elif schema is not None:
        data = anchor_paths(schema, data, path.parent)
    return data


def deep_merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for k, v in high.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/lists (`lr=1e-4`, `m=[8,4,1]`)."""
    data = deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: key '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for YAML dumps and run directories)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every field, recursing into sections."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, _type_name(tp), f.metadata.get("help", "")))
    return rows


def defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """{dotted key: default value} for every field that has one, recursing into sections (as `describe` lists them)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(defaults(hints[f.name], prefix + f.name + "."))
        elif f.default is not dataclasses.MISSING:
            out[prefix + f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[prefix + f.name] = f.default_factory()
    return out
