"""Long-CoT traces sampled from a reasoning model: rejection sampling against the gold answer.

It builds engine requests, so it sits above the engines (docs/architecture.md), beside the analysis it feeds.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from longshort.config.core import SOLVER_SYSTEM, ProtocolConfig, RolesConfig
from longshort.data.generate import Sample, Sampler
from longshort.data.traces import THINK_OPEN, Trace, reasoner_prompt_ids
from longshort.engines.base import GenRequest
from longshort.grading import grade_many
from longshort.protocols.calls import Setup, execute, seed_for, solver_call
from longshort.types import Episode


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


def teacher_sampler(engine: Any, max_model_len: int, seed: int, temperature: float, max_tokens: int,
                    system: str = SOLVER_SYSTEM) -> Sampler:
    """The sampler of `data generate` (`longshort.data.generate`): each (problem row, k) is one `long_cot` solver
    call of the served base (the long_cot protocol's prompt: `system`, the problem, the model's chat template), a
    Turn of kind `sample` seeded by (seed, problem id, k) as long_cot seeds its episodes, so a sample depends neither
    on its batch nor on a resume, and equals the long_cot episode of the same (seed, id, sample)."""
    protocol = ProtocolConfig(name="long_cot", long_cot_role="base", system_prompt=system, max_tokens=max_tokens,
                              temperature=temperature)
    setup = Setup(engine, protocol, RolesConfig(), max_model_len, seed, name="long_cot")

    def sample(pairs: Sequence[tuple[dict[str, Any], int]]) -> list[Sample]:
        calls = []
        for row, k in pairs:
            ep = Episode(problem_id=str(row["id"]), problem=row["problem"], gold=str(row["answer"]), protocol="long_cot",
                         meta={"sample": k})
            calls.append(solver_call(setup, ep, ep.problem, "sample", seed_for(seed, ep.problem_id, k, 0)))
        execute(setup, [c for c in calls if c is not None])
        out = []
        for c in calls:
            if c is None:  # the prompt alone fills the context: counted as truncated, as a cut-off output is
                out.append(Sample("", "length", 0))
                continue
            turn = c.episode.turns[c.turns[0]]
            # a thinking template (R1, Qwen3) opens `<think>` in the prompt: the trace keeps it
            opened = engine.tokenizer.decode(c.prompt_ids).rstrip().endswith("<think>")
            out.append(Sample((THINK_OPEN if opened else "") + turn.text, turn.finish_reason, turn.output_tokens))
        return out

    return sample
