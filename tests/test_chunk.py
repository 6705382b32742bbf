"""Chunking: steps, rule-based thoughts, the LLM chunker's validation and fallback, the </think> tail."""

from __future__ import annotations

import json

import pytest

from longshort.analysis.chunk import (
    TYPES,
    assemble,
    chunk_llm,
    chunk_rule,
    from_record,
    llm_prompt,
    parse_blocks,
    split_steps,
    validate_blocks,
)
from longshort.data.synthetic import generate
from longshort.data.traces import Trace

R1_STYLE = (
    "<think>\nOkay, we need 12 * 3 first.\n\n12 * 3 = 36.\n\nWait, let me verify: 36 / 3 = 12. Good.\n\n"
    "Hmm, but the problem also subtracts 4.\n\n36 - 4 = 32.\n\nAlternatively, 12 * 3 - 4 = 32 directly.\n\n"
    "So the answer is 32.\n</think>\n\nThe result is 36 - 4 = 32.\n\n**Final Answer**\n\\boxed{32}"
)


def _tiles(c):
    r = c.trace.response
    spans = [t.char_span for t in c.thoughts]
    assert spans[0][0] == 0 and spans[-1][1] == len(r)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert "".join(r[a:b] for a, b in spans) == r  # nothing dropped, nothing twice


def _covers(c):
    steps = [k for t in c.thoughts for k in range(t.start, t.end + 1)]
    assert steps == list(range(len(c.steps)))


def test_rule_chunker_on_r1_style_trace_keeps_the_tail():
    c = chunk_rule(Trace("t", "p", "32", R1_STYLE))
    assert [s.text for s in c.steps][:2] == ["Okay, we need 12 * 3 first.", "12 * 3 = 36."]
    assert [t.type for t in c.thoughts] == ["compute", "verify", "reflect", "alternative", "conclusion"]
    assert c.thoughts[2].text == "Hmm, but the problem also subtracts 4.\n\n36 - 4 = 32."
    last = c.thoughts[-1]
    assert last.text == "So the answer is 32."
    assert last.tail == "</think>\n\nThe result is 36 - 4 = 32.\n\n**Final Answer**\n\\boxed{32}"
    assert all(t.tail == "" for t in c.thoughts[:-1])
    _tiles(c)
    _covers(c)
    # prefixes: i = 0 is the opener, i = n stops before </think> (the tail holds the answer)
    assert R1_STYLE[: c.prefix_end(0)] == "<think>\n"
    assert R1_STYLE[: c.prefix_end(1)].endswith("12 * 3 = 36.\n\n")
    assert R1_STYLE[: c.prefix_end(len(c.thoughts))].endswith("So the answer is 32.\n")


def test_rule_chunker_on_synthetic_traces():
    for row in generate(40, 5):
        c = chunk_rule(Trace("x", row["problem"], row["answer"], row["response"]))
        _tiles(c)
        _covers(c)
        assert c.thoughts[-1].type == "conclusion" and c.thoughts[-1].tail == "</think>\n\\boxed{" + row["answer"] + "}"
        for t in c.thoughts:  # each redundant detour is its own thought, never mixed with a computation
            if t.type in ("verify", "alternative", "reflect"):
                assert t.start == t.end


def test_trace_without_think_tags_or_tail():
    c = chunk_rule(Trace("x", "p", "3", "1 + 2 = 3.\n\nWait, check: 2 + 1 = 3.\n\nSo the answer is 3."))
    assert len(c.steps) == 3 and c.thoughts[-1].tail == "" and c.think_end == len(c.trace.response)
    _tiles(c)
    unterminated = chunk_rule(Trace("x", "p", "3", "<think>\n1 + 2 = 3.\n\nBut wait"))
    assert [s.text for s in unterminated.steps] == ["1 + 2 = 3.", "But wait"]
    _tiles(unterminated)
    with pytest.raises(ValueError, match="no thinking steps"):
        chunk_rule(Trace("x", "p", "3", "<think>\n\n</think>\n\\boxed{3}"))


def test_split_steps_offsets_point_into_the_response():
    r = "<think>\n  a step  \n\n\n\nnext\n \nlast\n</think>tail"
    steps, end = split_steps(r)
    assert [s.text for s in steps] == ["a step", "next", "last"]
    assert all(r[s.start : s.end] == s.text for s in steps) and r[end:] == "</think>tail"


BAD_BLOCKS = {
    "gap": [{"start": 0, "end": 1}, {"start": 3, "end": 4}],
    "overlap": [{"start": 0, "end": 2}, {"start": 2, "end": 4}],
    "incomplete": [{"start": 0, "end": 3}],
    "past the end": [{"start": 0, "end": 5}],
    "reversed": [{"start": 0, "end": 4}, {"start": 5, "end": 3}],
    "not ints": [{"start": "0", "end": 4}],
    "not a list": {"start": 0, "end": 4},
    "empty": [],
}


@pytest.mark.parametrize("name", sorted(BAD_BLOCKS))
def test_validator_rejects_bad_covers(name):
    with pytest.raises(ValueError):
        validate_blocks(BAD_BLOCKS[name], 5)


def test_validator_on_hand_made_blocks():
    ok = [{"start": 0, "end": 1, "type": "compute"}, {"start": 2, "end": 2, "type": "Verify"}, {"start": 3, "end": 4, "type": "musing"}]
    assert [b["type"] for b in validate_blocks(ok, 5)] == ["compute", "verify", "other"]


def test_parse_blocks_finds_valid_json_in_prose():
    text = 'Sure! Steps 1 and 2 go together:\n{"block 1": {"start": 1, "end": 2, "block type": "compute"}, "block 2": {"start": 3, "end": 3, "block type": "conclusion"}} done'
    assert parse_blocks(text, 3) == [{"start": 0, "end": 1, "type": "compute"}, {"start": 2, "end": 2, "type": "conclusion"}]
    with pytest.raises(ValueError, match="cover steps 1..1, the trace has 3"):
        parse_blocks('{"block 1": {"start": 1, "end": 1, "block type": "compute"}}', 3)
    with pytest.raises(ValueError, match="no block object"):
        parse_blocks("5 5 5 ::: }{", 3)
    prompt = llm_prompt("What is 1 + 2?", ["a", "b"])
    assert "What is 1 + 2?" in prompt and "Step 1: a\nStep 2: b" in prompt and "Step 1 to Step 2" in prompt
    assert all(t in prompt for t in TYPES)


def test_record_round_trip():
    t = Trace("t", "p", "32", R1_STYLE)
    c = chunk_rule(t)
    rec = c.to_record()
    assert rec["block_texts"] == [th.text for th in c.thoughts] and rec["steps"][0] == "Okay, we need 12 * 3 first."
    again = from_record(t, rec)
    assert [(x.start, x.end, x.type, x.char_span) for x in again.thoughts] == [(x.start, x.end, x.type, x.char_span) for x in c.thoughts]
    rec["block"]["block 2"]["start"] += 1  # a damaged record is rejected, not silently used
    with pytest.raises(ValueError):
        from_record(t, rec)


def test_llm_chunker_on_tiny_model_falls_back_to_rules(vllm_engine):
    """The untrained tiny model cannot produce valid JSON: after the retries every trace uses the rule chunker."""
    traces = [Trace(f"s{i}", r["problem"], r["answer"], r["response"]) for i, r in enumerate(generate(2, 9))]
    traces.append(Trace("r1", "p", "32", R1_STYLE))
    out = chunk_llm(vllm_engine, traces, max_tokens=32, retries=1, seed=0)
    assert [c.trace.id for c in out] == [t.id for t in traces]
    for c, t in zip(out, traces):
        assert c.chunker == "llm->rule"
        assert len(c.notes) == 2 and c.notes[0].startswith("attempt 0:") and c.notes[1].startswith("attempt 1:")
        assert [(x.start, x.end, x.type) for x in c.thoughts] == [(x.start, x.end, x.type) for x in chunk_rule(t).thoughts]
        _tiles(c)
    too_long = chunk_llm(vllm_engine, traces[:1], max_tokens=8, retries=0, max_prompt_tokens=10)[0]
    assert too_long.chunker == "llm->rule" and "leaves no room" in too_long.notes[0]


# -- the released chunker's layout and input fields (issue #15) ----------------------------------------------------


def test_trace_reader_accepts_the_released_field_names(tmp_path):
    from longshort.data.traces import read_traces

    f = tmp_path / "released.jsonl"  # what the release's chunker reads: question, thought, answer (an integer there)
    f.write_text(json.dumps({"question": "What is 12 * 3 - 4?", "thought": R1_STYLE, "answer": 32}) + "\n")
    (t,) = read_traces(f)
    assert (t.id, t.problem, t.answer, t.response) == ("released-1", "What is 12 * 3 - 4?", "32", R1_STYLE)


def test_record_has_the_released_layout():
    t = Trace("t", "What is 12 * 3 - 4?", "32", R1_STYLE)
    c = chunk_rule(t)
    rec = c.to_record()
    assert (rec["question"], rec["answer"], rec["thought"]) == (t.problem, "32", R1_STYLE)
    assert rec["block"] == {
        "block 1": {"start": 1, "end": 2, "block type": "compute"},
        "block 2": {"start": 3, "end": 3, "block type": "verify"},
        "block 3": {"start": 4, "end": 5, "block type": "reflect"},
        "block 4": {"start": 6, "end": 6, "block type": "alternative"},
        "block 5": {"start": 7, "end": 7, "block type": "conclusion"},
    }
    steps = rec["steps"]  # block k's text is its steps (1-based, inclusive), joined as the trace separates them
    assert rec["block_thought"] == {k: "\n\n".join(steps[b["start"] - 1 : b["end"]]) for k, b in rec["block"].items()}
    assert rec["tail"].endswith("\\boxed{32}") and "block_prompt" not in rec  # the rule chunker prompts nothing
    assert json.loads(json.dumps(rec)) == rec


def test_released_style_replies_parse_and_the_release_gap_is_refused():
    steps = [s.text for s in chunk_rule(Trace("t", "p", "32", R1_STYLE)).steps]  # 7 steps
    reply = ("<think>\nSteps 1-2 compute; {\"block 1\": {\"start\": 1, \"end\": 7}} would be lazy.\n</think>\n```json\n"
             "{'block 1': {'start': '1', 'end': '2', 'block type': 'compute'}, 'block 2': {'start': 3, 'end': 6, "
             "'block type': 'Verify'}, 'block 3': {'start': 7, 'end': 7, 'block type': 'problem understanding'}}\n```")
    assert parse_blocks(reply, 7) == [{"start": 0, "end": 1, "type": "compute"}, {"start": 2, "end": 5, "type": "verify"},
                                      {"start": 6, "end": 6, "type": "other"}]  # thinking skipped, quotes, strings
    c = assemble(Trace("t", "p", "32", R1_STYLE), parse_blocks(reply, 7), "llm")
    _tiles(c)
    assert c.thoughts[-1].tail.endswith("\\boxed{32}")  # the tail after </think> stays with the last thought
    # a cover that stops before the last step, which the release's own check lets through, is refused here
    short = '{"block 1": {"start": 1, "end": 4, "block type": "compute"}, "block 2": {"start": 5, "end": 6, "block type": "verify"}}'
    with pytest.raises(ValueError, match="cover steps 1..6, the trace has 7"):
        parse_blocks(short, len(steps))
    with pytest.raises(ValueError, match="block 2 starts at step 4, expected 3"):
        parse_blocks('{"block 1": {"start": 1, "end": 2}, "block 2": {"start": 4, "end": 7}}', 7)
    with pytest.raises(ValueError, match="never closes"):
        parse_blocks("<think> let me see " + short, 7)


def test_llm_chunker_retries_garbage_then_falls_back_keeping_the_tail(hf_engine):
    """The untrained tiny model (HF engine) answers garbage: five attempts at temperature 0.1 (the defaults), each
    refused by the coverage check, then the rule chunker; the record keeps the prompt, the last reply and the tail."""
    traces = [Trace("r1", "What is 12 * 3 - 4?", "32", R1_STYLE)]
    traces += [Trace(f"s{i}", r["problem"], r["answer"], r["response"]) for i, r in enumerate(generate(1, 9))]
    out = chunk_llm(hf_engine, traces, max_tokens=24, max_prompt_tokens=1000)
    for c, t in zip(out, traces):
        assert c.chunker == "llm->rule"
        assert [n.split(":")[0] for n in c.notes] == [f"attempt {k}" for k in range(5)]
        assert [(x.start, x.end, x.type) for x in c.thoughts] == [(x.start, x.end, x.type) for x in chunk_rule(t).thoughts]
        _tiles(c)
        rec = c.to_record()
        assert t.problem in rec["block_prompt"] and "Step 1: " in rec["block_prompt"]
        assert isinstance(rec["block_prompt_results"], str) and rec["tail"] == t.response[c.think_end :].strip()
        again = from_record(t, json.loads(json.dumps(rec)))  # resume keeps the notes, prompt and reply
        assert (again.notes, again.prompt, again.reply, again.chunker) == (c.notes, c.prompt, c.reply, "llm->rule")
    # seeds come from (run seed, trace, attempt): a trace's replies do not depend on its batch
    alone = chunk_llm(hf_engine, traces[:1], max_tokens=24, retries=0, max_prompt_tokens=1000)[0]
    assert alone.reply == chunk_llm(hf_engine, traces[1:] + traces[:1], max_tokens=24, retries=0, max_prompt_tokens=1000)[1].reply
