"""`longshort config show RECIPE [key=value ...]` (or `--recipe/--config RECIPE`) and `longshort config keys [SECTION]`."""

from __future__ import annotations

import argparse

from longshort.config import Recipe, dump_yaml, load_recipe
from longshort.config.loader import defaults, describe
from longshort.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="<action>")
    show = sub.add_parser("show", help="Print the resolved recipe as YAML.")
    show.add_argument("recipe", nargs="?", help="YAML recipe file (or --recipe / --config).")
    show.add_argument("--recipe", "--config", dest="recipe_flag", metavar="RECIPE", help="YAML recipe file.")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    keys = sub.add_parser("keys", help="List every recipe key with its type, default and meaning.")
    keys.add_argument("section", nargs="?", help="Only the keys of this section (e.g. `sft`, `analysis`, `roles.long`).")


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        recipe, overrides = args.recipe, list(args.overrides)
        if args.recipe_flag:
            if recipe and "=" not in recipe:
                raise UserError("give the recipe once: as an argument or as --recipe/--config")
            overrides = ([recipe] if recipe else []) + overrides  # `--config R k=v`: the first positional is an override
            recipe = args.recipe_flag
        if not recipe:
            raise UserError("config show needs a recipe: longshort config show RECIPE (or --recipe RECIPE)")
        print(dump_yaml(load_recipe(recipe, overrides)), end="")
        return 0
    rows = describe(Recipe)
    if args.section:
        rows = [r for r in rows if r[0] == args.section or r[0].startswith(args.section.rstrip(".") + ".")]
        if not rows:
            sections = sorted({k.split(".")[0] for k, _, _ in describe(Recipe)})
            raise UserError(f"no recipe keys under {args.section!r}; sections: {', '.join(sections)}")
    default = defaults(Recipe)
    for key, tp, help_ in rows:
        shown = repr(default[key]) if key in default else "-"
        print(f"{key:36s} {tp:28s} {shown:14s} {help_}")
    return 0
