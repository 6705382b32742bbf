"""`longshort grade --in FILE.jsonl --out FILE.jsonl`: add `correct`, `extracted` and `correct_lenient` to every row.

`correct` is the one rule of every protocol (the answer in the last \\boxed{}); `correct_lenient` (last-number
fall-backs) is reported only. docs/grading.md."""

from __future__ import annotations

import argparse
from collections import Counter

from longshort.errors import DataError, UserError
from longshort.grading import DEFAULT_TIMEOUT_S


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="inp", required=True, help="JSONL rows holding a model output and a gold answer.")
    p.add_argument("--out", required=True, help="Output JSONL: the input rows plus `correct` (bool) and `extracted`.")
    p.add_argument("--pred-key", default="prediction", help="Field with the model output (default: prediction).")
    p.add_argument("--gold-key", default="gold", help="Field with the gold answer (default: gold).")
    p.add_argument("--source-key", default="source",
                   help="Optional field naming the benchmark (gsm8k answers are reduced to a number).")
    p.add_argument("--workers", type=int, default=None, help="Grading processes (default: the CPU count, at most 8).")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="Seconds per item; an item over it is graded incorrect.")


def run(args: argparse.Namespace) -> int:
    import math

    from longshort.commands.common import finite
    from longshort.grading import extract_answer, gold_answer, grade_verdicts, malformed_answer, regrade
    from longshort.io import check_file_target, read_jsonl, write_jsonl

    finite("--timeout", args.timeout)
    if args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    check_file_target(args.out)
    rows = []
    for n, row in read_jsonl(args.inp):
        for key, types in ((args.pred_key, (str,)), (args.gold_key, (str, int, float))):
            if key not in row or row[key] is None:
                raise DataError(f"{args.inp}:{n}: missing field {key!r}")
            if isinstance(row[key], bool) or not isinstance(row[key], types):
                raise DataError(f"{args.inp}:{n}: field {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                                f"got {type(row[key]).__name__}")
        gold = row[args.gold_key]
        why = f"not a finite number ({gold})" if isinstance(gold, float) and not math.isfinite(gold) else None
        why = why or malformed_answer(gold_answer(gold))
        if why:  # a garbage gold would grade equal to the same garbage
            raise DataError(f"{args.inp}:{n}: field {args.gold_key!r}: {why}")
        source = row.get(args.source_key)
        if source is not None and not isinstance(source, str):
            raise DataError(f"{args.inp}:{n}: field {args.source_key!r} must be a string, got {type(source).__name__}")
        rows.append(row)
    if not rows:
        raise DataError(f"{args.inp}: no rows to grade")
    preds, golds = [r[args.pred_key] for r in rows], [r[args.gold_key] for r in rows]
    sources = [r.get(args.source_key) for r in rows]
    verdicts = grade_verdicts(preds, golds, sources=sources, workers=args.workers, timeout=args.timeout)
    lenient = regrade(verdicts, [extract_answer(p, s, rule="lenient") for p, s in zip(preds, sources)],
                      [gold_answer(g) for g in golds], workers=args.workers, timeout=args.timeout)
    for row, v, lv in zip(rows, verdicts, lenient):
        row["correct"], row["extracted"] = v.correct, v.extracted
        row["correct_lenient"] = lv.correct
    write_jsonl(args.out, rows)
    right, loose = sum(v.correct for v in verdicts), sum(v.correct for v in lenient)
    how = Counter(v.how for v in verdicts)
    notes = ", ".join(f"{k} {how[k]}" for k in ("no_answer", "rejected", "timeout", "error") if how[k])
    print(f"graded {len(rows)} rows: accuracy {right / len(rows):.4f} ({right} correct)"
          + (f"; {notes}" if notes else "") + f"; lenient (last number, reported only) {loose / len(rows):.4f} -> {args.out}")
    return 0
