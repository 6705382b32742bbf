"""`longshort budget --protocol P [--recipe R] [--schedule 8,4,1] ...`: nominal B_seq and B_total from the caps.

Nothing runs and no model is loaded: the numbers follow from the protocol's steps and each call's token cap
(longshort/budget.py, docs/protocols.md "Budgets"). Values default from the recipe (`protocol.*`, `roles.*`);
the flags override them. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from longshort.commands.common import add_recipe_arguments
from longshort.config.core import ProtocolConfig

DISTILL_MODES = typing.get_args(typing.get_type_hints(ProtocolConfig)["pdr_distill"])  # the config's own list


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", help="long_cot, sr, pdr or long_short (default: the recipe's protocol.name).")
    p.add_argument("--max-tokens", metavar="T", help="Thinking budget of one long_cot/sr/pdr call (protocol.max_tokens).")
    p.add_argument("--answer-buffer", metavar="A",
                   help="Tokens a call may write after its thinking budget (default 0: the engine's cap is the whole call).")
    p.add_argument("--rounds", metavar="N", help="sr: refinement rounds after the first solution (protocol.sr_rounds).")
    p.add_argument("--error-analysis", action=argparse.BooleanOptionalAction, default=None,
                   help="sr: an error-analysis call before each refinement (protocol.sr_error_analysis).")
    p.add_argument("--schedule", metavar="M1,M2,...", help="pdr: parallel calls per round, ending in 1 (protocol.pdr_schedule).")
    p.add_argument("--distill", metavar="MODE", help=f"pdr: {', '.join(DISTILL_MODES)} (protocol.pdr_distill).")
    p.add_argument("--kappa", metavar="K", help="pdr: workspace bound κ, the cap of a summary call (protocol.pdr_kappa).")
    p.add_argument("--max-turns", metavar="N", help="long_short: most turns per episode (protocol.max_turns).")
    p.add_argument("--long-max-tokens", metavar="L", help="long_short: cap of a long turn (roles.long.max_tokens).")
    p.add_argument("--short-max-tokens", metavar="S", help="long_short: cap of a short turn (roles.short.max_tokens).")
    add_recipe_arguments(p, required=False)


def count(flag: str, value: str, low: int = 1) -> int:
    """A whole-number flag >= `low`, else a UserError naming the flag."""
    from longshort.config.loader import MAX_INT
    from longshort.errors import UserError

    try:
        n = int(value.strip())
    except ValueError:
        n = None
    if n is None or not low <= n <= MAX_INT:
        raise UserError(f"{flag}: expected a whole number >= {low}, got {value!r}")
    return n


def schedule(value: str) -> list[int]:
    """`8,4,1` (or `[8,4,1]`): positive whole numbers ending in 1."""
    from longshort.errors import UserError

    parts = [v.strip() for v in value.strip().strip("[]").split(",")]
    try:
        out = [int(v) for v in parts]
    except ValueError:
        out = []
    if not out or min(out) < 1 or out[-1] != 1:
        raise UserError(f"--schedule: expected positive whole numbers separated by commas, ending in 1 (e.g. 8,4,1), got {value!r}")
    return out


def run(args: argparse.Namespace) -> int:
    from longshort.budget import PROTOCOL_NAMES, nominal, table
    from longshort.config import load_recipe
    from longshort.errors import UserError

    recipe = load_recipe(args.recipe, args.overrides)
    protocol = args.protocol or recipe.protocol.name
    if protocol not in PROTOCOL_NAMES:
        raise UserError(f"--protocol: unknown protocol {protocol!r} (choose from {', '.join(PROTOCOL_NAMES)})")
    p: dict[str, object] = {}
    if args.max_tokens is not None:
        p["max_tokens"] = count("--max-tokens", args.max_tokens)
    if args.rounds is not None:
        p["sr_rounds"] = count("--rounds", args.rounds, low=0)
    if args.error_analysis is not None:
        p["sr_error_analysis"] = args.error_analysis
    if args.schedule is not None:
        p["pdr_schedule"] = schedule(args.schedule)
    if args.distill is not None:
        if args.distill not in DISTILL_MODES:
            raise UserError(f"--distill: unknown mode {args.distill!r} (choose from {', '.join(DISTILL_MODES)})")
        p["pdr_distill"] = args.distill
    if args.kappa is not None:
        p["pdr_kappa"] = count("--kappa", args.kappa)
    if args.max_turns is not None:
        p["max_turns"] = count("--max-turns", args.max_turns)
    buffer = count("--answer-buffer", args.answer_buffer, low=0) if args.answer_buffer is not None else 0
    roles = recipe.roles
    for role, flag, value in (("long", "--long-max-tokens", args.long_max_tokens), ("short", "--short-max-tokens", args.short_max_tokens)):
        if value is not None:
            roles = dataclasses.replace(roles, **{role: dataclasses.replace(getattr(roles, role), max_tokens=count(flag, value))})
    result = nominal(protocol, dataclasses.replace(recipe.protocol, **p), roles, buffer)
    print(table(result))
    print(json.dumps(result))
    return 0
