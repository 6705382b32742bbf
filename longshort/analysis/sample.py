"""Long-CoT traces sampled from a reasoning model: rejection sampling against the gold answer.

It builds engine requests, so it sits above the engines (docs/architecture.md), beside the analysis it feeds.
"""

from __future__ import annotations

from typing import Any, Iterable

from longshort.data.traces import THINK_OPEN, Trace, reasoner_prompt_ids
from longshort.engines.base import GenRequest
from longshort.grading import grade_many


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
