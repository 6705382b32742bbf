"""`longshort sft --recipe R [key=value ...]`: train one role (LoRA or full) on transcripts, resumable.

Multi-GPU: `accelerate launch --num_processes N -m longshort.cli sft --recipe R` (DDP; see docs/sft.md).
"""

from __future__ import annotations

import argparse

from longshort.commands.common import add_recipe_arguments, add_run_arguments, recipe_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    add_run_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from(args)
    from longshort.sft.trainer import Trainer

    info = Trainer(recipe, progress=not args.no_progress).run()
    if info.get("metrics"):
        print(f"{recipe.run_dir}/final  role={info['role']} mode={info['mode']} "
              f"loss={info['metrics']['first_loss']:.4f}->{info['metrics']['final_loss']:.4f}")
    if info.get("rejects"):  # data.on_error=skip: what was left out is said here, not only in run.json
        print(f"{recipe.run_dir}/rejects.jsonl  {info['rejects']} rejected rows")
    return 0
