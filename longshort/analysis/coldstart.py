"""Cold-start synthesis (Long⊗Short stage 2): scored thoughts -> shared long/short transcripts -> per-role SFT data.

Per trace: the important thoughts (threshold or per-trace top-k on M; the first one by default) are kept verbatim,
each maximal run of them one long turn `<think>\\n...\\n</think>`; each run of the remaining thoughts is rewritten
concisely into a short turn `<answer> ... </rethink>`; the last short turn is `<answer> ... \\boxed{x} </answer>`
with the trace's own final answer. A transcript is kept only if every turn obeys the tag grammar and its final
answer grades correct against the gold answer. `long.jsonl` and `short.jsonl` hold the same transcripts, with
`target_role` long / short: the SFT of each role trains on its own turns (docs/analysis.md).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from longshort.analysis.chunk import strip_thinking
from longshort.config import Recipe
from longshort.errors import UserError
from longshort.io import Rejects, atomic_write_text, read_jsonl, validated, write_json, write_jsonl
from longshort.run import open_run
from longshort.tags import ANSWER_CLOSE, ANSWER_OPEN, RETHINK_CLOSE, THINK_CLOSE, THINK_OPEN, parse_long, parse_short

_NUM = r"-?\d+(?:\.\d+)?"
# `x` and `$` as GSM8K writes its steps ("0.2 x 50 = $10"); the synthetic task writes neither
EQUATION = re.compile(rf"\$?({_NUM}(?:\s*[-+*/×x]\s*\$?{_NUM})+)\s*=\s*\$?({_NUM})")
REWRITE_PROMPT = (
    "Restate the reasoning below concisely, in one or two short sentences. Keep every number it computes and the "
    'result of every calculation, for example "2 x 8 = 16"; drop re-checks, repetitions and detours. Reply with the '
    "short restatement only.\n\nReasoning:\n{text}"
)


# -- selection ---------------------------------------------------------------------------------------------
def select(thoughts: list[dict[str, Any]], mode: str, threshold: float, top_k: int, keep_first: bool, key: str = "M") -> list[bool]:
    """Important-thought mask of one trace (thoughts in order)."""
    if mode == "threshold":
        mask = [t[key] >= threshold for t in thoughts]
    elif mode == "topk":
        best = sorted(range(len(thoughts)), key=lambda i: (-thoughts[i][key], i))[:top_k]
        mask = [i in best for i in range(len(thoughts))]
    else:
        raise ValueError(f"unknown selection {mode!r}")
    if keep_first and mask:
        mask[0] = True
    return mask


def runs(mask: list[bool]) -> list[tuple[bool, list[int]]]:
    """Maximal runs of equal mask values: (important, thought indices)."""
    out: list[tuple[bool, list[int]]] = []
    for i, m in enumerate(mask):
        if out and out[-1][0] == m:
            out[-1][1].append(i)
        else:
            out.append((m, [i]))
    return out


# -- the deterministic compressor ----------------------------------------------------------------------------
@dataclass
class Known:
    """Results stated so far in a transcript (a computation is new only if its result is)."""

    results: set[str] = field(default_factory=set)
    latest: str | None = None

    def read(self, text: str) -> None:
        for m in EQUATION.finditer(text):
            self.results.add(m.group(2))
            self.latest = m.group(2)


def compress_rule(text: str, known: Known, final: bool = False) -> str:
    """Keep, verbatim, the steps (blank-line-separated lines) that state a new result; drop the ones that only
    restate known results (re-checks, commuted detours, recaps) or state none (doubts), except that the final turn
    keeps the trace's last step when it states the latest result (the conclusion). With no new
    result: the latest one (nothing in the final turn, where the boxed answer states it); with no computation at
    all, the first sentence. Steps are kept whole, not cut to their equations, because the step's own words
    (what is added, what is left) are what the next turn continues from: a bare `a + b = c` loses them."""
    kept = []
    steps = [s.strip() for s in re.split(r"\n\s*\n|\n", text)]
    for k, step in enumerate(steps):
        new = False
        for m in EQUATION.finditer(step):
            rhs = m.group(2)
            new = new or rhs not in known.results
            known.results.add(rhs)
            known.latest = rhs
        concludes = final and k == len(steps) - 1 and known.latest is not None and re.search(rf"(?<![\d.]){re.escape(known.latest)}(?!\.?\d)", step)
        if new or concludes:  # the final turn keeps the trace's last step when it states the answer \boxed{} repeats
            kept.append(step)
    if kept:
        return " ".join(kept)
    if known.latest is not None:
        return "" if final else f"So far {known.latest}."
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return first[:200]


def canonical(number: str) -> str:
    """A number by value: `12.0` and `12` are one number, `1,000` is `1000`."""
    return format(Decimal(number.replace(",", "")).normalize(), "f")


def numbers(text: str) -> Counter[str]:
    """Every number in `text` (thousands commas joined), as a multiset of canonical values."""
    return Counter(canonical(n) for n in re.findall(rf"{_NUM}(?:,\d{{3}}(?!\d))*", text))


def new_results(text: str, known: Known) -> Counter[str]:
    """The run's new results: the value c of each equation `a op b = c` in it, in order, that is stated neither
    earlier in the transcript (`known`) nor earlier in the run; a multiset of canonical values (each value once)."""
    seen = set(known.results)
    out: Counter[str] = Counter()
    for m in EQUATION.finditer(text):
        if m.group(2) not in seen:
            out[canonical(m.group(2))] += 1
        seen.add(m.group(2))
    return out


def clean_rewrite(out: str, source: str, finish_reason: str = "stop") -> tuple[str | None, str | None]:
    """(rewrite, None) if the model's output is usable once its thinking part is stripped: finished, non-empty,
    not longer than the source, no tags, and it keeps the source's last number (the result the next turn continues
    from); else (None, why), and the rule rewrite is used."""
    if finish_reason == "length":
        return None, "cut at coldstart.rewriter_max_tokens"
    text = strip_thinking(out)
    if text is None:
        return None, "unfinished <think>"
    text = text.strip()
    if not text:
        return None, "empty"
    if any(tag in text for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, RETHINK_CLOSE)):
        return None, "contains a tag"
    # characters other than spaces: a concise step (GSM8K's) may come back as itself, respaced ("6 * 2" for "6*2")
    if len(re.sub(r"\s", "", text)) > len(re.sub(r"\s", "", source)):
        return None, "longer than the source"
    last = re.findall(rf"{_NUM}(?:,\d{{3}}(?!\d))*", source)
    if last and canonical(last[-1]) not in numbers(text):
        return None, "loses the last number"
    return text, None


def llm_rewrites(engine: Any, texts: list[str], max_tokens: int, seed: int, max_model_len: int) -> list[tuple[str | None, str | None]]:
    """Compress every text in one batched greedy call of the rewriter through the protocol call layer
    (`Turn.kind` "rewrite"); `clean_rewrite` of each output: (rewrite, None), or (None, why) for the rule fallback."""
    from longshort.protocols.calls import base_call, execute, seed_for, tool_setup
    from longshort.types import Episode

    setup = tool_setup(engine, max_model_len, seed)
    episodes = [Episode(problem_id=f"rewrite-{k}", problem=t, gold="", protocol="rewrite") for k, t in enumerate(texts)]
    calls = [base_call(setup, ep, REWRITE_PROMPT.format(text=t), "rewrite", 0.0, max_tokens, seed_for(seed, "rewrite", t))
             for ep, t in zip(episodes, texts)]
    execute(setup, [c for c in calls if c is not None])
    out: list[tuple[str | None, str | None]] = []
    for ep, c, t in zip(episodes, calls, texts):
        if c is None:
            out.append((None, "prompt leaves no room within engine.max_model_len"))
        else:
            turn = ep.turns[c.turns[0]]
            out.append(clean_rewrite(turn.text, t, turn.finish_reason))
    return out


# -- transcripts -----------------------------------------------------------------------------------------
def long_turn(text: str) -> str:
    return f"{THINK_OPEN}\n{text}\n{THINK_CLOSE}"


def short_turn(text: str, final: str | None = None) -> str:
    if final is None:
        return f"{ANSWER_OPEN} {text} {RETHINK_CLOSE}"
    body = f"{text} \\boxed{{{final}}}" if text else f"\\boxed{{{final}}}"
    return f"{ANSWER_OPEN} {body} {ANSWER_CLOSE}"


def fold(plan: list[tuple[bool, list[int]]], max_turns: int) -> tuple[list[tuple[bool, list[int]]], bool]:
    """At most `max_turns` turns ending with a short one: runs after the last long turn that fits are folded
    into the final short turn (compressed). Returns (plan, folded?)."""
    need = len(plan) + (1 if plan[-1][0] else 0)  # a final short turn is added after a trailing long run
    if need <= max_turns:
        return plan, False
    k = max_turns - 1  # turns kept before the final short one; the last kept must be long
    while k > 0 and not plan[k - 1][0]:
        k -= 1
    rest = [i for _, idx in plan[k:] for i in idx]
    return plan[:k] + [(False, rest)], True


def build_turns(
    thoughts: list[dict[str, Any]], plan: list[tuple[bool, list[int]]], final: str, rewrite: Callable[[str, Known, bool], str]
) -> list[dict[str, str]]:
    """Turns of one transcript from its run plan; the last turn is the final short answer."""
    known = Known()
    turns: list[dict[str, str]] = []
    for j, (important, idx) in enumerate(plan):
        text = "\n\n".join(thoughts[i]["text"] for i in idx)
        last = j == len(plan) - 1
        if important:
            turns.append({"role": "long", "text": long_turn(text)})
            known.read(text)
            if last:
                turns.append({"role": "short", "text": short_turn("", final)})
        else:
            summary = rewrite(text, known, last)
            turns.append({"role": "short", "text": short_turn(summary, final if last else None)})
    return turns


def check_transcript(turns: list[dict[str, str]], gold: str) -> str | None:
    """None if every turn parses (long: think, short: rethink, last: final) and the final answer is right; else why."""
    from longshort.grading import is_equivalent

    for k, t in enumerate(turns):
        last = k == len(turns) - 1
        p = parse_long(t["text"]) if t["role"] == "long" else parse_short(t["text"])
        want = "think" if t["role"] == "long" else ("final" if last else "rethink")
        if p.kind != want:
            return f"turn {k} ({t['role']}) is {p.kind}, expected {want}{': ' + p.reason if p.reason else ''}"
        if last and not is_equivalent(p.boxed or "", gold):
            return f"final answer {p.boxed!r} does not match gold {gold!r}"
    return None


def final_answer(thoughts: list[dict[str, Any]]) -> str | None:
    """The trace's own final answer: from the text after </think>, else from the last thought."""
    from longshort.grading import extract_answer

    last = thoughts[-1]
    # lenient: a trace may state its answer in words ("So the answer is 12"); the transcript check then boxes it
    return extract_answer(last.get("tail") or "", rule="lenient") or extract_answer(last["text"], rule="lenient")


# -- the stage -------------------------------------------------------------------------------------------
_THOUGHT_FIELDS = {  # field -> (accepted types, what it must be)
    "trace_id": ((str, int), "a string or an integer"),
    "index": ((int,), "an integer"),
    "text": ((str,), "a string"),
    "problem": ((str,), "a string"),
    "gold": ((str, int, float), "a string or a number"),
    "M": ((int, float), "a number"),
    "ci_low": ((int, float), "a number"),
}


def _thought_problem(row: dict[str, Any]) -> str | None:
    """Why a thought row of `longshort analyze` cannot be used (None when it can)."""
    missing = [k for k in _THOUGHT_FIELDS if k not in row]
    if missing:
        return f"thought row lacks {', '.join(missing)}"
    for k, (types, what) in _THOUGHT_FIELDS.items():
        v = row[k]
        if isinstance(v, bool) or not isinstance(v, types):
            return f"field {k!r} must be {what}, got {type(v).__name__}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"field {k!r} must be finite, got {v}"
    if row["index"] < 0:
        return f"field 'index' must be >= 0, got {row['index']}"
    if not str(row["problem"]).strip() or not str(row["gold"]).strip():
        return "field 'problem' or 'gold' is empty"
    return None


def load_thoughts(path: Path, on_error: str, rejects: Rejects) -> dict[str, list[dict[str, Any]]]:
    """Scored thoughts by trace, in order. A bad row (missing or mistyped field, a thought given twice) raises
    DataError naming file:line, or with on_error=skip is counted in `rejects`; a file without thoughts is an error."""
    if not path.is_file():
        raise UserError(f"{path}: no thoughts file (run `longshort analyze` first, or set coldstart.thoughts)")
    by_trace: dict[str, list[dict[str, Any]]] = {}

    def thought(row: dict[str, Any]) -> dict[str, Any]:
        why = _thought_problem(row)
        if why is not None:
            raise ValueError(why)
        return row

    records = ((f"{path}:{n}", row) for n, row in read_jsonl(path, on_error, rejects))  # type: ignore[arg-type]
    for _, row in validated(records, thought, on_error, rejects, key=lambda r: (str(r["trace_id"]), r["index"]),  # type: ignore[arg-type]
                            duplicate=lambda k, first: f"thought {k[1]} of trace {k[0]!r} given twice (first at {first})"):
        by_trace.setdefault(str(row["trace_id"]), []).append(row)
    if not by_trace:
        raise UserError(f"{path}: no thought rows" + (f" ({len(rejects)} rejected)" if rejects else ""))
    for rows in by_trace.values():
        rows.sort(key=lambda r: r["index"])
    return by_trace


def coldstart(recipe: Recipe) -> dict[str, Any]:
    """Run the stage: write long.jsonl, short.jsonl, stats.json and summary.md in the run dir; return the stats."""
    from longshort.models import check_model_dir, load_tokenizer, resolve_base

    cfg = recipe.coldstart
    run_dir = open_run(recipe, ())  # every output is rewritten whole: nothing to resume, nothing to clear
    max_turns = cfg.max_turns or recipe.protocol.max_turns
    if max_turns < 2:
        raise UserError(f"key 'protocol.max_turns' ({max_turns}) must be >= 2 for cold-start transcripts (or set coldstart.max_turns)")
    path = Path(cfg.thoughts) if cfg.thoughts else run_dir / "thoughts.jsonl"
    rejects = Rejects()
    traces = load_thoughts(path, recipe.data.on_error, rejects)

    named = [(k, v) for k, v in (("coldstart.rewriter_model", cfg.rewriter_model), ("analysis.model", recipe.analysis.model)) if v]
    model = (check_model_dir(Path(named[0][1]), named[0][0], recipe.model.trust_remote_code) if named
             else resolve_base(recipe.model.base, run_dir, recipe.model.tiny, recipe.run.seed,
                               chat_template=recipe.model.chat_template))
    counts: dict[str, int] = {"traces_in": len(traces), "rejected_rows": len(rejects), "no_answer": 0, "invalid": 0, "folded": 0, "llm_fallback": 0}
    plans = {}
    for tid, th in traces.items():
        mask = select(th, cfg.select, cfg.threshold, cfg.top_k, cfg.keep_first, cfg.score_key)
        plan, folded = fold(runs(mask), max_turns)
        counts["folded"] += folded
        plans[tid] = (plan, mask)

    rewrites: dict[str, tuple[str | None, str | None]] = {}
    texts = sorted({"\n\n".join(traces[t][i]["text"] for i in idx) for t, (plan, _) in plans.items() for imp, idx in plan if not imp})
    if cfg.rewriter == "llm" and texts:  # no short run (every thought important): no engine to start
        from longshort.engines import make_engine

        engine = make_engine(recipe.engine.kind, str(model), recipe.engine, None, seed=recipe.run.seed)
        try:
            rewrites = dict(zip(texts, llm_rewrites(engine, texts, cfg.rewriter_max_tokens, recipe.run.seed, recipe.engine.max_model_len)))
        finally:
            engine.close()

    tok = load_tokenizer(model)
    ntok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    # per rewrite of a short run: fell back (and why), tokens in/out, whether it keeps the run's new results
    rw: dict[str, Any] = {"rewrites": 0, "reasons": Counter(), "tokens_in": 0, "tokens_out": 0, "checked": 0, "kept": 0}

    def rewrite(text: str, known: Known, final: bool) -> str:
        out = None
        if cfg.rewriter == "llm":
            out, why = rewrites[text]
            rw["rewrites"] += 1
            if out is None:
                counts["llm_fallback"] += 1
                rw["reasons"][why] += 1
            else:
                need = new_results(text, known)  # before compress_rule advances `known`
                rw["checked"] += bool(need)
                rw["kept"] += bool(need) and not need - numbers(out)
                rw["tokens_in"] += ntok(text)
                rw["tokens_out"] += ntok(out)
        rule = compress_rule(text, known, final)  # also advances `known`
        return out if out is not None else rule

    out_rows, reasons = [], {}
    stats_tokens = {"long": 0, "short": 0, "original": 0}
    kept_mask: list[bool] = []
    for tid, th in traces.items():
        plan, mask = plans[tid]
        final = final_answer(th)
        if final is None:
            counts["no_answer"] += 1
            continue
        turns = build_turns(th, plan, final, rewrite)
        why = check_transcript(turns, str(th[0]["gold"]))
        if why is not None:
            counts["invalid"] += 1
            reasons[tid] = why
            continue
        out_rows.append({"id": tid, "problem": th[0]["problem"], "gold": str(th[0]["gold"]), "turns": turns})
        for t in turns:
            stats_tokens[t["role"]] += ntok(t["text"])
        stats_tokens["original"] += int(th[0].get("d_y") or ntok("".join(x["text"] for x in th)))
        kept_mask += mask

    rewriter = None
    if cfg.rewriter == "llm":
        n, k = rw["rewrites"], counts["llm_fallback"]
        rewriter = {
            "model": str(model), "rewrites": n, "fallbacks": k, "fallback_share": k / n if n else 0.0,
            "fallback_reasons": dict(rw["reasons"].most_common()),
            # over the model's own rewrites (fallbacks excluded): rewrite tokens / tokens of the runs they restate
            "compression": rw["tokens_out"] / rw["tokens_in"] if rw["tokens_in"] else None,
            # model rewrites of runs with a new result, and the share whose numbers contain all of them (docs/analysis.md)
            "numbers_checked": rw["checked"], "keeps_all_new_results": rw["kept"] / rw["checked"] if rw["checked"] else None,
        }
        if n and k / n > cfg.max_fallback:
            raise UserError(f"coldstart: {k} of {n} rewrites by {model} ({k / n:.0%}) fell back to the rule rewriter, more than "
                            f"key 'coldstart.max_fallback' ({cfg.max_fallback}); mostly: {rw['reasons'].most_common(1)[0][0]} "
                            "(use a stronger coldstart.rewriter_model, or raise coldstart.max_fallback)")
    if not out_rows:  # empty outputs would only fail later, in sft
        raise UserError(f"{path}: no cold-start transcript could be built from {len(traces)} traces "
                        f"({counts['no_answer']} without a final answer, {counts['invalid']} invalid"
                        + (f", e.g. {next(iter(reasons.values()))}" if reasons else "") + ")")
    write_jsonl(run_dir / "long.jsonl", [{**r, "target_role": "long"} for r in out_rows])
    write_jsonl(run_dir / "short.jsonl", [{**r, "target_role": "short"} for r in out_rows])
    if rejects:
        write_jsonl(run_dir / "coldstart_rejects.jsonl", rejects.rows)
    scores = [t[cfg.score_key] for th in traces.values() for t in th]
    hist = [0] * 10
    for s in scores:
        hist[min(9, max(0, int(s * 10)))] += 1
    total = stats_tokens["long"] + stats_tokens["short"]
    stats = {
        **counts,
        "traces_out": len(out_rows),
        "thoughts_per_trace": statistics.fmean(len(th) for th in traces.values()) if traces else 0.0,
        "important_share": statistics.fmean(kept_mask) if kept_mask else 0.0,
        "turns_per_transcript": statistics.fmean(len(r["turns"]) for r in out_rows) if out_rows else 0.0,
        f"score_{cfg.score_key}_histogram_0.1": hist,
        f"score_{cfg.score_key}_mean": statistics.fmean(scores) if scores else None,
        "tokens": {**stats_tokens, "per_transcript_long": stats_tokens["long"] / max(1, len(out_rows)),
                   "per_transcript_short": stats_tokens["short"] / max(1, len(out_rows))},
        "compression_ratio": total / stats_tokens["original"] if stats_tokens["original"] else None,
        "rewriter": rewriter,
        "invalid_examples": dict(list(reasons.items())[:5]),
    }
    write_json(run_dir / "stats.json", stats)
    atomic_write_text(run_dir / "summary.md", "# coldstart\n\n```json\n" + json.dumps(stats, indent=2) + "\n```\n")
    return stats
