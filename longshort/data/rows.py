"""Your data, one loader: every row file a stage reads (`data.train`, `data.test`, `analysis.traces`, `sft.data`,
eval's and `data benchmark`'s `--path`) goes through `read_rows`.

Formats, told apart by the path alone:

- a file ending `.jsonl` or `.json`: JSON Lines, read by `longshort.io.read_jsonl` (its rules: a byte-order mark,
  CRLF and blank lines are fine; a bad line is `FILE:LINE: reason`);
- a file ending `.parquet`: read in record batches with pyarrow;
- a folder written by `datasets`' `save_to_disk`: a Dataset (`state.json` / `dataset_info.json`), or a DatasetDict
  (`dataset_dict.json`), of which the caller's split is read (`train` when it names none).

Any other suffix, a folder of another kind, or a missing path is a one-line `DataError` naming it. Every row
comes out as a dict with a 1-based number, the JSONL line or the table row; `Rows.where(n)` says where it is
(`FILE:LINE`, or `FILE:row N` for Parquet and `datasets`), for the messages of the stage's own checks.

Then, in this one place, what your columns are called: a field mapping (`data.fields`: `{our name: your column}`)
copies each mapped column to our name (a row without the column is a bad row, unless it is in our own schema for
that field already: `problem`, `answer`/`gold`, `response`/`turns`, `id`, as the files longshort writes are), and a
TRL-style chat row,
`messages: [{role, content}, ...]`, gives `problem` (its one user message) and `response` (its last assistant
message), where the row has no such field already. Bad rows follow `on_error`: `raise` stops with a `DataError`
naming the row, `skip` adds it to `rejects` (`where`, `reason`) and goes on. pyarrow and datasets are imported
only when a Parquet file or a `datasets` folder is read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from longshort.errors import DataError, UserError
from longshort.io import Rejects, read_jsonl

OnError = Literal["raise", "skip"]
FIELDS = ("id", "problem", "answer", "response", "messages")  # the names a field mapping may map to
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
DEFAULT_SPLIT = "train"
_BATCH = 1024
_IGNORED_ROLES = ("system", "developer")  # instructions, not the problem: the stage's own system prompt is used
# A row already in our own schema for a field (as the files longshort writes are: traces, problems, transcripts)
# keeps it when the mapped column is missing, so a recipe's mapping does not break the stages that read them.
_OURS = {"id": ("id",), "problem": ("problem",), "answer": ("answer", "gold"), "response": ("response", "turns"),
         "messages": ("problem",)}


def field_map(fields: Any) -> dict[str, str]:
    """{our name: your column} from None, a `FieldsConfig` (its set fields) or a mapping."""
    if fields is None:
        return {}
    if dataclasses.is_dataclass(fields) and not isinstance(fields, type):
        fields = dataclasses.asdict(fields)
    if not isinstance(fields, Mapping):
        raise UserError(f"a field mapping is {{name: column}}, got {type(fields).__name__}")
    out = {}
    for name, column in fields.items():
        if column is None:
            continue
        if name not in FIELDS:
            raise UserError(f"field mapping: unknown field {name!r} (map one of {', '.join(FIELDS)})")
        if not isinstance(column, str) or not column.strip():
            raise UserError(f"field mapping: {name!r} must name a column, got {column!r}")
        out[name] = column
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _import(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"reading {what} needs the `{module.split('.')[0]}` package (pip install {module.split('.')[0]})") from None


def _text(content: Any) -> str | None:
    """A message's content: a string, or a list of text parts ({type: text, text}) joined; None if neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    return None


def chat_fields(messages: Any, key: str = "messages") -> dict[str, str]:
    """`problem` (the one user message) and, if there is one, `response` (the last assistant message) of a TRL-style
    chat; system/developer messages are left out. Raises ValueError with the reason."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field {key!r} must be a non-empty list of {{role, content}} messages")
    users: list[str] = []
    assistants: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"{key}[{i}] must be a {{role, content}} message")
        text = _text(m.get("content"))
        if text is None:
            raise ValueError(f"{key}[{i}].content must be a string (or a list of text parts)")
        if m["role"] == "user":
            users.append(text)
        elif m["role"] == "assistant":
            assistants.append(text)
        elif m["role"] not in _IGNORED_ROLES:
            raise ValueError(f"{key}[{i}].role {m['role']!r}: expected user, assistant or system")
    if len(users) != 1:
        raise ValueError(f"field {key!r} has {len(users)} user messages; a row holds one problem (one user message)")
    return {"problem": users[0], **({"response": assistants[-1]} if assistants else {})}


def apply_fields(row: dict[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """`row` with the mapped columns under our names and a chat row's problem/response filled in (a new dict when
    anything changes). Raises ValueError for a mapped column the row lacks (unless it has the field in our own
    schema), or a malformed chat."""
    out = row
    for name, column in fields.items():
        if name == "messages":
            continue
        if column not in row:
            if any(k in row for k in _OURS[name]):
                continue
            raise ValueError(f"missing field {column!r} (data.fields.{name})")
        if out is row:
            out = dict(row)
        out[name] = row[column]
    key = fields.get("messages", "messages")
    if key not in row or row[key] is None:
        if "messages" in fields and not any(k in row for k in _OURS["messages"]):
            raise ValueError(f"missing field {key!r} (data.fields.messages)")
        return out
    if out.get("problem") is not None and out.get("response") is not None:
        return out  # the row's own fields win; its chat is not needed
    chat = chat_fields(row[key], key)
    missing = {k: v for k, v in chat.items() if out.get(k) is None}
    return {**out, **missing} if missing else out


class Rows:
    """The rows of one file or `datasets` folder (module docstring): iterate for (number, row); the format is
    settled, and a missing path or an unknown suffix raised, when it is made, before any row is read."""

    def __init__(
        self,
        path: str | Path,
        *,
        fields: Any = None,
        split: str | None = None,
        on_error: OnError = "raise",
        rejects: Rejects | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise UserError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = Path(path)
        self.fields = field_map(fields)
        self.on_error: OnError = on_error
        self.rejects = rejects
        self.split: str | None = None
        self.kind, self.source = self._detect(split)

    def _detect(self, split: str | None) -> tuple[str, Path]:
        p = self.path
        if p.is_dir():
            if (p / "dataset_dict.json").is_file():
                try:
                    splits = json.loads((p / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
                    splits = [str(s) for s in splits]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{p}/dataset_dict.json: unreadable ({_first_line(e)})") from None
                chosen = split or DEFAULT_SPLIT
                if chosen not in splits:
                    raise DataError(f"{p}: a DatasetDict with splits {', '.join(splits) or '(none)'}, none named {chosen!r}; "
                                    "choose one (data.split, or --split)")
                self.split = chosen
                return "datasets", p / chosen
            if (p / "state.json").is_file() or (p / "dataset_info.json").is_file():
                return "datasets", p
            raise DataError(f"{p}: a directory, but not a `datasets` folder (no state.json or dataset_dict.json, "
                            "as save_to_disk writes); give a .jsonl, .json or .parquet file or such a folder")
        if not p.exists():
            raise DataError(f"{p}: file not found")
        suffix = p.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return "jsonl", p
        if suffix in PARQUET_SUFFIXES:
            return "parquet", p
        raise DataError(f"{p}: unknown format {suffix or '(no suffix)'!r}: longshort reads .jsonl/.json (JSON Lines), "
                        ".parquet, or a `datasets` folder (save_to_disk)")

    @property
    def name(self) -> str:
        """The file name without its suffix (the folder name; `folder-split` for a DatasetDict), for default ids."""
        if self.split is not None:
            return f"{self.path.name}-{self.split}"
        return self.path.name if self.kind == "datasets" else self.path.stem

    def where(self, n: int) -> str:
        """`FILE:LINE` of a JSONL row, `FILE:row N` (1-based) of a table row."""
        return f"{self.source}:{n}" if self.kind == "jsonl" else f"{self.source}:row {n}"

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        raw = {"jsonl": self._jsonl, "parquet": self._parquet, "datasets": self._datasets}[self.kind]()
        for n, row in raw:
            if self.fields or "messages" in row:
                try:
                    row = apply_fields(row, self.fields)
                except ValueError as e:
                    if self.on_error == "skip" and self.rejects is not None:
                        self.rejects.add(self.where(n), str(e))
                        continue
                    raise DataError(f"{self.where(n)}: {e}") from None
            yield n, row

    def _jsonl(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return read_jsonl(self.source, self.on_error, self.rejects)

    def _parquet(self) -> Iterator[tuple[int, dict[str, Any]]]:
        pq = _import("pyarrow.parquet", "a Parquet file")
        try:
            batches = pq.ParquetFile(self.source).iter_batches(batch_size=_BATCH)
        except Exception as e:  # noqa: BLE001 — pyarrow raises several types for a file that is not Parquet
            raise DataError(f"{self.source}: not a readable Parquet file ({_first_line(e)})") from None
        n = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 — a corrupt page further on
                raise DataError(f"{self.where(n + 1)}: unreadable Parquet data ({_first_line(e)})") from None
            for row in batch.to_pylist():
                n += 1
                yield n, row

    def _datasets(self) -> Iterator[tuple[int, dict[str, Any]]]:
        datasets = _import("datasets", "a `datasets` folder")
        try:
            ds = datasets.load_from_disk(str(self.source))
        except Exception as e:  # noqa: BLE001 — any load failure is the user's folder
            raise DataError(f"{self.source}: not a readable `datasets` folder ({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):  # state.json and dataset_dict.json both there: say which to take
            raise DataError(f"{self.source}: a DatasetDict ({', '.join(ds)}); point at one split's folder")
        n = 0
        for batch in ds.with_format(None).iter(batch_size=_BATCH):  # plain Python values, whatever format was saved
            for values in zip(*batch.values()):
                n += 1
                yield n, dict(zip(batch, values))


def read_rows(
    path: str | Path,
    *,
    fields: Any = None,
    split: str | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> Rows:
    """The rows of `path` (JSONL, Parquet or a `datasets` folder; module docstring), with `fields` ({our name: your
    column}, or a `FieldsConfig`) and chat rows applied. Iterate the result for (line or row number, row);
    `.where(n)` names a row in messages. Bad input raises `DataError` naming the file (and line or row), or with
    `on_error="skip"` (and `rejects`) is counted there and left out."""
    return Rows(path, fields=fields, split=split, on_error=on_error, rejects=rejects)
