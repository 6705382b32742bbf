"""Long-CoT traces in: read `{id, problem, answer, response}` rows, or sample them from a reasoning model.

A trace's `response` is usually `<think> ... </think>` followed by a summary with `\\boxed{answer}`.
Readers accept JSONL, Parquet and `datasets` folders (`Dataset.save_to_disk`); every row is validated and a
bad row raises `DataError` naming file:line (row number for Parquet/datasets), or, with `on_error="skip"`, is
recorded in `rejects` and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from longshort.chat import encode, prompt_text
from longshort.errors import DataError
from longshort.grading import malformed_answer
from longshort.io import Rejects, read_jsonl, validated

# Field names of common public trace sets, mapped to ours (OpenMath / OpenR1 style).
ALIASES = {
    "problem": ("problem", "question"),
    "answer": ("answer", "expected_answer", "gold"),
    "response": ("response", "generated_solution", "generation"),
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


def _raw_rows(path: Path, on_error: str, rejects: Rejects | None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, default id, row) from a JSONL file, a Parquet file or a `datasets` folder."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 — any load failure is the user's folder
            raise DataError(f"{path}: not a `datasets` folder ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(f"{path}: a DatasetDict; point at one split's folder ({', '.join(ds)})")
        for i, row in enumerate(ds):
            yield f"{path}:row {i}", f"{path.name}-{i}", row
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}:row {i}", f"{path.stem}-{i}", row
    else:
        for n, row in read_jsonl(path, on_error, rejects):  # type: ignore[arg-type]
            yield f"{path}:{n}", f"{path.stem}-{n}", row


def read_traces(
    path: str | Path,
    on_error: Literal["raise", "skip"] = "raise",
    rejects: Rejects | None = None,
    limit: int | None = None,
) -> list[Trace]:
    """Validated traces from JSONL / Parquet / a `datasets` folder; duplicate ids are errors too."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if on_error == "skip" and rejects is None:
        rejects = Rejects()
    out: list[Trace] = []
    records = ((where, (default_id, row)) for where, default_id, row in _raw_rows(path, on_error, rejects))
    for _, trace in validated(records, lambda r: validate_row(r[1], r[0]), on_error, rejects, key=lambda t: t.id):
        out.append(trace)
        if limit is not None and len(out) >= limit:
            break
    return out


def reasoner_prompt_ids(tokenizer: Any, system: str, problem: str, prefix: str = THINK_OPEN) -> list[int]:
    """Chat prompt of a single-turn reasoner, then the start of its response (`<think>\\n` + any prefix)."""
    return encode(tokenizer, prompt_text(tokenizer, system, problem, [], viewer="assistant") + prefix)


def sample_traces(
    engine: Any,
    problems: Iterable[dict[str, Any]],
    role: str | None,
    params: Any,
    system: str = "",
    keep: int = 1,
) -> tuple[list[Trace], dict[str, int]]:
    """Sample `params.n` responses per problem from a reasoning model; keep up to `keep` correct ones each.

    `problems` rows need `id`, `problem`, `answer`. The model continues from `<think>\\n`; the kept response
    includes it. Returns (traces, counts: problems, sampled, correct, kept).
    """
    from longshort.engines.base import GenRequest
    from longshort.grading import grade_many

    problems = list(problems)
    requests = [GenRequest(reasoner_prompt_ids(engine.tokenizer, system, p["problem"]), role, params) for p in problems]
    results = engine.generate(requests)
    flat = [(p, j, c) for p, comps in zip(problems, results) for j, c in enumerate(comps)]
    correct = grade_many([c.text for _, _, c in flat], [p["answer"] for p, _, _ in flat])
    traces: list[Trace] = []
    kept: dict[str, int] = {}
    for (p, j, c), ok in zip(flat, correct):
        if ok and kept.get(p["id"], 0) < keep:
            traces.append(Trace(id=f"{p['id']}-s{j}", problem=p["problem"], answer=str(p["answer"]), response=THINK_OPEN + c.text))
            kept[p["id"]] = kept.get(p["id"], 0) + 1
    counts = {"problems": len(problems), "sampled": len(flat), "correct": sum(correct), "kept": len(traces)}
    return traces, counts
