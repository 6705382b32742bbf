"""Intervals and paired tests for the numbers a report claims: n, a 95% interval, and a p-value per comparison.

Accuracies get a Wilson score interval (correct near 0 and 1, where the normal interval is not); paired
accuracy differences over the same problems get an exact McNemar test and a paired-bootstrap interval; mean
token differences get a paired-bootstrap interval. Pure Python: the report card needs no numpy.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion; (nan, nan) for n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds at 0 and n are exactly 0 and 1 (the formula leaves rounding residue there)
    return (0.0 if successes <= 0 else max(0.0, centre - half), 1.0 if successes >= n else min(1.0, centre + half))


def mean_ci(xs: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """95% normal interval of a mean; (nan, nan) below two values."""
    if len(xs) < 2:
        return (math.nan, math.nan)
    mean = sum(xs) / len(xs)
    half = z * math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))
    return (mean - half, mean + half)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of paired outcomes (same problems in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], reps: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean of b − a over paired items and its 95% percentile-bootstrap interval (resampling items)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan, (math.nan, math.nan)
    diffs = [y - x for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return sum(diffs) / n, (means[int(0.025 * reps)], means[min(reps - 1, int(0.975 * reps))])
