"""Chunk a long-CoT trace into steps (blank-line separated) and group consecutive steps into typed thoughts.

Two chunkers: the rule-based default (a discourse marker at the start of a step opens a new thought:
"Wait", "Alternatively", "Let me check", "But", "So the answer", ...) and an LLM chunker after the authors' released
one (one call per trace with the problem and the numbered steps; the model answers `{"block 1": {"start", "end",
"block type"}, ...}` with 1-based steps; the blocks must cover every step contiguously; up to 5 attempts at
temperature 0.1, then the rule-based fallback, which the release does not have).

Nothing is dropped: the thoughts' character spans tile the whole response. The `<think>` opener belongs to the
first thought; the text after `</think>` (summary, `\\boxed{}`) is the last thought's `tail`.
The record written per trace (`chunks.jsonl`) has the fields of the records the released chunker writes
(`question`, `answer`, `thought`, `block` with 1-based step indices, `block_thought`; `block_prompt` and
`block_prompt_results` for the LLM chunker), plus ours (docs/analysis.md, "Chunking").
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from longshort.data.traces import Trace

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TYPES = ("compute", "verify", "alternative", "reflect", "restate", "conclusion")
_SEP = re.compile(r"\n[ \t]*\n\s*")  # one or more blank lines
# First match wins, so the specific markers come before the general ones ("So the answer" before "So far").
MARKERS: list[tuple[str, re.Pattern[str]]] = [
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in [
        ("conclusion", r"^\W*(?:(?:so|therefore|thus|hence),?\s+the\s+(?:final\s+)?answer|(?:the\s+)?final\s+answer|the\s+answer\s+is)"),
        ("verify", r"^\W*(?:(?:wait|ok(?:ay)?|hmm),?\s+)?(?:let\s+me|let's|i\s+should|i'll|to)\s+(?:double[- ]?)?(?:check|verify|confirm|recheck)|^\W*(?:double[- ]?check|verif|check\b)"),
        ("alternative", r"^\W*(?:alternatively|another\s+(?:way|approach|method)|or,?\s+(?:we|i)\s+could)"),
        ("reflect", r"^\W*(?:wait|hmm|but|however|hold\s+on|actually|oops)\b"),
        ("restate", r"^\W*(?:the\s+problem\s+(?:asks|says|states|is)|let\s+me\s+restate|so\s+far|to\s+recap|recall)"),
        ("compute", r"^\W*(?:now|next|first|start|to\s+solve|let's\s+(?:start|begin)|let\s+me\s+(?:start|begin))\b"),
    ]
]


@dataclass
class Step:
    text: str
    start: int  # character offsets in the response
    end: int


@dataclass
class Thought:
    index: int
    start: int  # first step (inclusive)
    end: int  # last step (inclusive)
    type: str
    text: str  # the steps verbatim, separators included, without the <think> opener or the tail
    char_span: tuple[int, int]  # [a, b) of the response; the spans of all thoughts tile the response
    tail: str = ""  # text after </think> (last thought only)


@dataclass
class Chunked:
    trace: Trace
    steps: list[Step]
    thoughts: list[Thought]
    think_end: int  # offset of </think> (len(response) when absent)
    chunker: str  # "rule" | "llm" | "llm->rule" (LLM output invalid after retries)
    notes: list[str] = field(default_factory=list)
    prompt: str | None = None  # LLM chunker: the user message it was sent (the release's `block_prompt`)
    reply: str | None = None  # LLM chunker: the accepted reply, else the last one (`block_prompt_results`)

    def prefix_end(self, i: int) -> int:
        """End offset of the prefix with `i` thoughts: up to the next thought's first step (or `</think>`)."""
        if i < len(self.thoughts):
            return self.thoughts[i].char_span[0] if i else self.steps[0].start
        return self.think_end

    def to_record(self) -> dict[str, Any]:
        """The released chunker's record (`question`, `answer`, `thought`, `block`: {"block k": {start,
        end, "block type"}} with 1-based inclusive step indices, `block_thought`: {"block k": text}), plus ours."""
        t = self.trace
        names = [f"block {k + 1}" for k in range(len(self.thoughts))]
        rec: dict[str, Any] = {
            "id": t.id, "question": t.problem, "answer": t.answer, "thought": t.response,
            "block": {n: {"start": x.start + 1, "end": x.end + 1, "block type": x.type} for n, x in zip(names, self.thoughts)},
            "block_thought": {n: x.text for n, x in zip(names, self.thoughts)},
        }
        if self.prompt is not None:
            rec["block_prompt"], rec["block_prompt_results"] = self.prompt, self.reply
        rec |= {"steps": [s.text for s in self.steps], "tail": self.thoughts[-1].tail, "chunker": self.chunker, "notes": self.notes}
        # Our earlier layout, still read by `analyze`'s resume (`response`, `blocks`) and tests/test_analysis.py.
        rec |= {"response": t.response, "blocks": [{"start": x.start, "end": x.end, "type": x.type} for x in self.thoughts],
                "block_texts": [x.text for x in self.thoughts]}
        return rec


def split_steps(response: str) -> tuple[list[Step], int]:
    """Steps of the thinking part (between `<think>` and `</think>`), and the offset where the tail starts."""
    body_start = 0
    opened = response.lstrip().startswith(THINK_OPEN)
    if opened:
        body_start = response.index(THINK_OPEN) + len(THINK_OPEN)
    close = response.find(THINK_CLOSE, body_start)
    think_end = close if close >= 0 else len(response)
    steps: list[Step] = []
    pos = body_start
    for m in [*_SEP.finditer(response, body_start, think_end), None]:
        seg_end = m.start() if m else think_end
        raw = response[pos:seg_end]
        if raw.strip():
            lead = len(raw) - len(raw.lstrip())
            steps.append(Step(raw.strip(), pos + lead, pos + lead + len(raw.strip())))
        if m:
            pos = m.end()
    return steps, think_end


def marker_type(step: str) -> str | None:
    for kind, pattern in MARKERS:
        if pattern.search(step):
            return kind
    return None


def rule_blocks(steps: Sequence[str]) -> list[dict[str, Any]]:
    """Blocks {start, end, type}: a step that opens with a discourse marker starts a new thought."""
    blocks: list[dict[str, Any]] = []
    for i, s in enumerate(steps):
        kind = marker_type(s)
        if not blocks or kind is not None:
            blocks.append({"start": i, "end": i, "type": kind or "compute"})
        else:
            blocks[-1]["end"] = i
    return blocks


def validate_blocks(blocks: Any, n_steps: int) -> list[dict[str, Any]]:
    """0-based blocks must cover steps 0..n-1 contiguously and in order; raises ValueError with the first problem,
    numbered from 1 as the chunker's prompt and the released layout number blocks and steps."""
    if not isinstance(blocks, list) or not blocks:
        raise ValueError("expected a non-empty JSON list of blocks")
    out = []
    expect = 0
    for k, b in enumerate(blocks):
        if not isinstance(b, dict):
            raise ValueError(f"block {k + 1} is not an object")
        start, end, kind = b.get("start"), b.get("end"), b.get("type", "compute")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
            raise ValueError(f"block {k + 1}: start/end must be integers")
        if start != expect:
            raise ValueError(f"block {k + 1} starts at step {start + 1}, expected {expect + 1} (gap or overlap)")
        if end < start:
            raise ValueError(f"block {k + 1} ends (step {end + 1}) before it starts (step {start + 1})")
        if end >= n_steps:
            raise ValueError(f"block {k + 1} ends at step {end + 1}, past the last step {n_steps}")
        kind = kind.strip().lower() if isinstance(kind, str) else ""
        out.append({"start": start, "end": end, "type": kind if kind in TYPES else "other"})
        expect = end + 1
    if expect != n_steps:
        raise ValueError(f"blocks cover steps 1..{expect}, the trace has {n_steps} steps")
    return out


def assemble(trace: Trace, blocks: list[dict[str, Any]], chunker: str) -> Chunked:
    """Thoughts from validated blocks; character spans tile the response (opener to the first, tail to the last)."""
    steps, think_end = split_steps(trace.response)
    blocks = validate_blocks(blocks, len(steps))
    r = trace.response
    thoughts = []
    for k, b in enumerate(blocks):
        a = 0 if k == 0 else steps[b["start"]].start
        last = k == len(blocks) - 1
        z = len(r) if last else steps[blocks[k + 1]["start"]].start
        text = r[steps[b["start"]].start : steps[b["end"]].end]
        tail = r[think_end:].strip() if last else ""
        thoughts.append(Thought(k, b["start"], b["end"], b["type"], text, (a, z), tail))
    return Chunked(trace, steps, thoughts, think_end, chunker)


def chunk_rule(trace: Trace) -> Chunked:
    """Rule-based chunking. Raises ValueError if the trace has no thinking step at all."""
    steps, _ = split_steps(trace.response)
    if not steps:
        raise ValueError("no thinking steps (empty reasoning)")
    return assemble(trace, rule_blocks([s.text for s in steps]), "rule")


def from_record(trace: Trace, record: dict[str, Any]) -> Chunked:
    """Rebuild a Chunked from a `chunks.jsonl` record: its released-layout `block` (older records: `blocks`),
    validated against the trace's own steps; the notes, prompt and reply come back too, so a rewrite keeps them."""
    blocks = released_blocks(record["block"]) if "block" in record else record["blocks"]
    c = assemble(trace, blocks, record.get("chunker", "rule"))
    c.notes, c.prompt, c.reply = list(record.get("notes") or []), record.get("block_prompt"), record.get("block_prompt_results")
    return c


# -- the LLM chunker ----------------------------------------------------------------------------------
# After the authors' released chunker (LongCoT_chunking/block_generate.py, as we read it): the problem and the
# numbered steps in one user message, a JSON answer keyed "block 1", "block 2", ... with 1-based steps, every attempt
# sampled at 0.1, at most 5 attempts. The wording is ours, and so are the six types (δ `by_type` reads them).
TEMPERATURE = 0.1
TYPE_HELP = ("compute (works the problem), verify (checks a result), alternative (another method), reflect (doubts, "
             "corrections), restate (repeats the problem or earlier results), conclusion (states the answer)")
LLM_PROMPT = (
    "You are a math teacher. Below are a problem and a student's solution, split into numbered steps. Group the "
    "steps into blocks: runs of consecutive steps that serve one purpose in the student's thinking. Give each block "
    "one block type: " + TYPE_HELP + ". Every step from Step 1 to Step {last} must be in exactly one block, in "
    "order.\n\nProblem:\n\n```\n\n{problem}\n\n```\n\nSolution:\n\n```\n\n{steps}\n\n```\n\nReply with only JSON "
    'of this form, without explanations: {{"block 1": {{"start": 1, "end": 3, "block type": "compute"}}, '
    '"block 2": {{"start": 4, "end": 4, "block type": "verify"}}, ...}}'
)


def llm_prompt(problem: str, steps: Sequence[str]) -> str:
    return LLM_PROMPT.format(last=len(steps), problem=problem, steps="\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps)))


def _step_number(x: Any) -> Any:
    """A 1-based step number as an int (the release's prompt shows them as strings, `'start': ''`); else as given."""
    if isinstance(x, str) and x.strip().isdigit():
        return int(x)
    return x


def released_blocks(obj: Any) -> list[dict[str, Any]]:
    """The released `block` mapping {"block k": {start, end, "block type"}} (1-based, inclusive, in k order) as our
    0-based blocks; raises ValueError when it is not one. Coverage is `validate_blocks`'s job."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError('expected a non-empty JSON object {"block 1": {...}, ...}')
    keyed = []
    for key, b in obj.items():
        m = re.fullmatch(r"\s*block\s*(\d+)\s*", str(key), re.IGNORECASE)
        if m is None or not isinstance(b, dict):
            raise ValueError(f"entry {key!r} is not a block (\"block k\": {{start, end, block type}})")
        keyed.append((int(m.group(1)), b))
    keyed.sort(key=lambda kb: kb[0])
    if [k for k, _ in keyed] != list(range(1, len(keyed) + 1)):
        raise ValueError(f"blocks are numbered {[k for k, _ in keyed]}, expected 1..{len(keyed)}")
    out = []
    for _, b in keyed:
        start, end = _step_number(b.get("start")), _step_number(b.get("end"))
        kind = b.get("block type", b.get("type", "compute"))
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end))
        out.append({"start": start - 1 if ints else start, "end": end - 1 if ints else end, "type": kind})
    return out


def _objects(text: str) -> list[Any]:
    """Every `{...}` in `text` that decodes as JSON or, failing that, as a Python literal (single quotes, as the
    release's own prompt writes its example and its lenient decoder accepts), outermost first."""
    out = []
    for m in re.finditer(r"\{", text):
        depth = 0
        for k in range(m.start(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            if depth == 0:
                piece = text[m.start() : k + 1]
                try:
                    out.append(json.loads(piece))
                except json.JSONDecodeError:
                    try:
                        out.append(ast.literal_eval(piece))
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        pass
                break
    return out


def strip_thinking(text: str) -> str | None:
    """`text` without a reasoning model's thinking part: what follows the last `</think>` (a `<think>…</think>`
    block, or a chat template that opened `<think>` in the prompt); None when a `<think>` is never closed (the model
    ran out of room while thinking: nothing after it to use)."""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return text[close + len(THINK_CLOSE) :]
    return None if THINK_OPEN in text else text


def parse_blocks(text: str, n_steps: int) -> list[dict[str, Any]]:
    """The first block mapping in the reply (after any thinking part; ```json fences and prose around it are
    ignored) that validates as a complete cover of the `n_steps` steps, as 0-based blocks; ValueError otherwise."""
    answer = strip_thinking(text)
    if answer is None:
        raise ValueError("the reply never closes its <think>")
    reason = "no block object in the reply"
    for obj in _objects(answer):
        if not (isinstance(obj, dict) and obj and all(re.match(r"\s*block", str(k), re.IGNORECASE) for k in obj)):
            continue  # an inner {start, end, ...} or unrelated JSON
        try:
            return validate_blocks(released_blocks(obj), n_steps)
        except ValueError as e:
            reason = str(e)
    raise ValueError(reason)


def chunk_llm(
    engine: Any, traces: Sequence[Trace], max_tokens: int = 512, retries: int = 4, max_prompt_tokens: int | None = None, seed: int = 0
) -> list[Chunked]:
    """LLM chunking: one call per trace and attempt, batched over the traces still unresolved, through the protocol
    call layer (`Turn.kind` "chunk"; seeds from `seed_for(seed, "chunk", trace id, attempt)`, so a trace samples the
    same whatever its batch; the cap shrinks to the context left, as for every protocol call).

    Every attempt samples at `TEMPERATURE`; `retries` more follow a reply that does not validate. A trace that never
    validates (or whose prompt leaves no room) falls back to the rule-based chunker (`chunker = "llm->rule"`,
    reasons in `notes`). `max_prompt_tokens` is `engine.max_model_len - max_tokens` (what `analyze` passes). Raises
    ValueError for a trace without any thinking step, like `chunk_rule`.
    """
    from longshort.protocols.calls import base_call, execute, seed_for, tool_setup
    from longshort.types import Episode

    steps = [[s.text for s in split_steps(t.response)[0]] for t in traces]
    for t, s in zip(traces, steps):
        if not s:
            raise ValueError(f"trace {t.id}: no thinking steps (empty reasoning)")
    # the call layer bounds prompt + completion by max_model_len; `analyze` hands over max_model_len - max_tokens
    setup = tool_setup(engine, (max_prompt_tokens + max_tokens) if max_prompt_tokens is not None else 1 << 40, seed)
    prompts = [llm_prompt(t.problem, s) for t, s in zip(traces, steps)]
    episodes = [Episode(problem_id=t.id, problem=t.problem, gold=t.answer, protocol="chunk") for t in traces]
    result: dict[int, Chunked] = {}
    notes: dict[int, list[str]] = {i: [] for i in range(len(traces))}
    replies: dict[int, str] = {}
    todo = list(range(len(traces)))
    for attempt in range(retries + 1):
        calls = {}
        for i in todo:
            call = base_call(setup, episodes[i], prompts[i], "chunk", TEMPERATURE, max_tokens, seed_for(seed, "chunk", traces[i].id, attempt))
            if call is None:
                notes[i].append(f"the prompt leaves no room to answer within max_model_len {setup.max_model_len}")
            else:
                calls[i] = call
        execute(setup, list(calls.values()))
        todo = []
        for i, call in calls.items():
            replies[i] = episodes[i].turns[call.turns[0]].text
            try:
                result[i] = assemble(traces[i], parse_blocks(replies[i], len(steps[i])), "llm")
            except ValueError as e:
                notes[i].append(f"attempt {attempt}: {e}")
                todo.append(i)
        if not todo:
            break
    out = []
    for i, t in enumerate(traces):
        c = result.get(i)
        if c is None:
            c = chunk_rule(t)
            c.chunker = "llm->rule"
        c.notes, c.prompt, c.reply = notes[i], prompts[i], replies.get(i)
        out.append(c)
    return out
