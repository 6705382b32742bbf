"""Cold-start synthesis: selection, runs -> turns, the compressor, folding, grammar + grading of the output."""

from __future__ import annotations

import json

import pytest

from longshort.analysis.chunk import chunk_rule
from longshort.analysis.coldstart import Known, build_turns, check_transcript, coldstart, compress_rule, fold, runs, select
from longshort.config import load_recipe
from longshort.data.synthetic import generate
from longshort.data.traces import Trace
from longshort.grading import is_equivalent
from longshort.tags import parse_long, parse_short


def thought_rows(row, scores=None, trace_id="t0"):
    """Thought rows as `longshort analyze` writes them, for one synthetic trace, with chosen scores."""
    c = chunk_rule(Trace(trace_id, row["problem"], row["answer"], row["response"]))
    scores = scores or [0.0] * len(c.thoughts)
    return [
        {"trace_id": trace_id, "index": t.index, "type": t.type, "text": t.text, "tail": t.tail, "problem": row["problem"],
         "gold": row["answer"], "M": m, "ci_low": m / 2, "d_y": 300}
        for t, m in zip(c.thoughts, scores)
    ]


def test_select_threshold_topk_keep_first():
    th = [{"M": m, "ci_low": m / 2} for m in (0.1, 0.9, 0.6, 0.2, 0.9)]
    assert select(th, "threshold", 0.5, 0, True) == [True, True, True, False, True]
    assert select(th, "threshold", 0.5, 0, False) == [False, True, True, False, True]
    assert select(th, "threshold", 0.5, 0, False, key="ci_low") == [False, False, False, False, False]
    assert select(th, "topk", 0, 2, False) == [False, True, False, False, True]  # ties: earlier first
    assert runs([True, True, False, True, False, False]) == [(True, [0, 1]), (False, [2]), (True, [3]), (False, [4, 5])]


def test_compressor_keeps_new_results_and_drops_redundancy():
    known = Known()
    known.read("Start with 3.\n\nAdd 5: 3 + 5 = 8.")
    assert compress_rule("Wait, let me check: 3 + 5 = 8. Yes.\n\nAlternatively, 5 + 3 = 8. Same result.", known) == "So far 8."
    assert compress_rule("Now add 4: 8 + 4 = 12; left: 2.\n\nWait, let me check: 8 + 4 = 12. Yes.", known) == "Now add 4: 8 + 4 = 12; left: 2."
    assert compress_rule("So far: 3 + 5 + 4 = 12.\n\nSo the answer is 12.", known, final=True) == "So the answer is 12."
    assert compress_rule("So far: 3 + 5 + 4 = 12.", known, final=True) == "So far: 3 + 5 + 4 = 12."  # the last step states it
    assert compress_rule("But wait, should I subtract 4? No.", known, final=True) == ""
    assert compress_rule("Hmm. Let me think about it.", Known()) == "Hmm."


def test_fold_respects_max_turns_and_ends_short():
    plan = runs([True, False, True, False, True, False, True])  # 7 runs + final short = 8 turns
    folded, did = fold(plan, 4)
    assert did and len(folded) <= 4 and folded[-1][0] is False
    assert [i for _, idx in folded for i in idx] == list(range(7))  # every thought still in exactly one turn
    assert fold(plan, 8) == (plan, False)


def test_transcripts_alternate_obey_grammar_and_grade_correct():
    row = generate(1, 11)[0]
    rows = thought_rows(row)
    n = len(rows)
    scores = [1.0 if i % 3 == 0 else 0.0 for i in range(n)]  # several long/short alternations
    th = thought_rows(row, scores)
    mask = select(th, "threshold", 0.5, 1, True)
    plan, _ = fold(runs(mask), 100)
    turns = build_turns(th, plan, row["answer"], lambda text, known, final: compress_rule(text, known, final))
    assert [t["role"] for t in turns] == (["long", "short"] * n)[: len(turns)]  # strict alternation
    assert check_transcript(turns, row["answer"]) is None
    for t in turns[:-1]:
        p = parse_long(t["text"]) if t["role"] == "long" else parse_short(t["text"])
        assert p.kind == ("think" if t["role"] == "long" else "rethink")
    final = parse_short(turns[-1]["text"])
    assert final.kind == "final" and is_equivalent(final.boxed, row["answer"])
    long_text = "\n\n".join(parse_long(t["text"]).content for t in turns if t["role"] == "long")
    assert long_text == "\n\n".join(th[i]["text"] for i in range(n) if mask[i])  # important thoughts verbatim
    # a wrong final answer is caught
    bad = turns[:-1] + [{"role": "short", "text": "<answer> \\boxed{999} </answer>"}]
    assert "does not match gold" in check_transcript(bad, row["answer"])


def _recipe(tmp_path, thoughts, *extra):
    return load_recipe(None, [f"run.out_dir={tmp_path}", "run.name=cs", f"coldstart.thoughts={thoughts}", *extra])


def test_coldstart_stage_writes_parseable_per_role_data(tmp_path):
    rows = []
    for k, r in enumerate(generate(6, 2)):
        n = len(thought_rows(r))
        rows += thought_rows(r, [0.9 if i in (0, n // 2) else 0.1 for i in range(n)], trace_id=f"t{k}")
    # one trace whose own final answer is wrong: must be dropped
    wrong = thought_rows(generate(1, 99)[0], trace_id="wrong")
    for w in wrong:
        w["gold"] = "1000"
    (tmp_path / "thoughts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows + wrong))
    stats = coldstart(_recipe(tmp_path, tmp_path / "thoughts.jsonl", "protocol.max_turns=4"))
    out = tmp_path / "cs"
    long_rows = [json.loads(x) for x in (out / "long.jsonl").read_text().splitlines()]
    short_rows = [json.loads(x) for x in (out / "short.jsonl").read_text().splitlines()]
    assert stats["traces_in"] == 7 and stats["traces_out"] == 6 and stats["invalid"] == 1
    assert [r["id"] for r in long_rows] == [r["id"] for r in short_rows] == [f"t{k}" for k in range(6)]
    for lr, sr in zip(long_rows, short_rows):
        assert set(lr) == {"id", "problem", "gold", "turns", "target_role"}
        assert lr["target_role"] == "long" and sr["target_role"] == "short" and lr["turns"] == sr["turns"]
        assert 2 <= len(lr["turns"]) <= 4 and lr["turns"][0]["role"] == "long"
        assert check_transcript(lr["turns"], lr["gold"]) is None
    saved = json.loads((out / "stats.json").read_text())
    assert saved["traces_out"] == 6 and 0 < saved["compression_ratio"] < 1
    assert saved["tokens"]["long"] > 0 and saved["tokens"]["short"] > 0
    assert sum(saved["score_M_histogram_0.1"]) == len(rows) + len(wrong)


def test_missing_thoughts_file_is_a_user_error(tmp_path):
    from longshort.errors import UserError

    with pytest.raises(UserError, match="no thoughts file"):
        coldstart(_recipe(tmp_path, tmp_path / "nope.jsonl"))


# -- the model rewriter (issue #15) --------------------------------------------------------------------------------


def test_rewrite_is_cleaned_of_its_thinking_and_checked():
    from longshort.analysis.coldstart import clean_rewrite, new_results, numbers

    src = "Now add 5: 3 + 5 = 8; left: 2.\n\nWait, let me check: 3 + 5 = 8. Yes."
    assert clean_rewrite("<think>\nThe user wants it short. 3+5 is 8.\n</think>\n\nAdd 5: 3 + 5 = 8.", src) == ("Add 5: 3 + 5 = 8.", None)
    assert clean_rewrite("It is 3+5.</think> 3 + 5 = 8.", src) == ("3 + 5 = 8.", None)  # template opened <think>
    assert clean_rewrite("<think>\nHmm, 3 + 5", src) == (None, "unfinished <think>")
    assert clean_rewrite("<think>\n</think>\n", src) == (None, "empty")
    assert clean_rewrite("So 3 + 5 = 8.", src, finish_reason="length") == (None, "cut at coldstart.rewriter_max_tokens")
    assert clean_rewrite("<answer> 3 + 5 = 8 </answer>", src) == (None, "contains a tag")
    assert clean_rewrite("Add five to three.", src) == (None, "loses the last number")
    assert clean_rewrite(src + " So 8.", src) == (None, "longer than the source")
    assert clean_rewrite("12 * 3 = 36.", "12*3 = 36.") == ("12 * 3 = 36.", None)  # respaced, not longer
    # numbers by value; new results: each equation's value not stated before in the transcript nor in the run
    assert numbers("$1,000 and 12.0, 12") == {"1000": 1, "12": 2}
    known = Known()
    known.read("Add 5: 3 + 5 = 8.")
    assert new_results("8 + 4 = 12. Check: 4 + 8 = 12. And 3 + 5 = 8. Then 0.2 x 50 = $10.0", known) == {"12": 1, "10": 1}


def _garbage_thoughts(tmp_path):
    rows = []
    for k, r in enumerate(generate(3, 4)):
        n = len(thought_rows(r))
        rows += thought_rows(r, [0.9 if i in (0, n // 2) else 0.1 for i in range(n)], trace_id=f"t{k}")
    (tmp_path / "thoughts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    return tmp_path / "thoughts.jsonl"


def _llm_args(tmp_path, thoughts, *extra):
    return ["coldstart", "--recipe", "recipes/tiny/coldstart.yaml", f"run.out_dir={tmp_path}", "run.name=cs", f"coldstart.thoughts={thoughts}",
            "coldstart.rewriter=llm", "coldstart.rewriter_max_tokens=8", "engine.kind=hf", "engine.max_model_len=1024", *extra]


def test_max_fallback_gate_stops_the_stage_on_a_garbage_rewriter(tmp_path, capsys):
    """The untrained tiny model (HF engine) rewrites garbage that runs to the cap: every rewrite falls back, more than
    the default coldstart.max_fallback 0.1, so the stage stops with one line (exit 2) and writes no data."""
    from longshort.cli import main

    assert main(_llm_args(tmp_path, _garbage_thoughts(tmp_path))) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # the rest: weight-loading bars
    assert err.startswith("longshort coldstart: error: coldstart: 6 of 6 rewrites")
    assert "fell back to the rule rewriter" in err and "key 'coldstart.max_fallback' (0.1)" in err
    assert "mostly: cut at coldstart.rewriter_max_tokens" in err
    assert not (tmp_path / "cs" / "long.jsonl").exists()


def test_max_fallback_one_keeps_the_rule_rewrites_and_reports_them(tmp_path):
    from longshort.cli import main

    assert main(_llm_args(tmp_path, _garbage_thoughts(tmp_path), "coldstart.max_fallback=1.0")) == 0
    stats = json.loads((tmp_path / "cs" / "stats.json").read_text())
    rw = stats["rewriter"]
    assert rw["rewrites"] > 0 and rw["fallbacks"] == rw["rewrites"] == stats["llm_fallback"] and rw["fallback_share"] == 1.0
    assert rw["fallback_reasons"] == {"cut at coldstart.rewriter_max_tokens": rw["rewrites"]}
    assert rw["compression"] is None and rw["keeps_all_new_results"] is None  # no model rewrite was kept
    assert 0 < stats["compression_ratio"] < 1 and stats["traces_out"] == 3 and stats["invalid"] == 0  # the rule's transcripts


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> str:
    from longshort.models import materialise_smollm2

    return str(materialise_smollm2(tmp_path_factory.mktemp("smol") / "smollm2"))


def test_smollm2_rewrites_keep_the_new_results(smollm2, tmp_path):
    """SmolLM2-135M-Instruct (the SmolLM2 recipe's rewriter) restates real GSM8K steps: measured on these 12
    problems (16 runs to rewrite), 5 fall back (31%) and all 9 kept rewrites of a run with a new result keep every
    one of them (0.55 of the tokens); ~2 min alone on 2 cores, 10 min on a busy machine."""
    from longshort.analysis.chunk import split_steps
    from longshort.data.benchmarks import solution_traces
    from longshort.io import Rejects

    traces, _ = solution_traces("gsm8k", None, "train", 12, "raise", Rejects())
    rows = []
    for tr in traces:
        steps = split_steps(tr["response"])[0]
        if len(steps) < 3:
            continue
        for i, s in enumerate(steps):  # one thought per step; steps 1 and 3 long, the rest restated by the model
            rows.append({"trace_id": tr["id"], "index": i, "type": "compute", "text": s.text, "problem": tr["problem"], "gold": tr["answer"],
                         "M": 0.9 if i in (0, 2) else 0.1, "ci_low": 0.0, "d_y": 200,
                         "tail": f"</think>\n\\boxed{{{tr['answer']}}}" if i == len(steps) - 1 else ""})
    (tmp_path / "thoughts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    stats = coldstart(_recipe(tmp_path, tmp_path / "thoughts.jsonl", "coldstart.rewriter=llm", f"coldstart.rewriter_model={smollm2}",
                              "coldstart.max_fallback=1.0", "engine.kind=hf", "engine.dtype=float32", "engine.max_model_len=1024",
                              "protocol.max_turns=6"))
    rw = stats["rewriter"]
    print(json.dumps(rw))
    assert rw["rewrites"] >= 12 and rw["fallback_share"] <= 0.4
    assert rw["numbers_checked"] >= 5 and rw["keeps_all_new_results"] >= 0.8
    assert rw["compression"] < 1 and stats["traces_out"] >= 8
