"""`longshort analyze --recipe R [key=value ...]`: chunk traces, Monte-Carlo prefix rollouts, importance scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longshort.commands.common import add_recipe_arguments, add_run_arguments, recipe_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    add_run_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    from longshort.analysis.analyze import analyze
    from longshort.analysis.metric import resolve_delta
    from longshort.errors import ConfigError

    recipe = recipe_from(args)
    cfg = recipe.analysis
    try:  # a `module:function` delta is imported now, not after the rollouts that need it
        delta = resolve_delta(cfg.delta, cfg.delta_value)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"key 'analysis.delta': cannot load {cfg.delta!r} ({type(e).__name__}: {e})") from None
    if not callable(delta):
        raise ConfigError(f"key 'analysis.delta': {cfg.delta!r} is not a function")
    if cfg.adapter and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"key 'analysis.adapter': {cfg.adapter} is not a PEFT adapter directory (no adapter_config.json)")
    summary = analyze(recipe, show_progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    print(f"wrote {recipe.run_dir / 'thoughts.jsonl'}")
    return 0
