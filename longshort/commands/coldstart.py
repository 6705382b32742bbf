"""`longshort coldstart --recipe R [key=value ...]`: per-role cold-start SFT data from scored thoughts."""

from __future__ import annotations

import argparse
import json

from longshort.commands.common import add_recipe_arguments, add_run_arguments, recipe_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from longshort.analysis.coldstart import coldstart

    recipe = recipe_from(args)
    stats = coldstart(recipe)
    print(json.dumps(stats, indent=2))
    print(f"wrote {recipe.run_dir / 'long.jsonl'}, {recipe.run_dir / 'short.jsonl'}, {recipe.run_dir / 'stats.json'}")
    return 0
