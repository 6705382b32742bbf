"""Long-CoT traces sampled from a teacher model (`longshort data generate`): K samples per problem, the correct ones
kept, resumable after a kill with nothing sampled twice.

This module owns the files and the bookkeeping, not the engine: the caller hands in a `sampler` that turns
(problem, sample index) pairs into responses (`longshort.analysis.sample.teacher_sampler`, which goes through the
protocols' call layer; `data/` sits below the engines, docs/architecture.md). For `out = F`:

- `F.progress.jsonl`: a settings line, then one record per sample done (kept or not), appended a chunk of
  problems at a time in one write, flushed and fsynced. A rerun checks the settings and skips the pairs it holds;
  a torn last line (a kill mid-write) is cut off first, so those pairs are simply sampled again.
- `F`: the kept traces, written atomically from the progress records once every pair is done.
- `F.stats.json`: the counts (`kept + wrong + truncated + format_failed` = problems x K).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from longshort.errors import DataError, UserError
from longshort.grading import extract_boxed, grade_many
from longshort.io import atomic_write_text, check_file_target, read_jsonl, to_json, write_json, write_jsonl
from longshort.tags import THINK_CLOSE, THINK_OPEN

OUTCOMES = ("kept", "wrong", "truncated", "format_failed")


@dataclass
class Sample:
    """One sampled response, as the trace keeps it (with the `<think>` a chat template opened put back in front)."""

    text: str
    finish_reason: str  # "stop" | "length"
    tokens: int


Sampler = Callable[[Sequence[tuple[dict[str, Any], int]]], list[Sample]]


def outcome(sample: Sample, correct: bool) -> str:
    """What became of one sample. A truncated output is never kept, even with a box: it is not a whole trace."""
    if sample.finish_reason == "length":
        return "truncated"
    if extract_boxed(sample.text) is None or (THINK_OPEN in sample.text and THINK_CLOSE not in sample.text):
        return "format_failed"
    return "kept" if correct else "wrong"


def trace_response(text: str) -> str:
    """The trace's response: a thinking model's as it is; a model that does not think has its whole answer wrapped as
    the thought, as `data traces` does (`<think>\\n..\\n</think>\\n\\boxed{}`), since `analyze` splits the reasoning
    between `<think>` and `</think>`."""
    if THINK_OPEN in text:
        return text
    return f"{THINK_OPEN}\n{text.strip()}\n{THINK_CLOSE}\n\\boxed{{{extract_boxed(text)}}}"


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.jsonl")


def stats_path(out: Path) -> Path:
    return out.with_name(out.name + ".stats.json")


def _check_record(rec: dict[str, Any]) -> tuple[str, int]:
    if not isinstance(rec.get("id"), str) or isinstance(rec.get("sample"), bool) or not isinstance(rec.get("sample"), int):
        raise ValueError("a progress record needs a string 'id' and an integer 'sample'")
    if rec.get("outcome") not in OUTCOMES or not isinstance(rec.get("text"), str):
        raise ValueError(f"a progress record needs 'outcome' (one of {', '.join(OUTCOMES)}) and a string 'text'")
    return rec["id"], rec["sample"]


def read_progress(path: Path, settings: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The samples a previous run finished, {(problem id, sample index): record}; refuses other settings."""
    if not path.is_file():
        return {}
    with open(path, "r+b") as f:
        data = f.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # the kill came mid-append: drop the torn line before more is appended after it
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    records = read_jsonl(path)
    first = next(records, None)
    if first is None:
        return {}
    n, head = first
    if not isinstance(head.get("settings"), dict):
        raise DataError(f"{path}:{n}: expected the settings line first (not a progress file of `data generate`?)")
    for key in sorted(set(settings) | set(head["settings"])):
        old, new = head["settings"].get(key), settings.get(key)
        if old != new:
            raise UserError(f"{path}: made with {key}={old!r}, this run has {key}={new!r}; rerun with the same "
                            f"setting, or pass --no-resume to start over (its samples are discarded)")
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for n, rec in records:
        try:
            done[_check_record(rec)] = rec
        except ValueError as e:
            raise DataError(f"{path}:{n}: {e}") from None
    return done


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    """One chunk's records in one write, flushed and fsynced: after a kill the file holds whole chunks, and at most
    one torn line (`read_progress` cuts it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(to_json(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def generate(
    problems: Sequence[dict[str, Any]],
    samples: int,
    sampler: Sampler,
    out: str | os.PathLike,
    settings: dict[str, Any],
    source_model: str,
    chunk: int = 16,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample `samples` responses per problem row `{id, problem, answer}` through `sampler`, `chunk` problems per
    sampler call; write the kept traces `{id, problem, answer, response, source_model, sample}` to `out` and return
    the counts (module docstring for the files). `settings` (model, sampling) must match those of a run resumed."""
    from tqdm import tqdm

    out = check_file_target(out)
    log = progress_path(out)
    if not resume:
        log.unlink(missing_ok=True)
    done = read_progress(log, settings)
    if not log.is_file() or log.stat().st_size == 0:
        atomic_write_text(log, to_json({"settings": settings}) + "\n")
    pairs = [(p, k) for p in problems for k in range(samples)]
    todo = sum((str(p["id"]), k) not in done for p, k in pairs)
    bar = tqdm(total=len(pairs), initial=len(pairs) - todo, desc="generate", unit="sample", disable=not progress)
    for start in range(0, len(problems), chunk):
        batch = [(p, k) for p in problems[start:start + chunk] for k in range(samples) if (str(p["id"]), k) not in done]
        if not batch:
            continue
        got = sampler(batch)
        if len(got) != len(batch):
            raise RuntimeError(f"sampler returned {len(got)} samples for {len(batch)} requests")
        correct = grade_many([s.text for s in got], [p["answer"] for p, _ in batch], [p.get("source") for p, _ in batch])
        records = [{"id": str(p["id"]), "sample": k, "outcome": outcome(s, ok), "finish_reason": s.finish_reason,
                    "tokens": s.tokens, "text": s.text} for (p, k), s, ok in zip(batch, got, correct)]
        _append(log, records)
        done.update({(r["id"], r["sample"]): r for r in records})
        bar.update(len(batch))
    bar.close()

    counts = dict.fromkeys(OUTCOMES, 0)
    rows = []
    for p, k in pairs:
        rec = done[(str(p["id"]), k)]
        counts[rec["outcome"]] += 1
        if rec["outcome"] == "kept":
            rows.append({"id": f"{p['id']}-s{k}", "problem": p["problem"], "answer": p["answer"],
                         "response": trace_response(rec["text"]), "source_model": source_model, "sample": k})
    write_jsonl(out, rows)
    stats = {"problems": len(problems), "samples_per_problem": samples, "samples": len(pairs), **counts,
             "sampled_now": todo, "resumed": len(pairs) - todo, "source_model": source_model, "settings": settings}
    write_json(stats_path(out), stats)
    return stats
