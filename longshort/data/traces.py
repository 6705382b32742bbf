"""Long-CoT traces in: read `{id, problem, answer, response}` rows, or sample them from a reasoning model.

A trace's `response` is usually `<think> ... </think>` followed by a summary with `\\boxed{answer}`.
Traces are read by `longshort.data.rows` (JSONL, Parquet, `datasets` folders from `save_to_disk`, a field mapping,
TRL `messages` rows); every row is validated and a bad row raises `DataError` naming file:line (`file:row N` for
Parquet/datasets), or, with `on_error="skip"`, is recorded in `rejects` and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from longshort.chat import encode, prompt_text
from longshort.data.rows import read_rows
from longshort.grading import malformed_answer
from longshort.io import Rejects, validated

# Field names of common public trace sets, mapped to ours (OpenMath / OpenR1 style; `question` and `thought` are
# what the Long⊗Short release's chunker reads and the records it writes carry).
ALIASES = {
    "problem": ("problem", "question"),
    "answer": ("answer", "expected_answer", "gold"),
    "response": ("response", "generated_solution", "generation", "thought"),
}
THINK_OPEN = "<think>\n"


@dataclass
class Trace:
    id: str
    problem: str
    answer: str
    response: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _field(row: dict[str, Any], name: str) -> Any:
    for key in ALIASES[name]:
        if key in row:
            return row[key]
    return None


def validate_row(row: dict[str, Any], default_id: str) -> Trace:
    """A Trace from one raw row; raises ValueError with the reason."""
    values = {}
    for name in ("problem", "answer", "response"):
        v = _field(row, name)
        if name == "answer" and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise ValueError(f"field '{name}' missing or not a string (got {type(v).__name__})")
        if not v.strip():
            raise ValueError(f"field '{name}' is empty")
        values[name] = v
    why = malformed_answer(values["answer"])
    if why:
        raise ValueError(f"field 'answer': {why}")
    if "<think>" not in values["response"]:  # the chunker splits the reasoning between <think> and </think>
        raise ValueError("field 'response' has no <think>: a long-CoT trace opens its reasoning with <think>")
    rid = row.get("id", default_id)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
        raise ValueError(f"field 'id' must be a non-empty string or integer, got {rid!r}")
    return Trace(id=str(rid), **values)


def read_traces(
    path: str | Path,
    on_error: Literal["raise", "skip"] = "raise",
    rejects: Rejects | None = None,
    limit: int | None = None,
    fields: Any = None,
    split: str | None = None,
) -> list[Trace]:
    """Validated traces from JSONL / Parquet / a `datasets` folder (`fields`: your columns, `data.fields`; `split`:
    a DatasetDict's, default train); duplicate ids are errors too. A row without an id gets `<file stem>-<n>`."""
    if on_error == "skip" and rejects is None:
        rejects = Rejects()
    found = read_rows(path, fields=fields, split=split, on_error=on_error, rejects=rejects)
    out: list[Trace] = []
    records = ((found.where(n), (f"{found.name}-{n}", row)) for n, row in found)
    for _, trace in validated(records, lambda r: validate_row(r[1], r[0]), on_error, rejects, key=lambda t: t.id):
        out.append(trace)
        if limit is not None and len(out) >= limit:
            break
    return out


def reasoner_prompt_ids(tokenizer: Any, system: str, problem: str, prefix: str = THINK_OPEN) -> list[int]:
    """Chat prompt of a single-turn reasoner, then the start of its response (`<think>\\n` + any prefix)."""
    return encode(tokenizer, prompt_text(tokenizer, system, problem, [], viewer="assistant") + prefix)
