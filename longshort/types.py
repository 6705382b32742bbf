"""The shared vocabulary: Turn, Episode, budgets, and each role's training sequence.

Inference, evaluation, Monte-Carlo rollouts and RL all produce and consume `Episode`s.

An episode is a small tree of engine calls. Each `Turn` is one call: it names its `parent` turn (or -1),
and its `prompt_ids` are the tokens appended to the parent's full sequence (the parent's context plus the
parent's completion) before generation. A multi-turn transcript is a chain (turn k's parent is k-1, its
prompt is only the chat-template glue and nothing is stored twice); PDR drafts and SR rounds are fresh
roots (parent -1, full prompt). Training sequences are derived from this, never stored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

ROLES = ("long", "short")


@dataclass
class Turn:
    """One engine call: who generated what, from which context, at what cost."""

    role: str  # "long" | "short" | "base" — which adapter generated it
    prompt_ids: list[int]  # tokens appended to the parent's sequence before this call
    completion_ids: list[int]
    text: str  # decoded completion
    logprobs: list[float] = field(default_factory=list)  # sampling logprob of each completion token
    finish_reason: str = "stop"  # "stop" | "length" | "abort"
    parent: int = -1  # index of the turn this one continues; -1 = a fresh context
    kind: str = "turn"  # "turn" | "draft" | "distill" | "judge" | "refine" | "rollout"
    accepted: bool = True  # on the accepted path: the calls the final answer drew on (PDR: one draft per round)
    format_ok: bool = True  # the turn obeys its role's tag grammar
    input_tokens: int = 0  # context length the engine read for this call (filled by Episode.add)
    wall_s: float = 0.0  # wall time of the batched call this turn was part of
    step: int | None = None  # the episode's protocol step (batched engine call) this ran in; same step = side by side
    # the temperature it was sampled at (`calls.execute` records it): the learner's logprobs must be taken on that
    # distribution, and one RL step may mix protocols that sample at different temperatures; None = not recorded
    temperature: float | None = None

    @property
    def output_tokens(self) -> int:
        return len(self.completion_ids)


@dataclass
class TrainSequence:
    """One role's training view of (part of) an episode: own completion tokens trainable, the rest context. The
    episode derives it (`Episode.training_sequences`); RL's batching fills in the advantage and minibatch, and the
    learner trains on exactly this type."""

    role: str
    input_ids: list[int]
    mask: list[int]  # 1 = this role's completion token (loss), 0 = context
    old_logprobs: list[float] = field(default_factory=list)  # sampling logprobs aligned with input_ids (0.0 where mask == 0)
    temperatures: list[float | None] = field(default_factory=list)  # each token's `Turn.temperature` (None: unknown)
    advantage: float = 0.0
    minibatch: int = 0
    correct: bool = False  # the episode was graded correct: its trainable tokens enter the NLL term (rl.nll_coef)


@dataclass
class Episode:
    """A problem, the calls that tried to solve it, and what they earned."""

    problem_id: str
    problem: str
    gold: str
    protocol: str
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None  # final answer text (content of the last \boxed{})
    correct: bool | None = None
    rewards: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> component -> value
    advantages: dict[str, float] = field(default_factory=dict)  # role -> advantage
    meta: dict[str, Any] = field(default_factory=dict)  # group id, sample index, protocol details

    def add(self, turn: Turn) -> int:
        """Append a turn, filling its input token count from its parent chain. Returns its index."""
        if turn.parent >= len(self.turns):
            raise ValueError(f"turn parent {turn.parent} does not exist (episode has {len(self.turns)} turns)")
        turn.input_tokens = len(self.context_ids(turn.parent)) + len(turn.prompt_ids) if turn.parent >= 0 else len(turn.prompt_ids)
        self.turns.append(turn)
        return len(self.turns) - 1

    def context_ids(self, index: int) -> list[int]:
        """Full token sequence up to and including turn `index`'s completion."""
        chain = self.chain(index)
        ids: list[int] = []
        for i in chain:
            ids += self.turns[i].prompt_ids + self.turns[i].completion_ids
        return ids

    def chain(self, index: int) -> list[int]:
        """Turn indices from the root to `index`."""
        out = []
        while index >= 0:
            out.append(index)
            index = self.turns[index].parent
        return out[::-1]

    def leaves(self) -> list[int]:
        parents = {t.parent for t in self.turns}
        return [i for i in range(len(self.turns)) if i not in parents]

    def training_sequences(self, role: str) -> list[TrainSequence]:
        """Each leaf chain that contains `role`'s completions, with that role's tokens masked in."""
        seqs = []
        for leaf in self.leaves():
            chain = self.chain(leaf)
            if not any(self.turns[i].role == role for i in chain):
                continue
            ids: list[int] = []
            mask: list[int] = []
            lps: list[float] = []
            temps: list[float | None] = []
            for i in chain:
                t = self.turns[i]
                own = t.role == role
                ids += t.prompt_ids + t.completion_ids
                mask += [0] * len(t.prompt_ids) + [int(own)] * len(t.completion_ids)
                tl = t.logprobs if len(t.logprobs) == len(t.completion_ids) else [0.0] * len(t.completion_ids)
                lps += [0.0] * len(t.prompt_ids) + (list(tl) if own else [0.0] * len(t.completion_ids))
                temps += [None] * len(t.prompt_ids) + [t.temperature] * len(t.completion_ids)
            seqs.append(TrainSequence(role=role, input_ids=ids, mask=mask, old_logprobs=lps, temperatures=temps))
        return seqs

    # -- budgets (docs/budgets.md) --------------------------------------------------------------
    def critical_path(self) -> list[int]:
        """The longest chain of calls that ran one after another: per protocol step, its longest call.

        Calls of one step (`Turn.step`, set by `protocols.calls.execute`) ran side by side in one batched engine
        call, and the next step waited for all of them, so the step lasted as long as its longest generation
        (whichever draft that is, on the accepted path or not). A turn without a step (episodes written before
        steps were recorded, turns built by hand) is a step of its own if it is accepted, else not counted.
        """
        best: dict[object, int] = {}
        for i, t in enumerate(self.turns):
            if t.step is None and not t.accepted:
                continue
            key: object = t.step if t.step is not None else ("turn", i)
            if key not in best or t.output_tokens > self.turns[best[key]].output_tokens:
                best[key] = i
        return sorted(best.values())

    @property
    def b_seq(self) -> int:
        """Tokens generated along the critical path: Σ over protocol steps of the step's longest generation."""
        return sum(self.turns[i].output_tokens for i in self.critical_path())

    @property
    def b_total(self) -> int:
        """Tokens generated over every call: discarded drafts and distill/judge/summary calls included."""
        return sum(t.output_tokens for t in self.turns)

    @property
    def tokens_read(self) -> int:
        """Context tokens the engine read over every call (prompts re-read in full, no prefix-cache credit)."""
        return sum(t.input_tokens for t in self.turns)

    @property
    def generated_tokens(self) -> int:
        """Tokens generated over all calls and roles ("tokens per problem")."""
        return sum(t.output_tokens for t in self.turns)

    def tokens_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.turns:
            out[t.role] = out.get(t.role, 0) + t.output_tokens
        return out

    @property
    def latency_s(self) -> float:
        """Wall time along the critical path (the calls of one step share their batched call's wall time)."""
        return sum(self.turns[i].wall_s for i in self.critical_path())

    @property
    def rethinks(self) -> int:
        return sum(1 for t in self.turns if t.role == "short" and "</rethink>" in t.text)

    @property
    def format_failures(self) -> int:
        return sum(1 for t in self.turns if not t.format_ok)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Episode":
        d = dict(d)
        d["turns"] = [Turn(**t) for t in d.get("turns", [])]
        return cls(**d)


def write_episodes(path: str, episodes: Iterable[Episode]) -> None:
    """Write episodes as JSONL atomically."""
    from longshort.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in episodes))


def read_episodes(path: str) -> Iterator[Episode]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Episode.from_dict(json.loads(line))
