"""`longshort pipeline --recipe R [--quick] [key=value ...]`: the whole Long⊗Short pipeline and its report card."""

from __future__ import annotations

import argparse
import json
import os
import sys

from longshort.commands.common import add_recipe_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help="Smoke scale: apply the recipe's `pipeline.quick` overrides, write to `<run.name>-quick`.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars (one line per stage only).")


def run(args: argparse.Namespace) -> int:
    # The pipeline's console is one line per stage plus progress bars; vLLM's per-engine INFO lines would bury it.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from longshort.config import load_recipe
    from longshort.config.pipeline import quick_overrides
    from longshort.pipeline.plan import make_plan
    from longshort.pipeline.runner import run_plan
    from longshort.rl.loop import WorkerLost
    from longshort.rl.sync import SyncError

    overrides = list(args.overrides)
    where = args.recipe
    if args.quick:
        overrides = quick_overrides(args.recipe) + overrides
        where += " (--quick)"
    recipe = load_recipe(args.recipe, overrides)
    plan = make_plan(recipe, where)
    try:
        report = run_plan(plan, progress=not args.no_progress)
    except (SyncError, WorkerLost) as e:  # the RL stage stopped on a runtime fault: a rerun resumes it
        print(f"longshort pipeline: error: {e}", file=sys.stderr)
        return 3
    head = report["headline"]
    print(json.dumps({"run_dir": str(plan.run_dir), "report": str(plan.run_dir / "report.md"),
                      **{k: head[k] for k in ("long_short_system", "token_reduction", "accuracy_delta_points") if k in head}}))
    return 0
