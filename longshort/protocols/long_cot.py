"""`long_cot`: one model (a role adapter or the base) answers in one call; the answer is its last \\boxed{}."""

from __future__ import annotations

from longshort.grading import extract_answer
from longshort.protocols.calls import Setup, execute, seed_for, solution_ok, solver_call
from longshort.types import Episode


def run(setup: Setup, episodes: list[Episode]) -> None:
    calls = []
    for ep in episodes:
        call = solver_call(setup, ep, ep.problem, "turn", seed_for(setup.seed, ep.problem_id, ep.meta.get("sample", 0), 0))
        if call is None:
            ep.meta["end"] = "context_full"
        else:
            calls.append(call)
    execute(setup, calls)
    for c in calls:
        turn = c.episode.turns[c.turns[0]]
        turn.format_ok = solution_ok(turn)
        c.episode.answer = extract_answer(turn.text, c.episode.meta.get("source"))
        c.episode.meta["answer_turn"] = c.turns[0]
        c.episode.meta["end"] = "length" if turn.finish_reason == "length" else "final"
