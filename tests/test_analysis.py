"""Trace input, Monte-Carlo prefix rollouts (resume) on the real tiny model, and analyze + coldstart end to end."""

from __future__ import annotations

import json

import pytest

from longshort.analysis.chunk import chunk_rule
from longshort.analysis.rollouts import RolloutSettings, run_rollouts, token_bounds
from longshort.data.synthetic import generate
from longshort.data.traces import Trace, read_traces
from longshort.errors import DataError
from longshort.io import Rejects

# -- trace input ------------------------------------------------------------------------------------------


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


GOOD = {"id": "a", "problem": "1+1?", "answer": "2", "response": "<think>\n1 + 1 = 2.\n</think>\n\\boxed{2}"}


def test_read_traces_strict_names_file_and_line(tmp_path):
    p = _write(tmp_path / "t.jsonl", [GOOD, {**GOOD, "id": "b", "response": ""}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'response' is empty"):
        read_traces(p)
    p = _write(tmp_path / "u.jsonl", [GOOD, "{not json"])
    with pytest.raises(DataError, match=r"u\.jsonl:2: invalid JSON"):
        read_traces(p)
    p = _write(tmp_path / "d.jsonl", [GOOD, GOOD])
    with pytest.raises(DataError, match="d.jsonl:2: duplicate id 'a'"):
        read_traces(p)


def test_read_traces_lenient_counts_rejects_and_aliases(tmp_path):
    rows = [GOOD, "{oops", {"id": 7, "question": "q", "expected_answer": 3, "generated_solution": "<think>\nx\n</think>"},
            {"id": "c", "problem": "q", "answer": "1"}, GOOD]
    rejects = Rejects()
    got = read_traces(_write(tmp_path / "t.jsonl", rows), "skip", rejects)
    assert [t.id for t in got] == ["a", "7"] and got[1].answer == "3" and got[1].problem == "q"
    assert [r["where"].rsplit(":", 1)[1] for r in rejects.rows] == ["2", "4", "5"]
    assert "response" in rejects.rows[1]["reason"] and "duplicate" in rejects.rows[2]["reason"]


def test_read_traces_parquet_and_datasets_folder(tmp_path):
    import datasets

    rows = [{**GOOD, "id": f"r{i}"} for i in range(3)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ds.save_to_disk(str(tmp_path / "ds"))
    for src in (tmp_path / "t.parquet", tmp_path / "ds"):
        assert [t.id for t in read_traces(src)] == ["r0", "r1", "r2"]
    assert len(read_traces(tmp_path / "ds", limit=2)) == 2
    bad = datasets.Dataset.from_list([{"id": "x", "problem": "p", "answer": "1", "response": " "}])
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad\.parquet:row 1: field 'response' is empty"):
        read_traces(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="file not found"):
        read_traces(tmp_path / "missing.jsonl")


# -- rollouts ---------------------------------------------------------------------------------------------


def _chunked(n=3, seed=4):
    return [chunk_rule(Trace(f"tr{i}", r["problem"], r["answer"], r["response"])) for i, r in enumerate(generate(n, seed))]


def test_token_bounds_tile_the_trace(tiny_tokenizer):
    for c in _chunked(5):
        d_y, prefixes, spans = token_bounds(tiny_tokenizer, c)
        assert d_y == len(tiny_tokenizer(c.trace.response, add_special_tokens=False)["input_ids"])
        assert spans[0][0] == 0 and spans[-1][1] == d_y and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert len(prefixes) == len(c.thoughts) + 1 and prefixes == sorted(prefixes)
        assert 0 < prefixes[0] < prefixes[1] and prefixes[-1] < d_y  # the tail (answer) is never in a prefix


def test_rollouts_record_every_prefix_and_resume(vllm_engine, tmp_path):
    chunked = _chunked(3)
    settings = RolloutSettings(n=2, temperature=1.0, max_tokens=12, batch_traces=2, max_model_len=1024, seed=0)
    out = tmp_path / "rollouts.jsonl"
    records, counts = run_rollouts(vllm_engine, chunked, settings, out)
    assert counts == {"resumed": 0, "rolled_out": 3, "too_long": 0, "generations": 2 * sum(len(c.thoughts) + 1 for c in chunked)}
    for c in chunked:
        rec = records[c.trace.id]
        assert [p["i"] for p in rec["prefixes"]] == list(range(len(c.thoughts) + 1))
        assert all(p["n_sum"] == 2 and 0 <= p["n_right"] <= 2 and len(p["answers"]) == 2 for p in rec["prefixes"])
        assert rec["d_y"] == token_bounds(vllm_engine.tokenizer, c)[0]
    lines = out.read_text().splitlines()
    assert len(lines) == 3

    # a rerun skips every finished trace: no generation at all, file unchanged
    again, counts2 = run_rollouts(vllm_engine, chunked, settings, out)
    assert counts2 == {"resumed": 3, "rolled_out": 0, "too_long": 0, "generations": 0}
    assert again == records and out.read_text().splitlines() == lines

    # a crash mid-write (torn last line): only that trace is redone, with the same per-prefix seeds -> same result
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    redo, counts3 = run_rollouts(vllm_engine, chunked, settings, out)
    assert counts3["resumed"] == 2 and counts3["rolled_out"] == 1
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["tr0", "tr1", "tr2"]  # no loss, no repeat
    assert redo == records

    # a changed N invalidates old records
    _, counts4 = run_rollouts(vllm_engine, chunked[:1], RolloutSettings(n=1, max_tokens=4, max_model_len=1024), out)
    assert counts4["resumed"] == 0 and counts4["rolled_out"] == 1

    # a prompt that leaves no room to generate is skipped and counted
    _, counts5 = run_rollouts(vllm_engine, chunked[:1], RolloutSettings(n=1, max_tokens=4, max_model_len=40), tmp_path / "r2.jsonl")
    assert counts5["too_long"] == 1 and counts5["rolled_out"] == 0


def test_each_prefix_gets_the_room_its_own_prompt_leaves(vllm_engine, tmp_path):
    """A context that leaves the full prefix 2 tokens still lets prefix 0 (the bare `<think>`) generate up to its cap:
    the room is per prompt (the protocols' rule), not the longest prompt's. Recorded as `rollout` turns."""
    from longshort.data.traces import reasoner_prompt_ids

    c = _chunked(1)[0]
    longest = len(reasoner_prompt_ids(vllm_engine.tokenizer, "", c.trace.problem, c.trace.response[: c.prefix_end(len(c.thoughts))]))
    settings = RolloutSettings(n=2, temperature=1.0, max_tokens=12, max_model_len=longest + 2, seed=0)
    records, counts = run_rollouts(vllm_engine, [c], settings, tmp_path / "r.jsonl")
    prefixes = records[c.trace.id]["prefixes"]
    assert counts["rolled_out"] == 1 and max(prefixes[-1]["tokens"]) <= 2
    assert max(prefixes[0]["tokens"]) > 2  # a random tiny model rarely stops within 2 tokens at T = 1


# -- end to end -------------------------------------------------------------------------------------------


@pytest.mark.integration  # no fixture says so: `analyze` builds the tiny model and rolls out on the HF engine
def test_analyze_then_coldstart_end_to_end(tmp_path):
    from longshort.analysis.analyze import analyze
    from longshort.analysis.coldstart import check_transcript, coldstart
    from longshort.config import load_recipe

    common = [f"run.out_dir={tmp_path}", "run.name=e2e", "engine.kind=hf", "engine.max_model_len=1024", "synthetic.n=20"]
    recipe = load_recipe("recipes/tiny/analyze.yaml", [*common, "analysis.max_traces=3", "analysis.rollouts=2", "analysis.max_tokens=16"])
    summary = analyze(recipe, show_progress=False)
    run = tmp_path / "e2e"
    chunks = {r["id"]: r for r in map(json.loads, (run / "chunks.jsonl").read_text().splitlines())}
    thoughts = [json.loads(x) for x in (run / "thoughts.jsonl").read_text().splitlines()]
    assert summary["traces_scored"] == 3 == len(chunks) and summary["thoughts"] == len(thoughts)
    for tid, rec in chunks.items():
        mine = [t for t in thoughts if t["trace_id"] == tid]
        covered = [k for t in mine for k in range(t["steps"][0], t["steps"][1] + 1)]
        assert covered == list(range(len(rec["steps"])))  # every step of every trace is in exactly one thought
        assert [t["text"] for t in mine] == rec["block_texts"] and mine[-1]["tail"].startswith("</think>")
        assert mine[0]["token_span"][0] == 0 and mine[-1]["token_span"][1] == mine[0]["d_y"]
    for t in thoughts:
        assert t["n_sum"] == 2 and 0 <= t["n_right"] <= 2
        assert 0 <= t["ci_low"] <= t["M"] <= t["ci_high"] <= 1
        assert {"trace_id", "index", "type", "text", "token_span", "n_right", "n_sum", "M", "ci_low", "ci_high"} <= set(t)

    rerun = analyze(recipe, show_progress=False)  # resume: nothing is rolled out again
    assert rerun["resumed"] == 3 and rerun["generations"] == 0 and rerun["thoughts"] == summary["thoughts"]

    cs = load_recipe("recipes/tiny/coldstart.yaml", [*common, f"coldstart.thoughts={run / 'thoughts.jsonl'}", "run.name=e2e-cs"])
    stats = coldstart(cs)
    assert stats["traces_in"] == 3 and stats["traces_out"] == 3  # synthetic traces end with the right answer
    for role in ("long", "short"):
        for row in map(json.loads, (tmp_path / "e2e-cs" / f"{role}.jsonl").read_text().splitlines()):
            assert row["target_role"] == role and check_transcript(row["turns"], row["gold"]) is None
