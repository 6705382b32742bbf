"""The analyze stage: traces -> thoughts (chunking) -> prefix rollouts -> importance scores (`thoughts.jsonl`).

Outputs in the run directory: `chunks.jsonl` (ThoughtChunk-style blocks per trace; reused on resume so an LLM
chunking is not redone), `rollouts.jsonl` (appended per finished trace; resumable), `thoughts.jsonl` (one row per
thought: text, type, token span, N_right, N_sum, M, CI), `summary.json`, `summary.md`, and `rejects.jsonl`
when bad input rows were skipped. `settings.json` records the settings the kept chunks and rollouts were made
with: a resume with other ones stops with a one-line error naming the key (docs/reliability.md).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from longshort.analysis.chunk import Chunked, chunk_llm, chunk_rule, from_record
from longshort.analysis.metric import resolve_delta, score_trace
from longshort.analysis.rollouts import RolloutSettings, run_rollouts, token_bounds
from longshort.config import Recipe
from longshort.data.traces import Trace, read_traces
from longshort.errors import UserError
from longshort.io import Rejects, atomic_write_text, read_jsonl, write_json, write_jsonl
from longshort.run import open_run
from longshort.run.settings import claim, settings

REASONER_ROLE = "reasoner"
SETTINGS = "settings.json"
OUTPUTS = ("chunks.jsonl", "rollouts.jsonl", "thoughts.jsonl", SETTINGS, "summary.json", "summary.md", "rejects.jsonl")
# Keys that may change between a run and its resume: how many traces, batching, and the scoring of the rollouts
# (thoughts.jsonl is recomputed from the kept rollouts on every run).
FREE = ("analysis.max_traces", "analysis.batch_traces", "analysis.score_mode", "analysis.delta", "analysis.delta_value",
        "analysis.alpha", "data.on_error", "engine.batch_size", "engine.gpu_memory_utilization", "engine.enforce_eager")


def resume_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings the kept chunks and rollouts depend on: every key this stage reads, except `FREE`."""
    keys = ("run.seed", "model", "engine", "roles.long.system_prompt", "data.train", "data.on_error",
            *recipe.data.resume_keys(), "synthetic", "analysis")
    return settings(recipe, keys, FREE)


def trace_source(recipe: Recipe) -> Path:
    """`analysis.traces`, else `data.train`, else the synthetic task generated (once) into the run dir."""
    path = recipe.analysis.traces or recipe.data.train
    if path:
        return Path(path)
    from longshort.data.synthetic import write_task

    out = recipe.run_dir / "synthetic"
    if not (out / "meta.json").is_file():
        syn = recipe.synthetic
        write_task(syn.n, recipe.run.seed, out, syn.test_fraction, syn)
    return out / "train.jsonl"


def chunk_all(recipe: Recipe, traces: list[Trace], engine: Any, path: Path) -> tuple[list[Chunked], dict[str, int]]:
    """Chunk every trace (reusing valid records of `path` on resume); write `path`. Empty traces are counted."""
    cfg = recipe.analysis
    cached: dict[str, dict[str, Any]] = {}
    if path.is_file() and recipe.run.resume == "auto":
        cached = {row["id"]: row for _, row in read_jsonl(path, "skip", Rejects()) if "id" in row and "blocks" in row}
    out: dict[str, Chunked] = {}
    todo: list[Trace] = []
    for t in traces:
        rec = cached.get(t.id)
        if rec is not None and rec.get("response") == t.response:
            try:
                out[t.id] = from_record(t, rec)
                continue
            except (ValueError, KeyError):
                pass  # stale or damaged record: chunk again
        todo.append(t)
    counts = {"no_steps": 0, "llm_fallback": 0}
    nonempty = []
    for t in todo:
        try:
            chunk_rule(t)  # raises for a trace without any thinking step
            nonempty.append(t)
        except ValueError:
            counts["no_steps"] += 1
    if cfg.chunker == "llm" and nonempty:
        limit = recipe.engine.max_model_len - cfg.chunker_max_tokens
        for c in chunk_llm(engine, nonempty, cfg.chunker_max_tokens, cfg.chunker_retries, limit, recipe.run.seed):
            out[c.trace.id] = c
    else:
        for t in nonempty:
            out[t.id] = chunk_rule(t)
    chunked = [out[t.id] for t in traces if t.id in out]
    counts["llm_fallback"] = sum(1 for c in chunked if c.chunker == "llm->rule")
    write_jsonl(path, [{**c.to_record(), "notes": c.notes} for c in chunked])
    return chunked, counts


def thought_rows(recipe: Recipe, tokenizer: Any, chunked: list[Chunked], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per thought of every rolled-out trace; checks that the thoughts cover every step."""
    cfg = recipe.analysis
    delta_fn = resolve_delta(cfg.delta, cfg.delta_value)
    rows = []
    for c in chunked:
        rec = records.get(c.trace.id)
        if rec is None:
            continue
        covered = [k for t in c.thoughts for k in range(t.start, t.end + 1)]
        if covered != list(range(len(c.steps))):
            raise AssertionError(f"trace {c.trace.id}: thoughts do not cover its steps exactly")  # a chunker bug
        d_y, _, spans = token_bounds(tokenizer, c)
        prefixes = sorted(rec["prefixes"], key=lambda p: p["i"])
        base = [{"trace_id": c.trace.id, "index": t.index, "type": t.type, "text": t.text} for t in c.thoughts]
        scores = score_trace(d_y, prefixes, [delta_fn(b) for b in base], cfg.score_mode, cfg.alpha)
        for t, b, s, p in zip(c.thoughts, base, scores, prefixes[1:]):
            rows.append(
                {
                    **b,
                    "problem": c.trace.problem,
                    "gold": c.trace.answer,
                    "n_thoughts": len(c.thoughts),
                    "steps": [t.start, t.end],
                    "char_span": list(t.char_span),
                    "token_span": list(spans[t.index]),
                    "tail": t.tail,
                    "d_prefix": p["d_prefix"],
                    "d_y": d_y,
                    "n_right": p["n_right"],
                    "n_sum": p["n_sum"],
                    "accuracy_prefix0": prefixes[0]["n_right"] / max(1, prefixes[0]["n_sum"]),
                    # mean tokens a continuation from this prefix wrote, and how many ran out of room (null: older record)
                    "rollout_tokens": statistics.fmean(p["tokens"]) if p.get("tokens") else None,
                    "rollouts_cut": p.get("cut"),
                    **s,
                    "chunker": c.chunker,
                }
            )
    return rows


def summarize(rows: list[dict[str, Any]], counts: dict[str, Any]) -> dict[str, Any]:
    ms = [r["M"] for r in rows]
    by_type: dict[str, list[float]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r["M"])
    traces = {r["trace_id"] for r in rows}
    hist = [0] * 10
    for m in ms:
        hist[min(9, int(m * 10))] += 1
    return {
        **counts,
        "traces_scored": len(traces),
        "thoughts": len(rows),
        "thoughts_per_trace": len(rows) / max(1, len(traces)),
        "M_mean": statistics.fmean(ms) if ms else None,
        "M_quantiles": statistics.quantiles(ms, n=4) if len(ms) >= 2 else ms,
        "M_histogram_0.1": hist,
        "M_mean_by_type": {k: statistics.fmean(v) for k, v in sorted(by_type.items())},
        "thoughts_by_type": {k: len(v) for k, v in sorted(by_type.items())},
        "accuracy_full_prefix": statistics.fmean(r["accuracy"] for r in rows if r["index"] == r["n_thoughts"] - 1) if rows else None,
        "accuracy_prefix0": statistics.fmean(r["accuracy_prefix0"] for r in rows if r["index"] == 0) if rows else None,
        "rollouts_cut": sum(r["rollouts_cut"] or 0 for r in rows),  # continuations that hit analysis.max_tokens (graded wrong)
    }


def analyze(recipe: Recipe, show_progress: bool = True) -> dict[str, Any]:
    """Run the whole stage; returns the summary (also written to `summary.json`/`summary.md`)."""
    from tqdm import tqdm

    from longshort.engines import make_engine
    from longshort.models import check_model_dir, resolve_base

    cfg = recipe.analysis
    run_dir = open_run(recipe, OUTPUTS)
    # chunks and rollouts of an earlier run are reused only if made with the same settings (else a one-line error)
    claim(run_dir / SETTINGS, resume_settings(recipe), recipe.run.resume)

    source = trace_source(recipe)
    rejects = Rejects()
    traces = read_traces(source, recipe.data.on_error, rejects, limit=cfg.max_traces, fields=recipe.data.fields,
                         split=recipe.data.split)
    rejects.write(run_dir / "rejects.jsonl")
    if not traces:
        raise UserError(f"{source}: no usable traces")

    model = (check_model_dir(Path(cfg.model), "analysis.model", recipe.model.trust_remote_code) if cfg.model
             else resolve_base(recipe.model.base, run_dir, recipe.model.tiny, recipe.run.seed,
                               chat_template=recipe.model.chat_template))
    adapters = {REASONER_ROLE: cfg.adapter} if cfg.adapter else None
    engine = make_engine(recipe.engine.kind, str(model), recipe.engine, adapters, seed=recipe.run.seed)
    try:
        chunked, chunk_counts = chunk_all(recipe, traces, engine, run_dir / "chunks.jsonl")
        settings = RolloutSettings(
            n=cfg.rollouts, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
            batch_traces=cfg.batch_traces, require_boxed=cfg.require_boxed, role=REASONER_ROLE if cfg.adapter else None, system=recipe.roles.long.system_prompt if cfg.system_prompt is None else cfg.system_prompt,
            max_model_len=recipe.engine.max_model_len, seed=recipe.run.seed, seeded=cfg.seeded,
        )
        with tqdm(total=len(chunked), desc="rollouts (traces)", disable=not show_progress) as bar:
            records, roll_counts = run_rollouts(engine, chunked, settings, run_dir / "rollouts.jsonl", bar.update)
        rows = thought_rows(recipe, engine.tokenizer, chunked, records)
    finally:
        engine.close()
    write_jsonl(run_dir / "thoughts.jsonl", rows)
    counts = {"source": str(source), "traces_in": len(traces), "rejected_rows": len(rejects), "model": str(model), **chunk_counts, **roll_counts}
    summary = summarize(rows, counts)
    write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "summary.md", "# analyze\n\n```json\n" + json.dumps(summary, indent=2) + "\n```\n")
    return summary
