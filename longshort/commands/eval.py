"""`longshort eval --model DIR --protocol P --benchmarks math500,aime24 --limit N --samples K --out DIR`."""

from __future__ import annotations

import argparse
from typing import Any

from longshort.commands.common import name_list
from longshort.commands.infer import PROTOCOL_NAMES, add_model_arguments, recipe_and_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", help=f"Protocol(s), comma-separated ({', '.join(PROTOCOL_NAMES)}); default: protocol.name.")
    p.add_argument("--benchmarks", help="Comma-separated benchmarks (default: evaluation.benchmarks); with --path, any name.")
    p.add_argument("--path", help="Local JSONL/Parquet/`datasets` copy of the (single) benchmark (columns: data.fields).")
    p.add_argument("--split", help="Benchmark split (default: its test split).")
    p.add_argument("--limit", type=int, help="First N problems of each benchmark.")
    p.add_argument("--samples", type=int, help="K episodes per problem (accuracy = mean over the K).")
    p.add_argument("--batch-size", type=int, help="Episodes per protocol call; results are saved after each.")
    p.add_argument("--out", help="Output folder (default: <run dir>/eval).")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="Keep the episodes an earlier run with the same settings saved (run.resume=auto, the default); "
                        "--no-resume evaluates everything again.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.add_argument("--sweep", action="append", metavar="KEY=V1;V2;...",
                   help="Evaluate every protocol at each value of recipe key KEY (protocol.* or roles.*; quote the ';' "
                        "for the shell); repeat the flag for a grid. Writes pareto.json, pareto_bseq.png, pareto_btotal.png.")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from longshort.config.evaluation import EvalConfig
    from longshort.engines import start_engine
    from longshort.errors import ConfigError
    from longshort.eval import evaluate, load_benchmarks, out_dir, summary_markdown

    # flags first: `--protocol ,` names nothing, an error rather than the default protocol
    protocols = name_list("--protocol", args.protocol, PROTOCOL_NAMES) if args.protocol is not None else None
    benchmarks = name_list("--benchmarks", args.benchmarks) if args.benchmarks is not None else None
    recipe, model, adapters = recipe_and_model(args)
    ev = recipe.evaluation
    if protocols is not None:
        ev.protocols = protocols
    if benchmarks is not None:
        ev.benchmarks = benchmarks
    for flag, key in (("path", "path"), ("split", "split"), ("limit", "limit"), ("samples", "samples"),
                      ("batch_size", "batch_size"), ("out", "out")):
        if getattr(args, flag) is not None:
            setattr(ev, key, getattr(args, flag))
    try:  # re-validate the section with the flags applied
        EvalConfig(**vars(ev))
    except ConfigError as e:
        raise ConfigError(f"command line: {e}") from None
    if args.resume is not None:
        recipe.run.resume = "auto" if args.resume else "never"
    if args.sweep:
        return sweep(args.sweep, recipe, model, adapters)
    benches = load_benchmarks(recipe)  # every input file checked before the engine starts
    engine = start_engine(recipe, model, adapters)
    try:
        summary = evaluate(engine, recipe, model, adapters, progress=not args.no_progress, benches=benches)
    finally:
        engine.close()
    print(summary_markdown(summary, plot=False), end="")
    print(f"wrote {out_dir(recipe)}/summary.json, summary.md" + (", accuracy_vs_bseq.png" if ev.plot else ""))
    return 0


def sweep(flags: list[str], recipe: Any, model: str, adapters: dict[str, str]) -> int:
    """`--sweep`: every point checked as a recipe, and the benchmarks loaded, before the engine starts."""
    from longshort.eval import load_benchmarks, out_dir
    from longshort.sweep import PLOTS, pareto_markdown, plan, run_sweep

    points = plan(recipe, flags)
    benches = load_benchmarks(recipe)
    summary = run_sweep(recipe, points, model, adapters, benches)
    print(pareto_markdown(summary), end="")
    plots = "".join(f", {name}" for name in PLOTS.values()) if recipe.evaluation.plot else ""
    print(f"wrote {out_dir(recipe)}/pareto.json{plots} ({len(points)} points)")
    return 0
