"""`long_short`: the long role thinks, the short role answers or hands back (Ning et al. 2505.11827).

Turn grammar: long writes `<think>…</think>` (stop string `</think>`); short replies `<answer>…</rethink>`
(control returns to long) or `<answer>…\\boxed{x}</answer>` (the episode's answer). Each role sees the
transcript through its own chat view (own turns = assistant, partner turns = user, own system prompt),
and each role's turns form one chain of the episode: a turn's parent is the role's previous turn and its
`prompt_ids` are only the tokens that extend that turn's full sequence to the new prompt.

What happens after a bad turn (docs/protocols.md):
- a long turn that is malformed or cut at its token cap is recorded with format_ok=False and still handed
  to the short role, which may ask again or answer;
- a short turn that is malformed or cut at its cap is recorded with format_ok=False and ends the
  episode unanswered (`meta.end = "malformed"`);
- `max_turns` turns without a final answer end it unanswered (`meta.end = "max_turns"`);
- a role's context that no longer fits `engine.max_model_len` ends it unanswered (`"context_full"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longshort.chat import continuation, encode, prompt_text
from longshort.engines.base import SamplingParams
from longshort.grading import extract_answer
from longshort.protocols.calls import Call, Setup, execute, room, seed_for
from longshort.tags import parse_long, parse_short
from longshort.types import Episode

PARTNER = {"long": "short", "short": "long"}


@dataclass
class _State:
    """One episode's transcript and, per role, its previous turn and the prompt string that turn read."""

    transcript: list[tuple[str, str]] = field(default_factory=list)
    last: dict[str, tuple[int, str]] = field(default_factory=dict)
    next_role: str = "long"
    done: bool = False


def _continuation(setup: Setup, ep: Episode, st: _State, role: str, prompt: str) -> tuple[int, list[int]]:
    """(parent, prompt_ids) of `role`'s next turn: the diff from its previous full sequence, or a fresh root.

    The previous sequence is the previous prompt string + the previous completion decoded WITH its
    special tokens (an eos the model emitted is part of the sequence; `chat.continuation`, which SFT chains
    its examples with too). If the new prompt string does not extend it (a chat template that rewrites
    earlier turns), the turn starts a new root with the full prompt.
    """
    tok = setup.tokenizer
    if role in st.last:
        parent, previous_prompt = st.last[role]
        ids = continuation(tok, previous_prompt, ep.turns[parent].completion_ids, prompt)
        if ids is not None:
            return parent, ids
    return -1, encode(tok, prompt)


def run(setup: Setup, episodes: list[Episode]) -> None:
    states = {id(ep): _State() for ep in episodes}
    for ep in episodes:
        ep.meta["end"] = "max_turns"
    for step in range(setup.protocol.max_turns):
        calls: list[tuple[Call, str]] = []
        for ep in episodes:
            st = states[id(ep)]
            if st.done:
                continue
            role = st.next_role
            rc = getattr(setup.roles, role)
            prompt = prompt_text(setup.tokenizer, rc.system_prompt, ep.problem, st.transcript, role)
            parent, ids = _continuation(setup, ep, st, role, prompt)
            max_tokens = room(setup, ep, parent, ids, rc.max_tokens)
            if max_tokens < 1:
                st.done, ep.meta["end"] = True, "context_full"
                continue
            params = SamplingParams(
                temperature=rc.temperature,
                top_p=rc.top_p,
                max_tokens=max_tokens,
                stop=list(rc.stop),
                seed=seed_for(setup.seed, ep.problem_id, ep.meta.get("sample", 0), step),
            )
            calls.append((Call(episode=ep, role=role, prompt_ids=ids, params=params, parent=parent), prompt))
        if not calls:
            break
        execute(setup, [c for c, _ in calls])
        for call, prompt in calls:
            ep = call.episode
            st = states[id(ep)]
            index = call.turns[0]
            turn = ep.turns[index]
            st.last[call.role] = (index, prompt)
            st.transcript.append((call.role, turn.text))
            capped = turn.finish_reason == "length"
            if call.role == "long":
                turn.format_ok = not capped and parse_long(turn.text).kind == "think"
                st.next_role = "short"
                continue
            parsed = parse_short(turn.text)
            turn.format_ok = not capped and parsed.kind in ("rethink", "final")
            if not turn.format_ok:
                st.done, ep.meta["end"] = True, "malformed"
            elif parsed.kind == "final":
                st.done, ep.meta["end"] = True, "final"
                ep.answer = extract_answer(parsed.content, ep.meta.get("source"))
                ep.meta["answer_turn"] = index
            else:
                st.next_role = "long"
