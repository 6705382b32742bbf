"""Turn protocols: run a batch of problems through an engine and return graded `Episode`s.

`run_protocol(name, engine, problems, recipe)` is the one entry point (inference, evaluation, RL
rollouts). Every protocol step is ONE batched `engine.generate` call across all active episodes.
Protocols: `long_cot`, `long_short`, `sr`, `pdr` (docs/protocols.md; budgets in docs/budgets.md).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from longshort.errors import UserError
from longshort.grading import compare_many, extract_answer, gold_answer, regrade
from longshort.protocols import long_cot, long_short, pdr, sr
from longshort.protocols.calls import Setup
from longshort.types import Episode

PROTOCOLS = {"long_cot": long_cot.run, "long_short": long_short.run, "sr": sr.run, "pdr": pdr.run}


def new_episodes(name: str, problems: Sequence[Mapping[str, Any]]) -> list[Episode]:
    """One episode per problem row `{id, problem, answer[, sample, source]}`."""
    out = []
    for row in problems:
        meta = {"sample": int(row.get("sample", 0))}
        if row.get("source") is not None:
            meta["source"] = row["source"]
        out.append(Episode(problem_id=str(row["id"]), problem=row["problem"], gold=gold_answer(row.get("answer", "")), protocol=name, meta=meta))
    return out


def run_protocol(
    name: str,
    engine: Any,
    problems: Sequence[Mapping[str, Any]],
    recipe: Any,
    seed: int | None = None,
) -> list[Episode]:
    """Run protocol `name` on `problems` with `recipe`'s protocol/roles/engine settings; grade the answers.

    `seed` (default `recipe.run.seed`) plus each row's id and `sample` index seed every call, so the same
    row samples the same episode whatever batch it runs in (resumable evaluation).
    """
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    setup = Setup(
        engine=engine,
        protocol=recipe.protocol,
        roles=recipe.roles,
        max_model_len=recipe.engine.max_model_len,
        seed=recipe.run.seed if seed is None else seed,
        name=name,
    )
    episodes = new_episodes(name, problems)
    if episodes:
        PROTOCOLS[name](setup, episodes)
        golds = [ep.gold for ep in episodes]
        verdicts = compare_many([ep.answer for ep in episodes], golds)
        lenient = regrade(verdicts, [lenient_answer(ep) for ep in episodes], golds)
        for ep, v, lv in zip(episodes, verdicts, lenient):
            ep.correct = v.correct
            ep.meta["answer_lenient"], ep.meta["correct_lenient"] = lv.extracted, lv.correct
    return episodes


def lenient_answer(ep: Episode) -> str | None:
    """The answer by the lenient rule, reported next to the strict one (docs/grading.md): read from the turn the
    protocol takes its answer from, else (no final answer: malformed, truncated, out of turns) its last turn."""
    index = ep.meta.get("answer_turn", len(ep.turns) - 1)
    return extract_answer(ep.turns[index].text, ep.meta.get("source"), rule="lenient") if ep.turns else None
