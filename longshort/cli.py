"""`longshort <command> ...`: one subcommand per stage. Command modules import heavy libraries lazily."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from longshort.errors import UserError

# (command, module under longshort.commands, one-line help)
COMMANDS = [
    ("config", "config", "Show a resolved recipe or document its keys."),
    ("data", "data", "Prepare data: real benchmarks, the synthetic long-CoT task."),
    ("grade", "grade", "Grade predictions against gold answers (adds `correct`)."),
    ("model", "model", "Build the tiny model or materialise SmolLM2-135M offline."),
    ("infer", "infer", "Run one protocol on one problem and print the episode."),
    ("eval", "eval", "Evaluate a protocol on benchmarks: accuracy, tokens, budgets."),
    ("budget", "budget", "Nominal B_seq and B_total of a protocol from its token caps, before anything runs."),
    ("analyze", "analyze", "Thought analysis: chunk traces, Monte-Carlo prefix rollouts, importance scores."),
    ("coldstart", "coldstart", "Synthesize per-role cold-start SFT data from scored thoughts."),
    ("sft", "sft", "Supervised fine-tuning of one role (LoRA or full), resumable."),
    ("export", "export", "Export verified adapters, merged models and a manifest."),
    ("serve", "serve", "Serve an exported bundle over OpenAI-compatible HTTP (chat completions)."),
    ("chat", "chat", "Ask an exported bundle questions from the terminal or a pipe."),
    ("rl", "rl", "Synergy-oriented multi-turn RL of both roles on Ray."),
    ("pipeline", "pipeline", "Run the whole Long⊗Short pipeline and write the report card."),
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    from longshort import __version__

    parser = argparse.ArgumentParser(prog="longshort", description="Long⊗Short co-reasoning and improvement operators.")
    parser.add_argument("--version", action="version", version=f"longshort {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    modules = {}
    for name, mod, help_ in COMMANDS:
        module = importlib.import_module(f"longshort.commands.{mod}")
        p = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(modules[args.command].run(args) or 0)
    except UserError as e:
        print(f"longshort {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `longshort ... | head`
        return 0
    except KeyboardInterrupt:
        print(f"longshort {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
