"""Nominal budgets: B_seq and B_total of a protocol from its token caps alone, before anything runs.

A protocol is a sequence of steps; the calls of one step run side by side (one batched engine call) and the
next step waits for all of them. A call may generate at most its cap: its thinking budget (the cap the
engine enforces, `protocol.max_tokens` or `roles.<role>.max_tokens`; κ = `pdr_kappa` for a PDR summary) plus
an optional answer buffer. So, nominally (docs/protocols.md, "Budgets"):

    B_seq   = Σ over steps of the step's cap            (the critical path: every step at its longest call)
    B_total = Σ over steps of calls × cap               (every call at its cap)

A measured episode never exceeds these: each call generates at most its cap (less where the engine's
context has less room), and an episode runs at most these steps (fewer when it ends early).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from longshort.config.core import ProtocolConfig, RolesConfig

PROTOCOL_NAMES = ("long_cot", "long_short", "sr", "pdr")


@dataclass(frozen=True)
class Step:
    """One protocol step: `calls` calls side by side, each generating at most `cap` tokens."""

    name: str
    calls: int
    cap: int


def steps(protocol: str, p: ProtocolConfig, roles: RolesConfig, answer_buffer: int = 0) -> list[Step]:
    """The steps `protocol` runs with these settings, at most (an episode may end earlier)."""
    solve = p.max_tokens + answer_buffer  # a solver call: long_cot, SR solve/analysis/refine, PDR draft and judge
    if protocol == "long_cot":
        return [Step("answer", 1, solve)]
    if protocol == "sr":
        out = [Step("solve", 1, solve)]
        for r in range(1, p.sr_rounds + 1):
            if p.sr_error_analysis:
                out.append(Step(f"analyse {r}", 1, solve))
            out.append(Step(f"refine {r}", 1, solve))
        return out
    if protocol == "pdr":
        schedule = list(p.pdr_schedule)
        out = []
        for r, m in enumerate(schedule):
            out.append(Step(f"round {r + 1} drafts", m, solve))
            if r + 1 == len(schedule):
                break
            if p.pdr_distill == "summary":  # one summary call, capped at κ (the workspace bound)
                out.append(Step(f"summary {r + 1}", 1, p.pdr_kappa))
            elif p.pdr_distill == "shared_topk":  # one judge for the whole next round
                out.append(Step(f"judge {r + 1}", 1, solve))
            elif p.pdr_distill == "per_sample_topk":  # one judge per next-round call
                out.append(Step(f"judges {r + 1}", schedule[r + 1], solve))
            # random_k, oracle_*: no call
        return out
    if protocol == "long_short":  # max_turns turns, long first, alternating
        out = []
        for i in range(p.max_turns):
            role = "long" if i % 2 == 0 else "short"
            out.append(Step(f"turn {i + 1} ({role})", 1, getattr(roles, role).max_tokens + answer_buffer))
        return out
    raise ValueError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOL_NAMES)})")


def settings(protocol: str, p: ProtocolConfig, roles: RolesConfig, answer_buffer: int = 0) -> dict[str, Any]:
    """The settings the nominal budget of `protocol` depends on."""
    out: dict[str, Any] = {}
    if protocol == "long_short":
        out.update(max_turns=p.max_turns, long_max_tokens=roles.long.max_tokens, short_max_tokens=roles.short.max_tokens)
    else:
        out["max_tokens"] = p.max_tokens
    if protocol == "sr":
        out.update(rounds=p.sr_rounds, error_analysis=p.sr_error_analysis)
    if protocol == "pdr":
        out.update(schedule=list(p.pdr_schedule), distill=p.pdr_distill)
        if p.pdr_distill == "summary":
            out["kappa"] = p.pdr_kappa
    out["answer_buffer"] = answer_buffer
    return out


def nominal(protocol: str, p: ProtocolConfig, roles: RolesConfig, answer_buffer: int = 0) -> dict[str, Any]:
    """{"protocol", "b_seq", "b_total", "calls", "steps": [...], "settings": {...}} from the caps alone."""
    st = steps(protocol, p, roles, answer_buffer)
    return {
        "protocol": protocol,
        "b_seq": sum(s.cap for s in st),
        "b_total": sum(s.calls * s.cap for s in st),
        "calls": sum(s.calls for s in st),
        "steps": [asdict(s) for s in st],
        "settings": settings(protocol, p, roles, answer_buffer),
    }


def table(result: dict[str, Any]) -> str:
    """The nominal budget as a small text table: one row per step, then the totals."""
    head = "  ".join(f"{k} {v}" for k, v in result["settings"].items())
    rows = [f"{result['protocol']}: {head}", f"{'step':22s} {'calls':>6s} {'cap/call':>9s} {'B_seq':>9s} {'B_total':>10s}"]
    for s in result["steps"]:
        rows.append(f"{s['name']:22s} {s['calls']:6d} {s['cap']:9d} {s['cap']:9d} {s['calls'] * s['cap']:10d}")
    rows.append(f"{'total':22s} {result['calls']:6d} {'':9s} {result['b_seq']:9d} {result['b_total']:10d}")
    return "\n".join(rows)
