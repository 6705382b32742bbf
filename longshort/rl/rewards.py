"""Per-role rewards of shared episodes: correctness, format, length (Kimi k1.5) and synergy (docs/rl.md).

Every component is stored unweighted in `episode.rewards[role][name]`, and the weighted sum in
`episode.rewards[role]["total"]`, so each one can be logged and audited.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from longshort.config.rl import RewardConfig
from longshort.types import ROLES, Episode

COMPONENTS = ("correct", "format", "length", "synergy")


def group_key(ep: Episode) -> str:
    """Episodes of the same problem sampled in the same step form a group."""
    return str(ep.meta.get("group", ep.problem_id))


def is_correct(ep: Episode) -> bool:
    """The protocol's verdict if it graded the episode, else the grader's on `ep.answer`."""
    if ep.correct is not None:
        return bool(ep.correct)
    from longshort.grading import is_equivalent

    return ep.answer is not None and bool(is_equivalent(ep.answer, ep.gold))


def roles_in(ep: Episode) -> list[str]:
    """Trainable roles that generated at least one turn of the episode."""
    return [r for r in ROLES if any(t.role == r for t in ep.turns)]


def format_reward(ep: Episode, role: str) -> float:
    """−(share of the role's turns that break its tag grammar), in [−1, 0]."""
    turns = [t for t in ep.turns if t.role == role]
    return -sum(1 for t in turns if not t.format_ok) / len(turns) if turns else 0.0


def length_rewards(lengths: list[int], correct: list[bool]) -> list[float]:
    """Kimi k1.5 length reward within a group: λ_i = 0.5 − (n_i − n_min)/(n_max − n_min); wrong answers get min(0, λ)."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, c in zip(lengths, correct):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if c else min(0.0, lam))
    return out


def synergy_long(ep: Episode, correct: bool, short_max_tokens: int) -> float:
    """Credit the thought that lets short finish: c · (1 − t_final / T_short) / (1 + R).

    t_final = tokens of short's final (answering) turn, T_short = short's token cap, R = number of
    `</rethink>` hand-backs in the episode. Zero unless the episode is correct and ends with a short turn.
    """
    if not correct or not ep.turns or ep.turns[-1].role != "short":
        return 0.0
    cheap = max(0.0, 1.0 - ep.turns[-1].output_tokens / max(1, short_max_tokens))
    return cheap / (1 + ep.rethinks)


def needless_rethinks(ep: Episode) -> int:
    """`</rethink>` turns of short that already held an answer equal to the gold one."""
    from longshort.grading import extract_answer, is_equivalent

    n = 0
    for t in ep.turns:
        if t.role == "short" and "</rethink>" in t.text:
            found = extract_answer(t.text, rule="lenient")  # a hand-back states its interim answer without a box
            if found is not None and is_equivalent(found, ep.gold):
                n += 1
    return n


def synergy_short(ep: Episode, correct: bool) -> float:
    """c / (1 + N), N = needless rethinks: short is credited for finishing correctly without handing back a right answer."""
    if not correct:
        return 0.0
    return 1.0 / (1 + needless_rethinks(ep))


def assign_rewards(episodes: Iterable[Episode], weights: RewardConfig, short_max_tokens: int) -> None:
    """Fill `ep.rewards[role]` (components + `total`) for every trainable role of every episode."""
    episodes = list(episodes)
    groups: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        groups[group_key(ep)].append(ep)
    for group in groups.values():
        verdicts = [is_correct(ep) for ep in group]
        for ep, c in zip(group, verdicts):
            ep.correct = c
            ep.rewards = {}
        for role in ROLES:
            members = [(ep, c) for ep, c in zip(group, verdicts) if role in roles_in(ep)]
            if not members:
                continue
            lengths = length_rewards([ep.tokens_by_role().get(role, 0) for ep, _ in members], [c for _, c in members])
            for (ep, c), length in zip(members, lengths):
                if role == "long":
                    syn = synergy_long(ep, c, short_max_tokens)
                else:
                    syn = synergy_short(ep, c) if any(t.role == "long" for t in ep.turns) else 0.0
                comp = {"correct": float(c), "format": format_reward(ep, role), "length": length, "synergy": syn}
                comp["total"] = sum(getattr(weights, k) * comp[k] for k in COMPONENTS)
                ep.rewards[role] = comp
