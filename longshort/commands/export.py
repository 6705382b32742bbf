"""`longshort export --run RUN_DIR [--run RUN_DIR2] --out DIR`: verified adapters, merged models, model cards, manifest."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from longshort.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", action="append", required=True, metavar="RUN_DIR",
                   help="A finished `longshort sft` run directory (repeat: one per role), or one finished `longshort rl` "
                        "run directory (both roles' final adapters).")
    p.add_argument("--out", required=True, help="Export folder (written as OUT.partial, renamed when verified).")
    p.add_argument("--skip-vllm-check", action="store_true",
                   help="Do not check that vLLM loads and runs the merged models (machines without vLLM).")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="After verification, upload OUT to this private Hub repo; the token comes from $HF_TOKEN.")


def run(args: argparse.Namespace) -> int:
    if args.push_to_hub and not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise UserError("--push-to-hub needs a token in the environment (HF_TOKEN)")
    from longshort.export import Exporter, push_to_hub, read_runs

    out = Path(args.out)
    manifest = Exporter(read_runs(args.run), out, vllm_check=not args.skip_vllm_check).export()
    for role, entry in manifest["roles"].items():
        print(f"{out}/{role}: {entry['mode']}, merged max |dlogit| {entry['verify']['merged_max_abs_logit_diff']:.2e}, "
              f"vllm {'ok' if isinstance(entry['verify']['vllm'], dict) else 'skipped'}")
    print(f"{out}/manifest.json")
    if args.push_to_hub:
        print(push_to_hub(out, args.push_to_hub))
    return 0
