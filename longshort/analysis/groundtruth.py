"""Thought analysis checked against the synthetic generator's ground truth.

The synthetic task knows the kind of every step of its traces (`step_kinds`: start, add and conclusion carry
the computation; restate, verify, alternative, doubt and recap are redundant). A scored thought spans steps
`[start, end]` of its trace; it is *essential* when any of its steps is. Against that, this module measures
what the analysis found: the mean importance M of each step kind with a 95% interval, and the precision and
recall of the thoughts the cold-start selection keeps as long turns. This check is ours, not the paper's: the
paper has no ground truth for its traces.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

from longshort.data.synthetic import ESSENTIAL_KINDS
from longshort.stats import mean_ci, wilson


def label(row: dict[str, Any], kinds: list[str]) -> tuple[str, bool]:
    """(kind, essential) of a thought row from its trace's step kinds: its first step names it."""
    a, b = row["steps"]
    span = kinds[a : b + 1]
    essential = any(k in ESSENTIAL_KINDS for k in span)
    return (next((k for k in span if k in ESSENTIAL_KINDS), span[0]) if essential else span[0]), essential


def _mean(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "mean": statistics.fmean(xs) if xs else math.nan, "ci": list(mean_ci(xs))}


def _rate(hits: int, n: int) -> tuple[float, list[float]]:
    lo, hi = wilson(hits, n) if n else (math.nan, math.nan)
    return (hits / n if n else math.nan), [lo, hi]


def check(rows: Iterable[dict[str, Any]], step_kinds: dict[str, list[str]], selected: dict[tuple[str, int], bool],
          key: str = "M", forced: frozenset[tuple[str, int]] = frozenset()) -> dict[str, Any]:
    """Per-kind M with intervals, and precision/recall of `selected` ((trace_id, index) -> kept as long).

    `forced`: thoughts kept whatever their score (`coldstart.keep_first`: a transcript opens with a long turn).
    `precision_scored` leaves them out, so the score's own choices are told apart from the protocol's rule.
    """
    by_kind: dict[str, list[float]] = {}
    tp = fp = fn = tn = 0
    forced_tp = forced_fp = 0
    unlabelled = 0
    for r in rows:
        kinds = step_kinds.get(r["trace_id"])
        if kinds is None or r["steps"][1] >= len(kinds):
            unlabelled += 1  # not a synthetic trace, or chunked differently from the generator's steps
            continue
        kind, essential = label(r, kinds)
        by_kind.setdefault(kind, []).append(float(r[key]))
        kept = selected.get((r["trace_id"], r["index"]), False)
        tp += kept and essential
        fp += kept and not essential
        fn += essential and not kept
        tn += not kept and not essential
        if kept and (r["trace_id"], r["index"]) in forced:
            forced_tp += essential
            forced_fp += not essential
    precision, precision_ci = _rate(tp, tp + fp)
    recall, recall_ci = _rate(tp, tp + fn)
    scored, scored_ci = _rate(tp - forced_tp, tp + fp - forced_tp - forced_fp)
    return {
        "precision": precision, "precision_ci": precision_ci, "recall": recall, "recall_ci": recall_ci,
        "precision_scored": scored, "precision_scored_ci": scored_ci, "forced_kept": forced_tp + forced_fp,
        "forced_redundant": forced_fp,
        "confusion": {"kept_essential": tp, "kept_redundant": fp, "dropped_essential": fn, "dropped_redundant": tn},
        "unlabelled_thoughts": unlabelled,
        "by_kind": {k: {**_mean(v), "essential": k in ESSENTIAL_KINDS} for k, v in sorted(by_kind.items())},
    }
