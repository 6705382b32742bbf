"""Paired comparisons of the report card: every system was run on the same held-out problems, so each claim is
tested on those pairs — McNemar's exact test for accuracy, a paired bootstrap for the accuracy and token
differences — and every accuracy carries n and a 95% Wilson interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longshort.stats import mcnemar_exact, paired_bootstrap, wilson
from longshort.types import read_episodes

ALPHA = 0.05


def outcomes(folder: Path) -> dict[tuple[str, int], tuple[bool, int]]:
    """(problem id, sample) -> (correct, generated tokens) of every episode a system wrote under `folder`."""
    out: dict[tuple[str, int], tuple[bool, int]] = {}
    for path in sorted(folder.rglob("*.jsonl")):
        for ep in read_episodes(str(path)):
            out[(ep.problem_id, ep.meta.get("sample", 0))] = (bool(ep.correct), ep.generated_tokens)
    return out


def with_interval(row: dict[str, Any]) -> dict[str, Any]:
    """A system's summary row plus `n` (episodes) and `accuracy_ci` (95% Wilson; samples of one problem are
    counted as separate trials, which is exact for samples = 1, the recipe's setting)."""
    n = int(row["problems"]) * int(row.get("samples", 1))
    lo, hi = wilson(row["accuracy"] * n, n)
    out = {**row, "n": n, "accuracy_ci": [lo, hi]}
    if "accuracy_lenient" in row:
        out["accuracy_lenient_ci"] = list(wilson(row["accuracy_lenient"] * n, n))
    return out


def paired(a: dict[tuple[str, int], tuple[bool, int]], b: dict[tuple[str, int], tuple[bool, int]]) -> dict[str, Any]:
    """System b against system a on the episodes both have: accuracy and token differences with intervals."""
    keys = sorted(set(a) & set(b))
    ca, cb = [a[k][0] for k in keys], [b[k][0] for k in keys]
    ta, tb = [float(a[k][1]) for k in keys], [float(b[k][1]) for k in keys]
    acc, acc_ci = paired_bootstrap([float(x) for x in ca], [float(x) for x in cb])
    tok, tok_ci = paired_bootstrap(ta, tb)
    base_tokens = sum(ta) / len(ta) if ta else 0.0
    p = mcnemar_exact(ca, cb)
    return {
        "n_pairs": len(keys),
        # [only a right, only b right]: McNemar tests these alone, so with none the test has nothing to test
        "discordant": [sum(x and not y for x, y in zip(ca, cb)), sum(y and not x for x, y in zip(ca, cb))],
        "accuracy_delta_points": 100 * acc, "accuracy_delta_ci": [100 * acc_ci[0], 100 * acc_ci[1]], "mcnemar_p": p,
        "tokens_delta": tok, "tokens_delta_ci": list(tok_ci),
        # the reduction's interval treats the baseline's mean as fixed (its own sampling error is not included)
        "token_reduction": -tok / base_tokens if base_tokens else None,
        "token_reduction_ci": [-tok_ci[1] / base_tokens, -tok_ci[0] / base_tokens] if base_tokens else None,
        # with no pairs the interval is NaN, and NaN excludes 0 by every comparison: not significant
        "accuracy_significant": p < ALPHA, "tokens_significant": bool(keys) and not tok_ci[0] <= 0 <= tok_ci[1],
    }
