"""The settings that shape a stage's resumable state, recorded with it and checked before it is resumed.

A stage names the recipe sections (or sub-keys) it reads; every leaf under them is recorded, so a key added to a
section later is checked without anyone listing it. `free` names the keys that may change between a run and its
resume because they do not change what was computed: how long to go on, how often to save, where to run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longshort.config.loader import to_dict
from longshort.errors import ConfigError
from longshort.io import to_json, write_json

UNSET = object()  # a key one side lacks (added or removed since)


def _leaves(tree: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            _leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = tree


def settings(recipe: Any, keys: Iterable[str], free: Iterable[str] = ()) -> dict[str, Any]:
    """{dotted key: value} of every leaf under `keys` in the resolved `recipe`, except those under `free`."""
    whole = to_dict(recipe)
    out: dict[str, Any] = {}
    for key in keys:
        node = whole
        for part in key.split("."):
            node = node[part]
        _leaves(node, key, out)
    free = tuple(free)
    return {k: v for k, v in out.items() if not any(k == f or k.startswith(f + ".") for f in free)}


def _show(value: Any) -> str:
    text = "(unset)" if value is UNSET else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(recorded: dict[str, Any] | None, current: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming the first key whose value differs between `recorded` (what `where`, e.g.
    "checkpoint PATH", was written with) and `current`."""
    if not isinstance(recorded, dict):
        raise ConfigError(f"{where} does not record the settings it was written with (an older longshort); "
                          "run.resume=never starts over")
    current = json.loads(to_json(current))  # compare as recorded: tuples as lists, NaN as null
    # Keys both sides have first: a changed value (sft.role) is named before the keys it brings or drops with it.
    for key in sorted(set(recorded) & set(current)) + sorted(set(recorded) ^ set(current)):
        old, new = recorded.get(key, UNSET), current.get(key, UNSET)
        if old != new:
            raise ConfigError(f"key '{key}' is {_show(new)} but {where} was written with {_show(old)}: set it back to "
                              "resume, or run.resume=never to start over")


def claim(path: Path, current: dict[str, Any], resume: str) -> None:
    """For outputs without checkpoints (analysis, evaluation): with run.resume=auto check the settings file at `path`
    if there is one; then record `current` there before any output is written."""
    if resume == "auto" and path.is_file():
        check(recorded(path), current, str(path))
    write_json(path, current)


def recorded(path: Path) -> dict[str, Any] | None:
    """The settings recorded at `path` (None if it is unreadable: `check` then names it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
