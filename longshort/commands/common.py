"""Arguments shared by the recipe-driven commands."""

from __future__ import annotations

import argparse
import math

from longshort.config import Recipe, load_recipe


def add_recipe_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--recipe", "--config", dest="recipe", required=required, help="YAML recipe (see recipes/); --config is the same flag.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Recipe overrides, dotted keys (sft.lr=1e-4).")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that work in a run directory (sft, rl, analyze, coldstart, pipeline): shorthands for
    `run.*` keys, applied after the key=value overrides (`apply_run_arguments`), so a flag wins."""
    p.add_argument("--out", metavar="DIR", help="Run directory (sets run.out_dir and run.name; default <run.out_dir>/<run.name>).")
    p.add_argument("--seed", type=int, help="Global seed (run.seed).")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="Continue from what the run directory holds (run.resume=auto, the default); --no-resume starts over.")


def apply_run_arguments(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """`add_run_arguments`' flags set on the loaded recipe: attributes, not override strings, so a directory named
    `2024` or `yes` stays a string (YAML would read a number, a boolean)."""
    from pathlib import Path

    from longshort.config.loader import MAX_INT
    from longshort.errors import UserError

    if args.out is not None:
        if not args.out.strip():
            raise UserError("--out: empty path")
        out = Path(args.out)
        out = out.resolve() if out.name in ("", ".", "..") else out  # `--out .`: the folder's own name
        recipe.run.out_dir, recipe.run.name = str(out.parent), out.name
    if args.seed is not None:
        recipe.run.seed = int(finite("--seed", args.seed, 0, MAX_INT))  # type: ignore[arg-type]
    if args.resume is not None:
        recipe.run.resume = "auto" if args.resume else "never"
    return recipe


def recipe_from(args: argparse.Namespace) -> Recipe:
    return apply_run_arguments(load_recipe(args.recipe, args.overrides), args)


def finite(flag: str, value: float | None, low: float = 0.0, high: float = math.inf) -> float | None:
    """A number flag within [low, high] (`float()` accepts nan and inf, so argparse alone lets them through)."""
    from longshort.errors import UserError

    if value is not None and not (math.isfinite(value) and low <= value <= high):
        bounds = f">= {low:.10g}" if high == math.inf else f"in [{low:.10g}, {high:.10g}]"
        raise UserError(f"{flag}: expected a finite number {bounds}, got {value}")
    return value


def text_arg(flag: str, value: str) -> str:
    """A text flag (a problem, an answer) that must say something and be encodable (a lone surrogate, as a
    mis-encoded shell argument gives, would crash the tokenizer)."""
    from longshort.errors import UserError

    if not value.strip():
        raise UserError(f"{flag}: empty text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{flag}: not valid text (character {e.object[e.start]!r} at {e.start} cannot be encoded)") from None
    return value


def name_list(flag: str, value: str, choices: tuple[str, ...] | None = None) -> list[str]:
    """A comma-separated flag (`--protocol long_cot,sr`): at least one name, each one of `choices` if given."""
    from longshort.errors import UserError

    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"{flag}: {value!r} names nothing")
    bad = [n for n in names if choices is not None and n not in choices]
    if bad:
        raise UserError(f"{flag}: unknown {flag.lstrip('-')} {bad[0]!r} (choose from {', '.join(choices or ())})")
    return names
