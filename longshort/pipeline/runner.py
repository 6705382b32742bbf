"""Run the plan: each stage once, cached by fingerprint, resumed after a crash, then the report card.

A stage directory holds `stage.json` (written last, atomically) when the stage finished: its fingerprint and
summary. On a rerun a stage whose `stage.json` carries the current fingerprint is skipped. A stage directory
without it is an interrupted attempt: `attempt.json` says which fingerprint it was working on; the same
fingerprint resumes (every stage's entry point is resumable), another one starts the stage afresh.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

from longshort.io import write_json
from longshort.pipeline.plan import Plan, Stage
from longshort.pipeline.stages import RUNNERS

DONE, ATTEMPT = "stage.json", "attempt.json"


def _read(path: Any) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cached(stage: Stage) -> dict[str, Any] | None:
    """The stage's finished record if it matches the current fingerprint."""
    rec = _read(stage.dir / DONE)
    return rec if rec and rec.get("fingerprint") == stage.fingerprint and rec.get("status") == "done" else None


def prepare(stage: Stage) -> str:
    """Make the stage directory ready for an attempt; say whether it starts fresh or resumes."""
    d = stage.dir
    attempt = _read(d / ATTEMPT)
    if d.exists() and (attempt is None or attempt.get("fingerprint") != stage.fingerprint or stage.recipe.run.resume == "never"):
        # Outputs of another configuration (or of a finished stage whose recipe changed): never mix them in.
        shutil.rmtree(d)
    how = "resume" if d.exists() else "fresh"
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / ATTEMPT, {"fingerprint": stage.fingerprint, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return how


def one_line(name: str, summary: dict[str, Any]) -> str:
    """A stage's summary in one line for the console."""
    if "skipped" in summary:
        return f"skipped: {summary['skipped']}"
    keys = {
        "base": ("model_type", "hidden_size", "layers"), "data": ("train", "test"),
        "reasoner": ("steps", "first_loss", "final_loss"), "sft_long": ("steps", "first_loss", "final_loss"),
        "sft_short": ("steps", "first_loss", "final_loss"), "analyze": ("traces_scored", "thoughts", "M_mean"),
        "coldstart": ("traces_out", "important_share", "turns_per_transcript", "compression_ratio"), "rl": ("steps",),
    }.get(name)
    if name in ("eval", "benchmarks"):
        rows = summary.items() if name == "eval" else ((f"{s}/{b}", r) for s, v in summary.items() for b, r in v.items())
        return "; ".join(f"{s} acc {r['accuracy']:.2f} tok {r['tokens_per_problem']:.0f}" for s, r in rows)
    if name in ("rl", "rl_length"):
        last = summary.get("last", {})
        return f"steps {summary['steps']}, last: acc {last.get('accuracy', float('nan')):.2f}, tokens {last.get('tokens', float('nan')):.0f}"
    if name == "export":
        return f"{summary['out']} (" + ", ".join(f"{r}: vllm {v['vllm']}" for r, v in summary["roles"].items()) + ")"
    parts = []
    for k in keys or ():
        v = summary.get(k)
        if v is not None:
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


def run_plan(plan: Plan, progress: bool = True, log: Any = None, until: str | None = None) -> dict[str, Any]:
    """Run every stage in order (skipping cached ones), then write the report card; return the report.
    With `until`, stop after that stage and return the stage records instead (no report card)."""
    from longshort.pipeline.report import write_report

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    n = len(plan.stages)
    for i, (name, stage) in enumerate(plan.stages.items(), 1):
        rec = cached(stage)
        if rec:
            log(f"[{i}/{n}] {name}: cached ({rec['seconds']:.0f} s when it ran) - {one_line(name, rec['summary'])}")
        else:
            how = prepare(stage)
            log(f"[{i}/{n}] {name}: {'resuming' if how == 'resume' else 'running'} in {stage.dir}")
            t0 = time.perf_counter()
            summary = RUNNERS[name](plan, stage, progress)
            rec = {"stage": name, "status": "done", "fingerprint": stage.fingerprint, "seconds": time.perf_counter() - t0,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary}
            write_json(stage.dir / DONE, rec)
            log(f"[{i}/{n}] {name}: done in {rec['seconds']:.0f} s - {one_line(name, summary)}")
        records[name] = rec
        if name == until:
            return records
    report = write_report(plan, records)
    log(f"report card: {plan.run_dir / 'report.md'} (+ report.json, *.png, viewer.html)")
    return report
