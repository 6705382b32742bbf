"""`longshort rl --recipe R [--ray-address ADDR] [key=value ...]`: synergy-oriented multi-turn RL of both roles on Ray."""

from __future__ import annotations

import argparse
import json
import sys

from longshort.commands.common import add_recipe_arguments, add_run_arguments, recipe_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    add_run_arguments(p)
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (HOST:PORT or `auto`); default: RAY_ADDRESS, else a new local cluster on 127.0.0.1.",
    )
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from(args)
    from longshort.rl.loop import WorkerLost, run_rl
    from longshort.rl.sync import SyncError

    try:
        summary = run_rl(recipe, ray_address=args.ray_address, progress=not args.no_progress)
    except (SyncError, WorkerLost) as e:  # the run stopped on a runtime fault: resumable, not a user error
        print(f"longshort rl: error: {e}", file=sys.stderr)
        return 3
    last = summary["last"]
    shown = {k: last[k] for k in ("step", "accuracy", "tokens", "long/reward", "short/reward") if k in last}
    print(json.dumps({"run_dir": str(recipe.run_dir), **shown}))
    return 0
