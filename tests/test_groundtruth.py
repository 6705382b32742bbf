"""The synthetic generator's ground truth against the rule chunker and the cold-start selection."""

from __future__ import annotations

import pytest

from longshort.analysis.chunk import chunk_rule
from longshort.analysis.coldstart import select
from longshort.analysis.groundtruth import check, label
from longshort.config.synthetic import SyntheticConfig
from longshort.data.synthetic import ESSENTIAL_KINDS, generate
from longshort.data.traces import Trace


@pytest.fixture(scope="module")
def chunked():
    rows = generate(200, 3, SyntheticConfig(min_ops=2, max_ops=4))
    out = []
    for i, r in enumerate(rows):
        c = chunk_rule(Trace(f"t{i}", r["problem"], r["answer"], r["response"]))
        out.append((f"t{i}", r, c))
    return out


def test_rule_chunker_sees_the_generator_steps_and_never_mixes_kinds(chunked):
    for tid, row, c in chunked:
        assert len(c.steps) == len(row["step_kinds"])  # one chunker step per generator step
        for t in c.thoughts:
            span = row["step_kinds"][t.start : t.end + 1]
            essential = [k in ESSENTIAL_KINDS for k in span]
            assert all(essential) or (len(span) == 1 and not essential[0]), span  # redundant steps are thoughts of their own


def _rows(chunked, score):
    return [{"trace_id": tid, "index": t.index, "steps": [t.start, t.end], "M": score(row["step_kinds"], t)}
            for tid, row, c in chunked for t in c.thoughts]


def test_precision_and_recall_of_a_selection(chunked):
    kinds = {tid: row["step_kinds"] for tid, row, _ in chunked}
    oracle = _rows(chunked, lambda k, t: float(label({"steps": [t.start, t.end]}, k)[1]))
    by_trace: dict[str, list] = {}
    for r in oracle:
        by_trace.setdefault(r["trace_id"], []).append(r)
    keep = {(tid, r["index"]): m for tid, th in by_trace.items() for r, m in zip(th, select(th, "threshold", 0.5, 0, False))}
    res = check(oracle, kinds, keep)
    assert res["precision"] == 1.0 and res["recall"] == 1.0 and res["unlabelled_thoughts"] == 0
    assert res["by_kind"]["add"]["mean"] == 1.0 and res["by_kind"]["verify"]["mean"] == 0.0
    assert res["by_kind"]["verify"]["essential"] is False and res["by_kind"]["start"]["essential"] is True
    # keeping only each trace's first thought misses most essential thoughts
    first = {(tid, r["index"]): r["index"] == 0 for tid, th in by_trace.items() for r in th}
    res = check(oracle, kinds, first)
    assert res["recall"] < 0.6
    assert res["confusion"]["kept_essential"] + res["confusion"]["kept_redundant"] == len(by_trace)


def test_first_thoughts_kept_by_rule_are_told_apart_from_the_scores_choices(chunked):
    kinds = {tid: row["step_kinds"] for tid, row, _ in chunked}
    oracle = _rows(chunked, lambda k, t: float(label({"steps": [t.start, t.end]}, k)[1]))
    by_trace: dict[str, list] = {}
    for r in oracle:
        by_trace.setdefault(r["trace_id"], []).append(r)
    keep, forced = {}, set()
    for tid, th in by_trace.items():
        for r, kept, scored in zip(th, select(th, "threshold", 0.5, 0, True), select(th, "threshold", 0.5, 0, False)):
            keep[(tid, r["index"])] = kept
            if kept and not scored:
                forced.add((tid, r["index"]))
    res = check(oracle, kinds, keep, forced=frozenset(forced))
    assert forced and res["forced_kept"] == len(forced) == res["forced_redundant"]  # opening restatements
    assert res["precision"] < 1.0 and res["precision_scored"] == 1.0 and res["recall"] == 1.0
    lo, hi = res["precision_ci"]
    assert lo < res["precision"] < hi
