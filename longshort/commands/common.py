"""Arguments shared by the recipe-driven commands."""

from __future__ import annotations

import argparse
import math

from longshort.config import Recipe, load_recipe


def add_recipe_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--recipe", "--config", dest="recipe", required=required, help="YAML recipe (see recipes/); --config is the same flag.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Recipe overrides, dotted keys (sft.lr=1e-4).")


def recipe_from(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.recipe, args.overrides)


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
