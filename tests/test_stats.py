"""Intervals and paired tests of the report card (longshort.stats), checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from longshort.stats import mcnemar_exact, paired_bootstrap, wilson


def test_wilson_matches_the_closed_form_and_stays_inside_0_1():
    lo, hi = wilson(45, 50)  # p = 0.9, n = 50: Wilson's interval (0.786, 0.957) to 3 digits
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    lo0, hi0 = wilson(0, 20)
    assert lo0 == 0.0 and 0.1 < hi0 < 0.2  # 0/20 still has a non-trivial upper bound
    assert wilson(20, 20)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_mcnemar_counts_only_the_discordant_pairs():
    a = [True] * 10 + [False] * 10
    assert mcnemar_exact(a, a) == 1.0
    # 6 pairs only a solved, 0 only b: p = 2 * 0.5**6
    b = [False] * 6 + [True] * 4 + [False] * 10
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)
    # concordant pairs do not change it
    assert mcnemar_exact(a + [True] * 50, b + [True] * 50) == pytest.approx(2 * 0.5**6)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_centres_on_the_mean_difference():
    a = [float(i) for i in range(100)]
    b = [x + 3.0 for x in a]
    mean, (lo, hi) = paired_bootstrap(a, b)
    assert mean == 3.0 and lo == hi == 3.0  # a constant difference has no spread
    noisy = [x + (5.0 if i % 2 else -1.0) for i, x in enumerate(a)]
    mean, (lo, hi) = paired_bootstrap(a, noisy)
    assert mean == pytest.approx(2.0) and lo < 2.0 < hi and hi - lo < 2.0
