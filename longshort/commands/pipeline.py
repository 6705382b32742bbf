"""`longshort pipeline --recipe R [--quick] [--dry-run | --check] [key=value ...]`: the whole Long⊗Short pipeline and its report card."""

from __future__ import annotations

import argparse
import json
import os
import sys

from longshort.commands.common import add_recipe_arguments, add_run_arguments, apply_run_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    add_run_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help="Smoke scale: apply the recipe's `pipeline.quick` overrides, write to `<run.name>-quick`.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars (one line per stage only).")
    p.add_argument("--dry-run", action="store_true",
                   help="Run nothing: check every input, then print per stage whether it would run or is cached "
                        "(its fingerprint against <stage>/stage.json) and where each of its inputs is.")
    p.add_argument("--until", metavar="STAGE", default=None,
                   help="Stop after this stage (e.g. coldstart); later stages and the report card are not run.")
    p.add_argument("--check", action="store_true",
                   help="Run nothing: check the resolved plan against the recipe's `# cluster/model/budget:` lines "
                        "(GPUs, CPUs, batch splits, contexts, memory in the resolved dtypes); exit 2 on a problem.")


def check(args: argparse.Namespace) -> int:
    """`--check`: the resource plan of the recipe, as `longshort pipeline` would resolve it; nothing runs."""
    from longshort.config import load_recipe
    from longshort.config.pipeline import quick_overrides
    from longshort.pipeline.check import run_checks
    from longshort.pipeline.plan import make_plan

    overrides = (quick_overrides(args.recipe) if args.quick else []) + list(args.overrides)
    result = run_checks(make_plan(apply_run_arguments(load_recipe(args.recipe, overrides), args), args.recipe), args.recipe)
    for line in result["skipped"]:
        print(f"longshort pipeline --check: skipped: {line}", file=sys.stderr)
    for line in result["problems"]:
        print(f"longshort pipeline --check: {args.recipe}: {line}", file=sys.stderr)
    print(json.dumps({"recipe": args.recipe, "quick": args.quick, "problems": len(result["problems"]), **result["estimates"]}))
    return 2 if result["problems"] else 0


def run(args: argparse.Namespace) -> int:
    if args.check:
        return check(args)
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
    recipe = apply_run_arguments(load_recipe(args.recipe, overrides), args)  # --out wins over --quick's run.name
    plan = make_plan(recipe, where)
    if args.dry_run:
        from longshort.pipeline.inputs import check_inputs
        from longshort.pipeline.runner import dry_run

        check_inputs(plan)
        print("\n".join(dry_run(plan)))
        return 0
    if args.until is not None and args.until not in plan.stages:
        print(f"longshort pipeline: error: --until {args.until!r} is no stage of this plan: {', '.join(plan.stages)}", file=sys.stderr)
        return 2
    try:
        report = run_plan(plan, progress=not args.no_progress, until=args.until)
    except (SyncError, WorkerLost) as e:  # the RL stage stopped on a runtime fault: a rerun resumes it
        print(f"longshort pipeline: error: {e}", file=sys.stderr)
        return 3
    if args.until is not None:
        print(json.dumps({"run_dir": str(plan.run_dir), "until": args.until}))
        return 0
    head = report["headline"]
    print(json.dumps({"run_dir": str(plan.run_dir), "report": str(plan.run_dir / "report.md"),
                      **{k: head[k] for k in ("long_short_system", "token_reduction", "accuracy_delta_points") if k in head}}))
    return 0
