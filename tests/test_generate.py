"""`longshort data generate`: long-CoT traces sampled from a teacher, graded by the strict rule, resumable.

The teacher is the shipped tiny reasoner (data/reasoner/tiny, ~90% on the synthetic task), so some samples are kept
and some are not; it runs on the HF engine, deterministic per seed.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from longshort.analysis.sample import teacher_sampler
from longshort.data.benchmarks import load_problems
from longshort.data.generate import OUTCOMES, Sample, generate, outcome, progress_path, stats_path, trace_response
from longshort.data.synthetic import write_task
from longshort.data.traces import read_traces
from longshort.errors import UserError
from longshort.grading import grade_many
from longshort.io import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(REPO, "data", "reasoner", "tiny")
CLI = os.path.join(REPO, ".venv", "bin", "longshort")
SETTINGS = {"model": TEACHER, "engine": "hf", "temperature": 0.6, "max_tokens": 256, "seed": 0}


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    write_task(n=12, seed=3, out=out, test_fraction=0.0)
    return load_problems(out / "train.jsonl")[:3]


@pytest.fixture(scope="module")
def teacher():
    """The teacher on the HF engine, with one torch thread for the module (as `one_torch_thread`, which is
    per test and so set up after the module's runs): two threads on two shared cores stall generation 30x."""
    import torch
    from conftest import engine_config

    from longshort.engines import make_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = make_engine("hf", TEACHER, engine_config(max_model_len=2048), {}, seed=0)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


def test_one_outcome_per_sample_and_a_trace_for_a_model_that_does_not_think():
    assert outcome(Sample("<think>\n1 + 2 = 3\n</think>\n\\boxed{3}", "stop", 9), True) == "kept"
    assert outcome(Sample("<think>\n1 + 2 = 4\n</think>\n\\boxed{4}", "stop", 9), False) == "wrong"
    assert outcome(Sample("<think>\n1 + 2 = 3 so \\boxed{3}", "length", 9), True) == "truncated"  # a box, but cut off
    assert outcome(Sample("<think>\n1 + 2 = 3 so \\boxed{3}", "stop", 9), True) == "format_failed"  # no </think>
    assert outcome(Sample("1 + 2 = 3.", "stop", 9), False) == "format_failed"  # no box
    assert outcome(Sample("1 + 2 = 3, so \\boxed{3}.", "stop", 9), True) == "kept"  # no thinking: a box suffices
    assert trace_response("1 + 2 = 3, so \\boxed{3}.") == "<think>\n1 + 2 = 3, so \\boxed{3}.\n</think>\n\\boxed{3}"


def _run(teacher, problems, out, sampler=None, **kw):
    sampler = sampler or teacher_sampler(teacher, 2048, 0, 0.6, 256)
    return generate(problems, 2, sampler, out, SETTINGS, "tiny", chunk=1, progress=False, **kw)


@pytest.fixture(scope="module")
def straight(teacher, problems, tmp_path_factory):
    """An uninterrupted run: 3 problems x 2 samples, one problem per chunk."""
    out = tmp_path_factory.mktemp("straight") / "traces.jsonl"
    return out, _run(teacher, problems, out)


@pytest.mark.integration  # no fixture says so: the module's own teacher engine generates
def test_counts_add_up_and_kept_rows_grade_correct(straight, problems):
    out, stats = straight
    assert sum(stats[k] for k in OUTCOMES) == stats["samples"] == 6 and stats["sampled_now"] == 6
    assert stats["kept"] >= 1  # the reasoner solves ~90%: a run keeping nothing would test nothing
    rows = [r for _, r in read_jsonl(out)]
    assert len(rows) == stats["kept"] and json.loads(stats_path(out).read_text())["kept"] == stats["kept"]
    by_id = {p["id"]: p for p in problems}
    for r in rows:
        pid, k = r["id"].rsplit("-s", 1)
        assert r["sample"] == int(k) and r["source_model"] == "tiny"
        assert (r["problem"], r["answer"]) == (by_id[pid]["problem"], by_id[pid]["answer"])
        assert r["response"].startswith("<think>") and "</think>" in r["response"]
    assert all(grade_many([r["response"] for r in rows], [r["answer"] for r in rows]))
    records = [r for n, r in read_jsonl(progress_path(out)) if n > 1]  # line 1: the settings
    assert sorted((r["id"], r["sample"]) for r in records) == sorted((p["id"], k) for p in problems for k in range(2))
    assert all((r["outcome"] == "truncated") == (r["finish_reason"] == "length") for r in records)


@pytest.mark.integration
def test_rerun_after_a_kill_samples_only_what_is_missing(straight, teacher, problems, tmp_path):
    out_a, stats_a = straight
    out = tmp_path / "traces.jsonl"
    lines = progress_path(out_a).read_text().splitlines(keepends=True)
    # killed after the first chunk (settings + problem 0's two samples), mid-way through writing the second
    progress_path(out).write_text("".join(lines[:3]) + lines[3][:20])
    asked = []
    sampler = teacher_sampler(teacher, 2048, 0, 0.6, 256)

    def spy(pairs):
        asked.extend((p["id"], k) for p, k in pairs)
        return sampler(pairs)

    stats = _run(teacher, problems, out, sampler=spy)
    assert sorted(asked) == sorted((p["id"], k) for p in problems[1:] for k in range(2))
    assert stats["resumed"] == 2 and stats["sampled_now"] == 4
    assert out.read_text() == out_a.read_text()
    assert {k: stats[k] for k in OUTCOMES} == {k: stats_a[k] for k in OUTCOMES}
    pairs = [(r["id"], r["sample"]) for n, r in read_jsonl(progress_path(out)) if n > 1]
    assert len(pairs) == len(set(pairs)) == 6
    asked.clear()  # a finished run resumes everything and samples nothing
    assert _run(teacher, problems, out, sampler=spy)["sampled_now"] == 0 and asked == []
    with pytest.raises(UserError, match="temperature=0.6, this run has temperature=1.0"):
        generate(problems, 2, spy, out, {**SETTINGS, "temperature": 1.0}, "tiny", progress=False)


@pytest.mark.integration
def test_cli_generate_counts_truncation(problems, tmp_path):
    """The command end to end on its own engine: a cap of 4 tokens truncates every sample, and none is kept."""
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in problems))
    out = tmp_path / "t.jsonl"
    res = subprocess.run([CLI, "data", "generate", "--model", TEACHER, "--problems", str(src), "--samples", "2",
                          "--limit", "2", "--engine", "hf", "--max-tokens", "4", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "4 samples of 2 problems" in res.stdout and "kept 0, wrong 0, truncated 4, format_failed 0" in res.stdout
    stats = json.loads(stats_path(out).read_text())
    assert (stats["truncated"], stats["settings"]["max_tokens"], stats["source_model"]) == (4, 4, "tiny")
    assert out.read_text() == ""


def test_bad_problems_file_is_one_line_naming_file_and_line(problems, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(problems[0]) + "\n" + json.dumps({"id": "x", "problem": "Add 1 and 2."}) + "\n")
    res = subprocess.run([CLI, "data", "generate", "--model", TEACHER, "--problems", str(bad), "--samples", "2",
                          "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"longshort data: error: {bad}:2: missing field 'answer'"]
    assert not (tmp_path / "o.jsonl.progress.jsonl").exists()


@pytest.mark.integration  # no fixture says so: the data stage starts the teacher on the HF engine
def test_pipeline_generate_task_feeds_the_teachers_traces(problems, tmp_path, one_torch_thread):
    from longshort.cli import main

    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems[:2]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run: {{name: gen, out_dir: {tmp_path / 'runs'}}}\nmodel: {{base: tiny}}\nengine: {{kind: hf}}\n"
        "data: {train: problems.jsonl, test: problems.jsonl}\n"
        f"pipeline: {{task: generate, train_reasoner: false, generate: {{model: {TEACHER}, samples: 2, max_tokens: 256}}}}\n")
    assert main(["pipeline", "--recipe", str(recipe), "--until", "data", "--no-progress"]) == 0
    out = tmp_path / "runs" / "gen" / "data"
    summary = json.loads((out / "stage.json").read_text())["summary"]
    assert sum(summary[k] for k in OUTCOMES) == 4 and summary["train"] == summary["kept"] >= 1
    traces = read_traces(out / "train.jsonl")  # what `analyze` reads: each a valid long-CoT trace
    assert len(traces) == summary["kept"] and all(t.id.rsplit("-s", 1)[0] in {p["id"] for p in problems} for t in traces)
    assert summary["test"] == 2


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> str:
    from longshort.models import materialise_smollm2

    return str(materialise_smollm2(tmp_path_factory.mktemp("smol") / "smollm2"))


def test_smollm2_teacher_on_gsm8k(smollm2, benchmarks_dir, tmp_path, one_torch_thread):
    """A real instruct model that does not think, on real GSM8K problems: the counts add up, kept rows are traces."""
    from conftest import engine_config

    from longshort.data.benchmarks import load_benchmark
    from longshort.engines import make_engine

    rows = load_benchmark("gsm8k", path=os.path.join(benchmarks_dir, "gsm8k_test.jsonl"), limit=2).rows
    engine = make_engine("hf", smollm2, engine_config(max_model_len=2048), {}, seed=0)
    try:
        stats = generate(rows, 2, teacher_sampler(engine, 2048, 0, 0.6, 192), tmp_path / "t.jsonl", SETTINGS, "smollm2",
                         progress=False)
    finally:
        engine.close()
    assert sum(stats[k] for k in OUTCOMES) == 4
    kept = read_traces(tmp_path / "t.jsonl")  # what `analyze` reads: every kept row has its <think>
    assert len(kept) == stats["kept"] and all(grade_many([t.response for t in kept], [t.answer for t in kept]))
