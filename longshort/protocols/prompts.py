"""User-message templates of the single-model protocols (SR, PDR) and token-bounded text fitting.

The solver's system prompt is `protocol.system_prompt`; the problem (plus any earlier solutions or the
PDR workspace) is the user message. Long⊗Short turns use the roles' own system prompts instead.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from longshort.chat import encode
from longshort.grading import extract_boxed
from longshort.tags import THINK_CLOSE, THINK_OPEN

ELLIPSIS = "[…] "  # marks a piece whose head was cut to fit a token bound
CONCLUSION_SENTENCES = 3  # what a draft without a `</think>` shows: its last sentences (and its boxed answer)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")

REFINE = (
    "{problem}\n\n"
    "Here is a previous solution attempt:\n\n{solution}\n\n"
    "{analysis}"
    "Check it carefully, fix any mistakes, and write an improved, complete solution. "
    "Give the final answer in \\boxed{{}}."
)
ANALYSIS_BLOCK = "An error analysis of that attempt:\n\n{analysis}\n\n"
ERROR_ANALYSIS = (
    "{problem}\n\n"
    "Here is a solution attempt:\n\n{solution}\n\n"
    "Do not solve the problem again. Go through the attempt step by step and list its errors, "
    "or say that it is correct."
)
PDR_DRAFT = (
    "{problem}\n\n"
    "Notes distilled from earlier attempts (they may contain mistakes):\n\n{workspace}\n\n"
    "Using these notes, write a complete, improved solution. Give the final answer in \\boxed{{}}."
)
SUMMARY = (
    "{problem}\n\n"
    "Below are {n} candidate solutions.\n\n{drafts}\n\n"
    "Write a short summary for a solver who will try again: the answers the candidates reach, the steps "
    "they agree on, where they contradict each other, and any errors. Do not write a new solution."
)
JUDGE = (
    "{problem}\n\n"
    "Below are {n} candidate solutions.\n\n{drafts}\n\n"
    "Judge which candidates are most likely correct. Reply with the numbers of the {k} best candidates, "
    "best first, as \\boxed{{i, j, ...}}."
)


def numbered(drafts: list[str], title: str = "Candidate") -> str:
    """`### Candidate 1\\n...` blocks, in the given order."""
    return "\n\n".join(f"### {title} {i}\n{d}" for i, d in enumerate(drafts, 1))


def visible_part(text: str) -> str:
    """What a draft shows a later reader: the text after its last `</think>`; or, when there is none (or nothing
    follows it), the conclusion of what it wrote, its last `CONCLUSION_SENTENCES` sentences, with its last
    `\\boxed{}` appended when that lies earlier. A reasoning model's thinking would otherwise fill the workspace
    bound before its answer is reached."""
    head, sep, tail = text.rpartition(THINK_CLOSE)
    if sep and tail.strip():
        return tail.strip()
    body = (head if sep else text).strip()
    if body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN) :].strip()
    sentences = [s.strip() for s in _SENTENCE_END.split(body) if s.strip()]
    conclusion = " ".join(sentences[-CONCLUSION_SENTENCES:])
    boxed = extract_boxed(body)
    if boxed is not None and extract_boxed(conclusion) != boxed:
        conclusion += f" \\boxed{{{boxed}}}"
    return conclusion


def keep_tail(tokenizer: Any, text: str, n: int) -> str:
    """The last `n` tokens of `text` (conclusions and the boxed answer live at the end of a solution)."""
    ids = encode(tokenizer, text)
    if len(ids) <= n:
        return text
    return ELLIPSIS + tokenizer.decode(ids[len(ids) - n :] if n > 0 else [])


def fit(tokenizer: Any, build: Callable[[list[str]], str], pieces: list[str], limit: int) -> str:
    """`build(pieces)`, with each piece cut to its tail so the result is at most `limit` tokens.

    The room left by the fixed text is shared equally; re-encoding after a cut can shift a few tokens,
    so the share shrinks until the render fits. Returns the fixed text alone if even that is too long.
    """
    text = build(pieces)
    if len(encode(tokenizer, text)) <= limit or not pieces:
        return text
    fixed = len(encode(tokenizer, build([""] * len(pieces))))
    share = max(0, (limit - fixed) // len(pieces) - len(encode(tokenizer, ELLIPSIS)))
    while True:
        text = build([keep_tail(tokenizer, p, share) for p in pieces])
        if len(encode(tokenizer, text)) <= limit or share == 0:
            return text
        share = int(share * 0.9)
