"""Run the plan: each stage once, cached by fingerprint, resumed after a crash, then the report card.

A stage directory holds `stage.json` (written last, atomically) when the stage finished: its fingerprint and
summary. On a rerun a stage whose `stage.json` carries the current fingerprint is skipped. A stage directory
without it is an interrupted attempt: `attempt.json` says which fingerprint it was working on; the same
fingerprint resumes (every stage's entry point is resumable), another one starts the stage afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from typing import Any

from longshort.io import write_json
from longshort.pipeline.inputs import Input, check_inputs, inputs
from longshort.pipeline.plan import RL_STAGES, Plan, Stage, sealed
from longshort.pipeline.report import write_report
from longshort.pipeline.stages import RUNNERS, one_line

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


def status(stage: Stage) -> str:
    """What a run would do with the stage: `cached`, `resume` (an interrupted attempt at this fingerprint) or `run`."""
    if cached(stage):
        return "cached"
    attempt = _read(stage.dir / ATTEMPT)
    return "resume" if attempt and attempt.get("fingerprint") == stage.fingerprint and stage.recipe.run.resume == "auto" else "run"


def dry_run(plan: Plan) -> list[str]:
    """`--dry-run`: per stage what a run would do and why, and where each of its inputs is; nothing runs."""
    lines, n = [], len(plan.stages)
    by_stage: dict[str, list[Input]] = {}
    for i in inputs(plan):
        by_stage.setdefault(i.stage, []).append(i)
    for k, (name, stage) in enumerate(plan.stages.items(), 1):
        what = status(stage)
        why = {"cached": "stage.json has this fingerprint", "resume": "an interrupted attempt at this fingerprint"}.get(what)
        if why is None:
            done = _read(stage.dir / DONE)
            why = "never ran" if done is None else "its recipe or an upstream stage changed"
        lines.append(f"[{k}/{n}] {name}: {'would run' if what == 'run' else 'would resume' if what == 'resume' else 'cached'}"
                     f" ({why}; fingerprint {stage.fingerprint}) in {stage.dir}")
        for i in by_stage.get(name, []):
            lines.append(f"      {i.key}: {i.where}" + (f" (from stage {i.made_by})" if i.made_by else " (given)"))
    return lines


def run_plan(plan: Plan, progress: bool = True, log: Any = None, until: str | None = None) -> dict[str, Any]:
    """Run every stage in order (skipping cached ones), then write the report card; return the report.
    With `until`, stop after that stage and return the stage records instead (no report card).
    Every input no stage makes is checked first (`check_inputs`): a missing one stops before any work."""
    check_inputs(plan)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    n = len(plan.stages)
    ray_held = False
    with contextlib.ExitStack() as held:
        for i, (name, stage) in enumerate(plan.stages.items(), 1):
            rec = cached(stage)
            if rec:
                log(f"[{i}/{n}] {name}: cached ({rec['seconds']:.0f} s when it ran) - {one_line(name, rec['summary'])}")
            else:
                how = prepare(stage)
                log(f"[{i}/{n}] {name}: {'resuming' if how == 'resume' else 'running'} in {stage.dir}")
                if name in RL_STAGES and not ray_held:
                    from longshort.rl.pool import shared_ray  # imports Ray: only for a plan that runs RL

                    held.enter_context(shared_ray())  # one local Ray for the RL stages, not one each
                    ray_held = True
                t0 = time.perf_counter()
                # the stage runs on its recipe with the sections its fingerprint does not cover sealed (plan.py)
                summary = RUNNERS[name](plan, dataclasses.replace(stage, recipe=sealed(stage.recipe, name)), progress)
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
