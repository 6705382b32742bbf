"""Batched engine calls that become `Turn`s: one `engine.generate` per protocol step, for every episode.

A protocol step collects one `Call` per episode (or several: PDR drafts), sends them all in ONE
`engine.generate` request list, and records each completion as a `Turn` of its episode. Each turn's
`wall_s` is the wall time of that whole batched call: the episodes ran side by side, so each waited it.
Each turn's `step` numbers that call within its episode (0, 1, …): the calls of one episode with the same
step ran side by side and the next step waited for all of them, which is what B_seq's critical path reads.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from longshort.chat import encode, prompt_text
from longshort.config.core import ProtocolConfig, RolesConfig
from longshort.engines.base import GenRequest, SamplingParams
from longshort.errors import ConfigError
from longshort.grading import extract_boxed
from longshort.types import Episode, Turn


@dataclass
class Setup:
    """What every protocol reads: the engine, its tokenizer, the protocol and role settings."""

    engine: Any
    protocol: ProtocolConfig
    roles: RolesConfig
    max_model_len: int  # prompt + completion must fit (engine.max_model_len)
    seed: int = 0
    name: str = "long_cot"  # the protocol running: which `protocol.<name>_temperature` its solver calls sample at

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def engine_role(self, role: str) -> str | None:
        """The adapter that serves `role`, as the engine reports it (`engine.adapters`): `role` when the engine
        serves an adapter for it, whatever the recipe's `roles.<role>.adapter` says; None (the base) when
        neither the engine nor the recipe has one. A recipe adapter the engine does not serve is an error,
        never a silent run on the base.
        """
        if role == "base":
            return None
        if role in self.engine.adapters:
            return role
        path = getattr(self.roles, role).adapter
        if path:
            raise ConfigError(f"key 'roles.{role}.adapter' names {path}, but the engine serves no {role!r} adapter")
        return None  # no adapter anywhere: the base model plays this role, with the role's prompts and settings


@dataclass
class Call:
    """One pending engine call of one episode; `params.n` completions become `params.n` turns."""

    episode: Episode
    role: str  # "long" | "short" | "base": recorded on the turn
    prompt_ids: list[int]  # appended to the parent's full sequence
    params: SamplingParams
    parent: int = -1
    kind: str = "turn"
    turns: list[int] = field(default_factory=list)  # filled by `execute`: the new turns' indices


def seed_for(base: int, *parts: Any) -> int:
    """A stable per-call seed: the same (run seed, problem, sample, step) samples the same thing on resume."""
    return zlib.crc32(repr((base,) + parts).encode()) & 0x7FFFFFFF


def room(setup: Setup, episode: Episode, parent: int, prompt_ids: list[int], cap: int) -> int:
    """Tokens this call may generate: its cap, bounded by what is left of the engine's context."""
    used = (len(episode.context_ids(parent)) if parent >= 0 else 0) + len(prompt_ids)
    return min(cap, setup.max_model_len - used)


def execute(setup: Setup, calls: list[Call]) -> None:
    """Run all calls in one batched `engine.generate` and append their turns (accepted, format_ok set later)."""
    if not calls:
        return
    requests = []
    for c in calls:
        context = c.episode.context_ids(c.parent) if c.parent >= 0 else []
        requests.append(GenRequest(prompt_ids=context + c.prompt_ids, role=setup.engine_role(c.role), params=c.params))
    start = time.perf_counter()
    results = setup.engine.generate(requests)
    wall = time.perf_counter() - start
    if len(results) != len(calls):
        raise RuntimeError(f"engine returned {len(results)} results for {len(calls)} requests")
    steps: dict[int, int] = {}  # id(episode) -> this call's step in it: one past its latest step
    for c in calls:
        if id(c.episode) not in steps:
            steps[id(c.episode)] = 1 + max((t.step for t in c.episode.turns if t.step is not None), default=-1)
    for c, completions in zip(calls, results):
        for comp in completions:
            turn = Turn(
                role=c.role,
                prompt_ids=list(c.prompt_ids),
                completion_ids=list(comp.token_ids),
                text=comp.text,
                logprobs=list(comp.logprobs or []),
                finish_reason=comp.finish_reason,
                parent=c.parent,
                kind=c.kind,
                wall_s=wall,
                step=steps[id(c.episode)],
                temperature=c.params.temperature,  # what the learner's logprobs must be taken at (docs/rl.md)
            )
            c.turns.append(c.episode.add(turn))


def solver_call(setup: Setup, episode: Episode, user: str, kind: str, seed: int, n: int = 1, cap: int | None = None) -> Call | None:
    """A fresh-context call of the single solver model (long_cot, SR, PDR), sampled at the running protocol's
    temperature (`ProtocolConfig.temperature_of`); None if the prompt leaves no room."""
    p = setup.protocol
    role = p.long_cot_role
    ids = encode(setup.tokenizer, prompt_text(setup.tokenizer, p.system_prompt, user, [], role))
    max_tokens = room(setup, episode, -1, ids, cap or p.max_tokens)
    if max_tokens < 1:
        return None
    top_p = getattr(setup.roles, role).top_p if role in ("long", "short") else 1.0
    params = SamplingParams(temperature=p.temperature_of(setup.name), top_p=top_p, max_tokens=max_tokens, n=n, seed=seed)
    return Call(episode=episode, role=role, prompt_ids=ids, params=params, kind=kind)


def prompt_limit(setup: Setup, cap: int) -> int:
    """Most prompt tokens a call capped at `cap` output tokens can take."""
    return setup.max_model_len - cap


def solution_ok(turn: Turn) -> bool:
    """A solution call obeys its format when it finished on its own and boxed an answer."""
    return turn.finish_reason != "length" and extract_boxed(turn.text) is not None


def tool_setup(engine: Any, max_model_len: int, seed: int) -> Setup:
    """The `Setup` of calls that serve no role and no protocol (the analysis chunker, the cold-start rewriter):
    `base_call`s read neither the protocol nor the role settings, so both are the defaults."""
    return Setup(engine, ProtocolConfig(), RolesConfig(), max_model_len, seed)


def base_call(setup: Setup, episode: Episode, user: str, kind: str, temperature: float, cap: int, seed: int) -> Call | None:
    """A fresh-context call of the served base model on one user message without a system prompt (a tool that reads
    a trace: the chunker, the rewriter), capped by `room` like every protocol call; None if the prompt leaves no room."""
    ids = encode(setup.tokenizer, prompt_text(setup.tokenizer, "", user, [], "assistant"))
    max_tokens = room(setup, episode, -1, ids, cap)
    if max_tokens < 1:
        return None
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
    return Call(episode=episode, role="base", prompt_ids=ids, params=params, kind=kind)
