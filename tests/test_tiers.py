"""The test tiers (tests/conftest.py derives one per test; `make test-fast` = -m unit, `make test-integration` =
-m "unit or integration"): `-m unit`, `-m integration` and `-m slow` split the suite into three non-empty parts, so
every test is in exactly one tier. Collection only, in one subprocess: the suite's imports are paid once, then the
four `pytest --collect-only -q [-m TIER]` runs reuse them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "slow")

# Each run records the node ids that survive `-m` (session.items after deselection) and its exit status.
COLLECT = r"""
import json, sys
import pytest

class Selected:
    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]

tests, runs = sys.argv[1], {}
for expr in sys.argv[2:]:
    rec = Selected()
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *(["-m", expr] if expr else []), tests], plugins=[rec])
    runs[expr] = {"rc": int(rc), "ids": getattr(rec, "ids", [])}
print("TIERS " + json.dumps(runs))
"""


def test_every_test_is_in_exactly_one_tier():
    proc = subprocess.run([sys.executable, "-c", COLLECT, str(REPO / "tests"), *TIERS, ""], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("TIERS ")), None)
    assert proc.returncode == 0 and line, (proc.stdout[-3000:], proc.stderr[-3000:])
    runs = json.loads(line[len("TIERS "):])
    assert {expr: r["rc"] for expr, r in runs.items()} == {expr: 0 for expr in (*TIERS, "")}, proc.stdout[-3000:]
    total = runs[""]["ids"]
    tiers = {t: runs[t]["ids"] for t in TIERS}
    counts = {t: len(ids) for t, ids in tiers.items()}
    assert all(counts.values()), counts  # no tier is empty
    # exactly one tier each: no test in two tiers, none in no tier, and the counts add up to the whole suite
    seen = Counter(i for ids in tiers.values() for i in ids)
    twice = sorted(i for i, n in seen.items() if n > 1)
    none = sorted(set(total) - set(seen))
    assert not twice and not none, {"in two tiers": twice[:10], "in no tier": none[:10]}
    assert sum(counts.values()) == len(total) == len(set(total)), (counts, len(total))
