"""The teacher sampler of `data generate`: long-CoT samples through the protocols' call layer (rejection sampling
against the gold answer is `longshort.data.generate`'s).

It builds engine requests, so it sits above the engines (docs/architecture.md), beside the analysis it feeds.
"""

from __future__ import annotations

from typing import Any, Sequence

from longshort.config.core import SOLVER_SYSTEM, ProtocolConfig, RolesConfig
from longshort.data.generate import Sample, Sampler
from longshort.data.traces import THINK_OPEN
from longshort.protocols.calls import Setup, execute, seed_for, solver_call
from longshort.types import Episode


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
