"""Each role's view of a shared transcript, rendered with the model's chat template.

A role sees: its own system prompt, the problem as the user's message, its own turns as `assistant`
messages and its partner's turns as `user` messages. Protocols (token ids for the engine) and SFT
(token ids + loss masks) both render through here, so what is trained is what is generated.

The one mask rule of SFT and RL (docs/sft.md, "What a role is trained on"): a role is trained on exactly the
tokens it generates — each of its turns' text, closing tag included, and the template's end-of-turn token only
when the role ends the turn by emitting it, not when one of its stop strings ends the turn (the engine stops
there, and the end-of-turn token is the next prompt's chat glue, context in both). RL trains the engine's
`completion_ids` (`Episode.training_sequences`); SFT builds the chain of turns the `long_short` protocol would
record had the engine generated the transcript's texts (`role_turns`, which chains turns with the protocol's own
`continuation`) and takes the same `training_sequences` of it.
"""

from __future__ import annotations

from typing import Any, Sequence

from longshort.types import Episode, Turn

Message = dict[str, str]


def view_messages(system: str, problem: str, turns: Sequence[tuple[str, str]], viewer: str) -> list[Message]:
    """Chat messages of `viewer`'s view: `turns` are (role, text) in transcript order."""
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": problem})
    for role, text in turns:
        msgs.append({"role": "assistant" if role == viewer else "user", "content": text})
    return msgs


def render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_text(tokenizer: Any, system: str, problem: str, turns: Sequence[tuple[str, str]], viewer: str) -> str:
    """The full prompt string for `viewer`'s next turn (ends with the assistant header)."""
    return render(tokenizer, view_messages(system, problem, turns, viewer), add_generation_prompt=True)


def continuation(tokenizer: Any, previous_prompt: str, previous_completion: Sequence[int], prompt: str) -> list[int] | None:
    """The tokens that extend a role's previous full sequence to its next `prompt` (the `prompt_ids` of a turn that
    continues the previous one), or None when `prompt` does not extend it (a template that rewrites earlier turns).

    The previous sequence is the previous prompt string + the previous completion decoded WITH its special tokens:
    an end-of-turn token the role generated is part of it, one it did not (its stop string ended the turn) is glue.
    """
    done = previous_prompt + tokenizer.decode(list(previous_completion), skip_special_tokens=False)
    return encode(tokenizer, prompt[len(done):]) if prompt.startswith(done) else None


def generated_ids(tokenizer: Any, text: str, after: str, stop: Sequence[str]) -> list[int]:
    """The tokens a role generates for a turn of text `text` when it is served with stop strings `stop`, as the
    engines return them: the text's tokens, then the end-of-turn token (the first token of `after`, what the
    template renders after the message: `<|im_end|>` of `<|im_end|>\\n`) unless a stop string ends the text.
    The rest of `after` is glue the role never generates (the engine stops on the end-of-turn token)."""
    ids = encode(tokenizer, text)
    if not any(s and text.endswith(s) for s in stop):
        ids += encode(tokenizer, after)[:1]
    return ids


def role_turns(
    tokenizer: Any, system: str, problem: str, turns: Sequence[tuple[str, str]], viewer: str, stop: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of each of `viewer`'s turns, as the `long_short` protocol records them when the
    engine generates exactly these texts with stop strings `stop`: the first turn's prompt in full, each later one
    only the tokens that extend the previous turn's full sequence (`continuation`), completions by `generated_ids`.

    Raises ValueError for a chat template that does not render the conversation incrementally (the protocol would
    start each turn afresh; SFT wants the one chain).
    """
    out: list[tuple[list[int], list[int]]] = []
    previous: tuple[str, list[int]] | None = None
    for k, (role, text) in enumerate(turns):
        if role != viewer:
            continue
        prompt = prompt_text(tokenizer, system, problem, turns[:k], viewer)
        full = render(tokenizer, view_messages(system, problem, turns[: k + 1], viewer), add_generation_prompt=False)
        if not full.startswith(prompt + text):
            raise ValueError("chat template does not render the conversation incrementally")
        completion = generated_ids(tokenizer, text, full[len(prompt) + len(text):], stop)
        prompt_ids = encode(tokenizer, prompt) if previous is None else continuation(tokenizer, *previous, prompt)
        if prompt_ids is None:
            raise ValueError("chat template does not render the conversation incrementally")
        out.append((prompt_ids, completion))
        previous = (prompt, completion)
    return out


def tokenize_view(
    tokenizer: Any, system: str, problem: str, turns: Sequence[tuple[str, str]], viewer: str, *, stop: Sequence[str]
) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of `viewer`'s view up to its last turn, mask 1 on exactly the tokens it generates
    (`generated_ids`; `stop` = the role's stop strings, `roles.<viewer>.stop`): the `Episode.training_sequences`
    RL takes of the same turns. ([], []) when `viewer` has no turn."""
    episode = Episode(problem_id="", problem=problem, gold="", protocol="long_short")
    parent = -1
    for prompt_ids, completion_ids in role_turns(tokenizer, system, problem, turns, viewer, stop):
        parent = episode.add(Turn(role=viewer, prompt_ids=prompt_ids, completion_ids=completion_ids, text="", parent=parent))
    sequences = episode.training_sequences(viewer)
    return (sequences[0].input_ids, sequences[0].mask) if sequences else ([], [])
