"""RL through an improvement operator (PDR; Madaan et al., arXiv 2510.01123, docs/rl.md "RL through an operator").

A step's problems are routed either through the operator — one PDR round of m drafts, a workspace distilled from
them, one refine call that reads the problem and the workspace — or through a standard long trace (`long_cot`),
`rl.operator_mix` of them through the operator. Of an operator episode only the refine call is trained (with the
drafts too under `rl.operator_loss_on: refine_and_drafts`); the judge/summary calls that build the workspace, and
every prompt (the workspace included), are context. Each call's kind is what `call_kind` says.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from longshort.config.recipe import Recipe
from longshort.errors import ConfigError
from longshort.types import Episode, TrainSequence

OPERATOR = "pdr"  # the protocol RL can train through; `long_cot` is the standard long-trace rollout beside it


def check(recipe: Recipe) -> None:
    """Refuse operator settings RL cannot train through (before anything is written)."""
    p, cfg = recipe.protocol, recipe.rl
    if p.name == OPERATOR and len(p.pdr_schedule) != 2:
        raise ConfigError(f"key 'protocol.pdr_schedule' is {list(p.pdr_schedule)}: RL through pdr runs one-round operator "
                          "rollouts, M = [m, 1] (m drafts, a workspace, one refine call)")
    if cfg.operator_mix < 1 and p.name != OPERATOR:
        raise ConfigError(f"key 'rl.operator_mix' is {cfg.operator_mix}: it routes problems through the pdr operator, "
                          f"but protocol.name is {p.name} (set protocol.name: pdr, or rl.operator_mix: 1)")


def route(recipe: Recipe, batch: list[dict[str, Any]], cursor: int) -> list[dict[str, Any]]:
    """Tag each problem of a step with the protocol that rolls it out. Position c of the data stream goes through
    the operator iff ⌊(c+1)·mix⌋ > ⌊c·mix⌋: the share is `rl.operator_mix` over any stretch of the stream (0.5:
    every other problem, also across steps of one problem), and a resumed run routes as the uninterrupted one."""
    name, mix = recipe.protocol.name, recipe.rl.operator_mix
    if name != OPERATOR or mix >= 1:
        return batch
    out = []
    for i, row in enumerate(batch):
        c = cursor + i
        through = math.floor((c + 1) * mix + 1e-9) > math.floor(c * mix + 1e-9)
        out.append({**row, "protocol": OPERATOR if through else "long_cot"})
    return out


def call_kind(ep: Episode, index: int) -> str:
    """What call `index` of an episode is: in a pdr episode the final round's call (the answer's, `meta.answer_turn`)
    is the `refine` call and the earlier rounds' calls `draft`s; otherwise (judge, distill, a long_cot or Long⊗Short
    turn) the turn's own `kind`."""
    turn = ep.turns[index]
    if ep.protocol == OPERATOR and turn.kind == "draft":
        final = ep.meta.get("rounds", [[]])[-1]
        return "refine" if len(ep.meta.get("rounds", [])) > 1 and index in final else "draft"
    return turn.kind


def trained_kinds(ep: Episode, loss_on: str) -> set[str] | None:
    """The call kinds of `ep` that are trained: None = every call of the role (a non-operator episode)."""
    if ep.protocol != OPERATOR:
        return None
    return {"refine", "draft"} if loss_on == "refine_and_drafts" else {"refine"}


def sequences(ep: Episode, role: str, loss_on: str) -> list[tuple[TrainSequence, str]]:
    """`role`'s training sequences of `ep` that are trained, each with the kind of the call it ends in.

    Every PDR call is a fresh context, so each is a leaf chain of its own: a sequence is one call, its prompt (the
    problem and, for the refine call, the workspace) context and its completion trainable (`Episode.training_sequences`,
    the same masks as every other protocol)."""
    leaves = [i for i in ep.leaves() if any(ep.turns[j].role == role for j in ep.chain(i))]
    seqs = ep.training_sequences(role)
    if len(leaves) != len(seqs):  # training_sequences walks the same leaves in the same order
        raise RuntimeError(f"episode {ep.problem_id}: {len(seqs)} training sequences for {len(leaves)} leaves")
    keep = trained_kinds(ep, loss_on)
    out = []
    for leaf, seq in zip(leaves, seqs):
        kind = call_kind(ep, leaf)
        if keep is None or kind in keep:
            out.append((seq, kind))
    return out


def metrics(episodes: list[Episode], roles: list[str], loss_on: str) -> dict[str, float]:
    """Per call kind: generated tokens per call (`tokens/<kind>`), share of the calls that obey their format
    (`format_ok/<kind>`), calls per episode that makes them (`calls/<kind>`) and tokens trained this step (`trained_tokens/<kind>`, 0 for a kind the loss leaves out); per rollout protocol:
    `accuracy/<protocol>`, `reward/<protocol>` (mean total reward of the roles it rewards) and `episodes/<protocol>`."""
    tokens: dict[str, list[int]] = defaultdict(list)
    ok: dict[str, list[bool]] = defaultdict(list)
    per_ep: dict[str, list[int]] = defaultdict(list)
    trained: dict[str, int] = defaultdict(int)
    for ep in episodes:
        counts: dict[str, int] = defaultdict(int)
        for i, t in enumerate(ep.turns):
            kind = call_kind(ep, i)
            tokens[kind].append(t.output_tokens)
            ok[kind].append(t.format_ok)
            counts[kind] += 1
        for kind, n in counts.items():
            per_ep[kind].append(n)
        for role in roles:
            for seq, kind in sequences(ep, role, loss_on):
                trained[kind] += sum(seq.mask)
    m: dict[str, float] = {}
    for kind, xs in tokens.items():
        m[f"tokens/{kind}"] = sum(xs) / len(xs)
        m[f"format_ok/{kind}"] = sum(ok[kind]) / len(xs)
        m[f"calls/{kind}"] = sum(per_ep[kind]) / len(per_ep[kind])
        m[f"trained_tokens/{kind}"] = float(trained.get(kind, 0))
    by_protocol: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_protocol[ep.protocol].append(ep)
    for name, eps in by_protocol.items():
        m[f"episodes/{name}"] = float(len(eps))
        m[f"accuracy/{name}"] = sum(1 for ep in eps if ep.correct) / len(eps)
        totals = [r["total"] for ep in eps for r in ep.rewards.values()]
        m[f"reward/{name}"] = sum(totals) / len(totals) if totals else None  # type: ignore[assignment]
    return m
