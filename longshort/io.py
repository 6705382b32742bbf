"""Atomic writes and strict JSONL reading (errors name file:line; lenient mode counts rejects).

What the reader accepts as a valid file, because common tools write it: a UTF-8 byte-order mark at the start
(spreadsheets, Windows editors), CRLF line endings and blank lines. What it refuses per line: invalid UTF-8 or
JSON, a value that is not an object, a line over `MAX_LINE_BYTES`, and text no encoder can write back: a lone
UTF-16 surrogate escape (`"\\ud800"`) is valid JSON but cannot be tokenised or saved as UTF-8.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, TypeVar

from longshort.errors import DataError, UserError

MAX_LINE_BYTES = 16 * 1024 * 1024


def check_file_target(path: str | os.PathLike) -> Path:
    """`path` as a place a file can be written; commands call it before their work, writers again at the end."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail with IsADirectoryError after the whole output was computed
        raise UserError(f"{path}: is a directory; give a file path to write to")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = check_file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON: a NaN or infinite float is written as `null`, never as `NaN`/`Infinity` (which are not JSON and
    which other readers refuse)."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    lines = [to_json(r) + "\n" for r in rows]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one line and fsync (metrics logs; a torn last line is skipped by `read_jsonl`)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(to_json(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Rejects:
    """Rows skipped in lenient mode, with the reason; written next to the outputs and counted in summaries."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.rows.append({"where": where, "reason": reason})

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | os.PathLike) -> None:
        """This run's rejects to `path`, rewritten whole; with none, a file an earlier attempt left is removed."""
        if self.rows:
            write_jsonl(path, self.rows)
        else:
            Path(path).unlink(missing_ok=True)


def read_jsonl(
    path: str | os.PathLike,
    on_error: Literal["raise", "skip"] = "raise",
    rejects: Rejects | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object). Bad lines raise DataError naming file:line, or are counted in `rejects`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # the byte-order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"invalid UTF-8 at byte {e.start}") from None
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                if b"\\u" in raw.lower():  # only an escape can produce a lone surrogate; skip the check otherwise
                    try:
                        json.dumps(obj, ensure_ascii=False).encode("utf-8")
                    except UnicodeEncodeError as e:
                        raise ValueError(f"lone UTF-16 surrogate {e.object[e.start]!r} (text no encoder can write)") from None
            except ValueError as e:
                if on_error == "skip" and rejects is not None:
                    rejects.add(f"{path}:{n}", str(e))
                    continue
                raise DataError(f"{path}:{n}: {e}") from None
            yield n, obj


T = TypeVar("T")


def validated(
    records: Iterable[tuple[str, Any]],
    check: Callable[[Any], T],
    on_error: Literal["raise", "skip"] = "raise",
    rejects: Rejects | None = None,
    key: Callable[[T], Any] | None = None,
    duplicate: Callable[[Any, str], str] = lambda k, first: f"duplicate id {k!r} (first at {first})",
) -> Iterator[tuple[str, T]]:
    """The one rule for bad rows: yield (where, check(record)) for each (where, record). A ValueError from `check`,
    or a `key` (an id; None = no id) already seen (`duplicate` says so), raises DataError naming `where`, or with
    on_error="skip" is added to `rejects` and the row dropped."""
    seen: dict[Any, str] = {}
    for where, record in records:
        k = None
        try:
            row = check(record)
            k = key(row) if key else None
            if k is not None and k in seen:
                first = seen[k]
                file, _, at = first.rpartition(":")
                same_file = file == where.rpartition(":")[0]  # "line 3", or "row 3" of a table
                raise ValueError(duplicate(k, (f"line {at}" if at.isdigit() else at) if same_file else first))
        except ValueError as e:
            if on_error == "skip" and rejects is not None:
                rejects.add(where, str(e))
                continue
            raise DataError(f"{where}: {e}") from None
        if k is not None:
            seen[k] = where
        yield where, row
