"""`longshort infer --model DIR --protocol P --problem "..."`: run one protocol on one problem, print the episode."""

from __future__ import annotations

import argparse
import json
from typing import Any

from longshort.commands.common import add_recipe_arguments

PROTOCOL_NAMES = ("long_cot", "long_short", "sr", "pdr")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `infer` and `eval`: the base, the role adapters, the engine. They override the recipe."""
    p.add_argument("--model", help="Base model: a local HF directory (default: the recipe's model.base).")
    p.add_argument("--long-adapter", help="PEFT LoRA directory of the long role (default: roles.long.adapter).")
    p.add_argument("--short-adapter", help="PEFT LoRA directory of the short role (default: roles.short.adapter).")
    p.add_argument("--engine", choices=["vllm", "hf"], help="Inference engine (default: engine.kind, vllm).")
    p.add_argument("--seed", type=int, help="Sampling seed (default: run.seed).")
    add_recipe_arguments(p, required=False)


def recipe_and_model(args: argparse.Namespace) -> tuple[Any, str, dict[str, str]]:
    """The recipe with the command-line flags applied, the base model directory and the adapters to serve."""
    from longshort.commands.common import finite
    from longshort.config import load_recipe
    from longshort.config.loader import MAX_INT
    from longshort.models import resolve_served

    recipe = load_recipe(args.recipe, args.overrides)
    if args.model:
        recipe.model.base = args.model
    if args.long_adapter:
        recipe.roles.long.adapter = args.long_adapter
    if args.short_adapter:
        recipe.roles.short.adapter = args.short_adapter
    if args.engine:
        recipe.engine.kind = args.engine
    if args.seed is not None:
        recipe.run.seed = int(finite("--seed", args.seed, 0, MAX_INT))  # type: ignore[arg-type]
    model, adapters = resolve_served(recipe)
    return recipe, model, adapters


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=PROTOCOL_NAMES, help="Turn protocol (default: protocol.name).")
    p.add_argument("--problem", required=True, help="The problem text.")
    p.add_argument("--answer", help="Gold answer: grade the episode's answer against it.")
    p.add_argument("--json", action="store_true", help="Print the episode as JSON instead of text.")
    add_model_arguments(p)


def format_episode(ep: Any) -> str:
    """The episode as text: each call (role, kind, tokens, finish, format, path), then answer and budgets."""
    lines = [f"problem: {ep.problem}", f"protocol: {ep.protocol}", ""]
    critical = set(ep.critical_path())
    for i, t in enumerate(ep.turns):
        flags = ("ok" if t.format_ok else "FORMAT") + ("" if t.accepted else " off-path") + (" critical" if i in critical else "")
        parent = f" <-[{t.parent}]" if t.parent >= 0 else ""
        lines.append(
            f"[{i}] {t.role:5s} {t.kind:7s}{parent} in {t.input_tokens} out {t.output_tokens} "
            f"{t.finish_reason} {flags} {t.wall_s:.2f}s"
        )
        lines += ["    " + line for line in (t.text or "").splitlines() or [""]]
    roles = ", ".join(f"{k} {v}" for k, v in ep.tokens_by_role().items())
    graded = "" if ep.correct is None or not ep.gold else f"  correct: {ep.correct} (gold {ep.gold})"
    lines += [
        "",
        f"answer: {ep.answer}{graded}",
        f"end: {ep.meta.get('end')}  turns: {len(ep.turns)}  rethinks: {ep.rethinks}  format failures: {ep.format_failures}",
        f"B_seq {ep.b_seq}  B_total {ep.b_total} ({roles})  read {ep.tokens_read}  latency {ep.latency_s:.2f}s",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from longshort.commands.common import text_arg
    from longshort.engines import start_engine
    from longshort.protocols import run_protocol

    text_arg("--problem", args.problem)
    if args.answer is not None:
        text_arg("--answer", args.answer)
    recipe, model, adapters = recipe_and_model(args)
    if args.protocol:
        recipe.protocol.name = args.protocol
    engine = start_engine(recipe, model, adapters, log_level="ERROR")  # the episode is the output
    try:
        row = {"id": "cli", "problem": args.problem, "answer": args.answer or ""}
        (ep,) = run_protocol(recipe.protocol.name, engine, [row], recipe)
    finally:
        engine.close()
    if not args.answer:
        ep.correct = None
    print(json.dumps(ep.to_dict(), ensure_ascii=False, indent=2) if args.json else format_episode(ep))
    return 0
