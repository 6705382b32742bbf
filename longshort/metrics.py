"""What a set of episodes measures, under one name with one meaning wherever it is reported: eval's summary rows,
the sweep's Pareto points and RL's per-step log (docs/budgets.md defines the budgets; docs/eval.md the rest)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from longshort.types import Episode


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def episode_metrics(eps: list[Episode]) -> dict[str, Any]:
    """Accuracy, tokens and budgets of a set of episodes (definitions in docs/budgets.md)."""
    problems: dict[str, list[Episode]] = {}
    for ep in eps:
        problems.setdefault(ep.problem_id, []).append(ep)
    samples = sorted({ep.meta.get("sample", 0) for ep in eps})
    per_sample = [_mean([float(bool(ep.correct)) for ep in eps if ep.meta.get("sample", 0) == s]) for s in samples]
    turns = [t for ep in eps for t in ep.turns]
    short_turns = sum(1 for t in turns if t.role == "short")
    roles = sorted({t.role for t in turns})
    kinds = sorted({t.kind for t in turns})
    latencies = sorted(ep.latency_s for ep in eps)

    def majority_correct(group: list[Episode]) -> bool:
        answered = [ep for ep in group if ep.answer is not None]
        if not answered:
            return False
        top, _ = Counter(ep.answer for ep in answered).most_common(1)[0]
        return any(ep.correct for ep in answered if ep.answer == top)

    return {
        "problems": len(problems),
        "samples": len(samples),
        "episodes": len(eps),
        "accuracy": _mean([float(bool(ep.correct)) for ep in eps]),
        # the lenient rule, reported only (docs/grading.md); episodes graded before it existed count by the strict one
        "accuracy_lenient": _mean([float(bool(ep.meta.get("correct_lenient", ep.correct))) for ep in eps]),
        "accuracy_std": statistics.pstdev(per_sample) if len(per_sample) > 1 else 0.0,
        "pass_at_k": _mean([float(any(ep.correct for ep in g)) for g in problems.values()]),
        "maj_at_k": _mean([float(majority_correct(g)) for g in problems.values()]),
        "answered_rate": _mean([float(ep.answer is not None) for ep in eps]),
        "tokens_per_problem": _mean([ep.generated_tokens for ep in eps]),
        "tokens_by_role": {r: _mean([ep.tokens_by_role().get(r, 0) for ep in eps]) for r in roles},
        "b_seq": _mean([ep.b_seq for ep in eps]),
        "b_total": _mean([ep.b_total for ep in eps]),
        "tokens_read": _mean([ep.tokens_read for ep in eps]),
        "turns": _mean([len(ep.turns) for ep in eps]),
        "calls_by_kind": {k: _mean([sum(t.kind == k for t in ep.turns) for ep in eps]) for k in kinds},
        "rethink_rate": (sum(ep.rethinks for ep in eps) / short_turns) if short_turns else 0.0,
        "rethinks_per_episode": _mean([ep.rethinks for ep in eps]),
        "format_failure_rate": (sum(not t.format_ok for t in turns) / len(turns)) if turns else 0.0,
        "format_failure_episodes": _mean([float(ep.format_failures > 0) for ep in eps]),
        "latency_s": _mean(latencies),
        "latency_p90_s": latencies[min(len(latencies) - 1, math.ceil(0.9 * len(latencies)) - 1)] if latencies else 0.0,
        "end": {k: v / len(eps) for k, v in sorted(Counter(ep.meta.get("end", "?") for ep in eps).items())} if eps else {},
    }
