"""`sr`: Sequential Refinement (Madaan et al. 2510.01123), PDR with one draft per round.

Round 0 solves the problem; each of `sr_rounds` refinement rounds sees only the problem and the previous
round's solution (and, with `sr_error_analysis`, an error analysis of it written by a call just before).
Every call is a fresh context (parent -1), accepted, and a protocol step of its own, so B_seq == B_total.
The answer is the last \\boxed{} of the final round's solution.
"""

from __future__ import annotations

from typing import Callable

from longshort.grading import extract_answer
from longshort.protocols import prompts
from longshort.protocols.calls import Call, Setup, execute, prompt_limit, seed_for, solution_ok, solver_call
from longshort.types import Episode, Turn


def _refine_prompt(setup: Setup, problem: str, solution: str, analysis: str | None) -> str:
    def build(pieces: list[str]) -> str:
        block = prompts.ANALYSIS_BLOCK.format(analysis=pieces[1]) if analysis is not None else ""
        return prompts.REFINE.format(problem=problem, solution=pieces[0], analysis=block)

    pieces = [solution] if analysis is None else [solution, analysis]
    return prompts.fit(setup.tokenizer, build, pieces, prompt_limit(setup, setup.protocol.max_tokens))


def _analysis_prompt(setup: Setup, problem: str, solution: str) -> str:
    def build(pieces: list[str]) -> str:
        return prompts.ERROR_ANALYSIS.format(problem=problem, solution=pieces[0])

    return prompts.fit(setup.tokenizer, build, [solution], prompt_limit(setup, setup.protocol.max_tokens))


def _round(setup: Setup, live: list[Episode], make: Callable[[Episode], Call | None]) -> list[tuple[Episode, Turn]]:
    """One batched call for every live episode; episodes whose prompt leaves no room end (`context_full`)."""
    pending = []
    for ep in live:
        call = make(ep)
        if call is None:
            ep.meta["end"] = "context_full"
        else:
            pending.append(call)
    execute(setup, pending)
    return [(c.episode, c.episode.turns[c.turns[0]]) for c in pending]


def run(setup: Setup, episodes: list[Episode]) -> None:
    p = setup.protocol
    solution: dict[int, Turn] = {}  # id(episode) -> its latest solution turn

    def seed(ep: Episode, r: int, what: str) -> int:
        return seed_for(setup.seed, ep.problem_id, ep.meta.get("sample", 0), r, what)

    for ep in episodes:
        ep.meta["end"] = "final"
    done = _round(setup, episodes, lambda ep: solver_call(setup, ep, ep.problem, "draft", seed(ep, 0, "solve")))
    for ep, turn in done:
        turn.format_ok = solution_ok(turn)
        solution[id(ep)] = turn
    live = [ep for ep, _ in done]
    for r in range(1, p.sr_rounds + 1):
        analysis: dict[int, str] = {}
        if p.sr_error_analysis:
            done = _round(
                setup,
                live,
                lambda ep: solver_call(
                    setup, ep, _analysis_prompt(setup, ep.problem, solution[id(ep)].text), "judge", seed(ep, r, "analyse")
                ),
            )
            for ep, turn in done:
                turn.format_ok = turn.finish_reason != "length"
                analysis[id(ep)] = turn.text
            live = [ep for ep, _ in done]
        done = _round(
            setup,
            live,
            lambda ep: solver_call(
                setup,
                ep,
                _refine_prompt(setup, ep.problem, solution[id(ep)].text, analysis.get(id(ep))),
                "refine",
                seed(ep, r, "refine"),
            ),
        )
        for ep, turn in done:
            turn.format_ok = solution_ok(turn)
            solution[id(ep)] = turn
        live = [ep for ep, _ in done]
    for ep in episodes:
        if id(ep) in solution:
            ep.answer = extract_answer(solution[id(ep)].text, ep.meta.get("source"))
            ep.meta["answer_turn"] = ep.turns.index(solution[id(ep)])
