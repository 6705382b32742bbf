"""PDR workspaces from what a draft shows (docs/protocols.md, "pdr"): the visible part of a draft, the κ cut that
keeps its end, each distill mode's choice of drafts, the evaluation-only oracle modes and their refusal in RL.

Pure text functions run on the real tiny tokenizer; the distill step runs on real `Episode`s holding scripted
draft texts, through a `Setup` on the real HF engine (random_k and the oracle modes make no engine call; the
judge and summary modes call the tiny model, whose replies are noise, so only what they were shown is checked).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from longshort.chat import encode
from longshort.config import load_recipe
from longshort.errors import ConfigError, UserError
from longshort.protocols import new_episodes, run_protocol
from longshort.protocols.calls import Setup
from longshort.protocols.pdr import distill, shown, workspace
from longshort.protocols.prompts import ELLIPSIS, visible_part
from longshort.types import Turn

PROBLEM = {"id": "q", "problem": "What is 2 + 3?", "answer": "5"}


def recipe(*overrides: str):
    return load_recipe(None, ["engine.max_model_len=1024", "protocol.max_tokens=12", "protocol.pdr_temperature=0.7", *overrides])


# ---------------------------------------------------------------------------------------------- visible part


def test_visible_part_is_the_text_after_think():
    assert visible_part("<think>Maybe 6. No, 2 + 3 = 5.</think>\nThe sum is 5, so \\boxed{5}.") == "The sum is 5, so \\boxed{5}."
    # the last </think> ends the thinking; a model that thought twice shows only what follows the second
    assert visible_part("<think>a</think>early. <think>b</think> Final: \\boxed{5}") == "Final: \\boxed{5}"


def test_visible_part_without_think_is_the_conclusion_and_the_boxed_answer():
    text = "First we add 2 and 3. Then we check the carry. We get 5. Check: 5 - 3 = 2. So the answer is \\boxed{5}."
    assert visible_part(text) == "We get 5. Check: 5 - 3 = 2. So the answer is \\boxed{5}."
    # a boxed answer written before the conclusion is kept with it
    early = "We find \\boxed{7}.\nMore checking. It holds. Indeed it does."
    assert visible_part(early) == "More checking. It holds. Indeed it does. \\boxed{7}"
    # thinking cut at its cap (no </think>), or nothing after </think>: the conclusion of the thinking, tag dropped
    assert visible_part("<think>We try 3. Then 4. Then 5. Then 6") == "Then 4. Then 5. Then 6"
    assert visible_part("<think>Try 1. Try 2. It is \\boxed{2}. Done.</think>  ") == "Try 2. It is \\boxed{2}. Done."
    assert visible_part("") == ""


def test_kappa_cut_keeps_the_end_of_each_draft(tiny_tokenizer):
    tok = tiny_tokenizer
    long = " ".join(f"Step {i}: carry the digit." for i in range(200)) + " So the answer is \\boxed{42}."
    other = "<think>" + "hmm " * 300 + "</think>" + " ".join(f"Line {i} holds." for i in range(100)) + " Hence \\boxed{41}."
    assert len(encode(tok, long)) > 1000
    ws = workspace(tok, [visible_part(long), visible_part(other)], 80)
    assert len(encode(tok, ws)) <= 80
    assert ws.startswith("### Attempt 1\n") and "### Attempt 2\n" in ws
    assert "\\boxed{42}" in ws and ws.endswith("Hence \\boxed{41}.")  # each piece keeps its conclusion
    assert "hmm" not in ws
    # one draft too long for κ on its own: cut at its head, marked, its end intact
    alone = workspace(tok, [long], 45)
    assert len(encode(tok, alone)) <= 45 and ELLIPSIS in alone and alone.endswith("So the answer is \\boxed{42}.")
    assert "Step 0:" not in alone
    # `full` reads the whole draft (its thinking too), still cut at its end
    full, visible = recipe("protocol.pdr_workspace_from=full").protocol, recipe().protocol
    assert shown(full, other) == other and shown(visible, other) == visible_part(other)
    assert workspace(tok, [shown(full, other)], 45).endswith("Hence \\boxed{41}.")


# ---------------------------------------------------------------------------------------------- keys


def test_distill_mode_keys():
    assert recipe().protocol.pdr_workspace_from == "visible"
    assert recipe("protocol.pdr_distill=global_summary").protocol.pdr_distill == "summary"  # the old name, accepted
    for bad in ("protocol.pdr_distill=oracle", "protocol.pdr_workspace_from=thoughts"):
        with pytest.raises(ConfigError, match=f"key '{bad.split('=')[0]}'"):
            recipe(bad)


@pytest.mark.parametrize("mode", ["oracle_correct", "oracle_incorrect"])
def test_rl_refuses_oracle_modes(tmp_path, capsys, mode):
    from longshort.cli import main

    rl_recipe = Path(__file__).parent.parent / "recipes" / "tiny" / "rl.yaml"
    assert main(["rl", "--recipe", str(rl_recipe), f"run.out_dir={tmp_path}", "protocol.name=pdr", f"protocol.pdr_distill={mode}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"longshort rl: error: key 'protocol.pdr_distill' is {mode}: an evaluation-only mode (it grades "
                   "drafts against the gold answer), refused in RL rollouts")
    assert list(tmp_path.iterdir()) == []  # refused before the run directory is made


# ---------------------------------------------------------------------------------------------- selection


def episode_with_drafts(tok, texts: list[str], gold: str = "5"):
    """A PDR episode whose round 0 holds these draft texts (as the protocol records them)."""
    (ep,) = new_episodes("pdr", [{**PROBLEM, "answer": gold}])
    for t in texts:
        ep.add(Turn(role="long", prompt_ids=[], completion_ids=encode(tok, t), text=t, kind="draft", step=0))
    return ep, list(range(len(texts)))


def distill_once(engine, texts, *overrides, m_next=4, seed=0, gold="5"):
    rc = recipe(*overrides)
    ep, ds = episode_with_drafts(engine.tokenizer, texts, gold)
    setup = Setup(engine=engine, protocol=rc.protocol, roles=rc.roles, max_model_len=1024, seed=seed, name="pdr")
    return ep, distill(setup, [ep], {id(ep): ds}, 0, m_next)[id(ep)]


DRAFTS = [
    "<think>SECRET guess 6</think> So \\boxed{5}.",  # right
    "Thus the sum is \\boxed{6}.",  # wrong
    "We get \\boxed{\\frac{10}{2}}.",  # right (symbolic check)
    "No answer here.",  # wrong: nothing boxed
    "<think>SECRET it is 5</think>Answer: \\boxed{7}",  # wrong
]


@pytest.mark.parametrize("mode,want", [("oracle_correct", [0, 2]), ("oracle_incorrect", [1, 3])])
def test_oracle_modes_hold_only_right_or_only_wrong_drafts(hf_engine, mode, want):
    ep, wss = distill_once(hf_engine, DRAFTS, f"protocol.pdr_distill={mode}", "protocol.pdr_k=2", "protocol.pdr_kappa=64")
    assert ep.meta["selected"] == [{"round": 0, "slot": -1, "drafts": want}]
    assert len(wss) == 4 and all(ws is wss[0] for ws in wss)  # one shared workspace: one request, n = 4
    assert wss[0].text == workspace(hf_engine.tokenizer, [visible_part(DRAFTS[i]) for i in want], 64)
    assert "SECRET" not in wss[0].text and "oracle_empty" not in ep.meta
    # k larger than what qualifies: only the qualifying ones, never a draft of the other kind
    ep, wss = distill_once(hf_engine, DRAFTS, f"protocol.pdr_distill={mode}", "protocol.pdr_k=8")
    assert ep.meta["selected"][0]["drafts"] == ([0, 2] if mode == "oracle_correct" else [1, 3, 4])


def test_oracle_with_no_qualifying_draft_starts_the_round_afresh(hf_engine):
    ep, wss = distill_once(hf_engine, DRAFTS[1:2] + DRAFTS[3:], "protocol.pdr_distill=oracle_correct")
    assert ep.meta["oracle_empty"] == [0] and ep.meta["selected"][0]["drafts"] == []
    assert all(ws.text is None and ws.drafts == [] for ws in wss)  # the next round reads the problem alone


def test_random_k_is_a_fresh_subset_per_call_reproducible_from_the_seed(hf_engine):
    texts = [f"Draft {i} ends. It gives \\boxed{{{i}}}." for i in range(6)]
    mode = ("protocol.pdr_distill=random_k", "protocol.pdr_k=2", "protocol.pdr_kappa=128")
    ep, wss = distill_once(hf_engine, texts, *mode)
    picks = [s["drafts"] for s in ep.meta["selected"]]
    assert [s["slot"] for s in ep.meta["selected"]] == [0, 1, 2, 3]
    assert all(len(set(p)) == 2 for p in picks) and len({tuple(sorted(p)) for p in picks}) > 1  # calls differ
    for pick, ws in zip(picks, wss):  # each call reads exactly its own drafts
        assert ws.drafts == pick
        assert [i for i in range(6) if f"Draft {i} " in ws.text] == sorted(pick)
    again, wss_again = distill_once(hf_engine, texts, *mode)
    assert again.meta["selected"] == ep.meta["selected"] and [w.text for w in wss_again] == [w.text for w in wss]
    other, _ = distill_once(hf_engine, texts, *mode, seed=1)
    assert [s["drafts"] for s in other.meta["selected"]] != picks


@pytest.mark.parametrize("mode", ["shared_topk", "per_sample_topk", "summary"])
def test_judges_and_summaries_read_the_visible_parts(hf_engine, mode):
    tok = hf_engine.tokenizer
    kappa = 16 if mode == "summary" else 64  # the summary call is capped at κ: short keeps the test fast
    for source in ("visible", "full"):
        ep, wss = distill_once(hf_engine, DRAFTS, f"protocol.pdr_distill={mode}", f"protocol.pdr_workspace_from={source}",
                               f"protocol.pdr_kappa={kappa}", "protocol.max_tokens=4")
        calls = [t for t in ep.turns if t.kind in ("judge", "distill")]
        assert len(calls) == (4 if mode == "per_sample_topk" else 1)
        for t in calls:
            prompt = tok.decode(t.prompt_ids)
            assert all(visible_part(d) in prompt for d in DRAFTS)
            assert ("SECRET" in prompt) == (source == "full")
        assert all(len(encode(tok, ws.text)) <= kappa for ws in wss)
        if mode == "summary":  # the summary call's text, cut at κ keeping its end
            assert wss[0].text == calls[0].text or wss[0].text.startswith(ELLIPSIS)
        else:
            assert [s["slot"] for s in ep.meta["selected"]] == ([0, 1, 2, 3] if mode == "per_sample_topk" else [-1])


# ---------------------------------------------------------------------------------------------- the protocol


def test_protocol_records_the_workspace_each_refine_call_read(hf_engine):
    """[3, 2, 1] on the real tiny model: its noise boxes no answer, so every draft is wrong."""
    tok = hf_engine.tokenizer
    wrong = run_protocol("pdr", hf_engine, [PROBLEM], recipe("protocol.pdr_schedule=[3,2,1]", "protocol.pdr_distill=oracle_incorrect",
                                                             "protocol.pdr_k=2", "protocol.pdr_kappa=96"))[0]
    right = run_protocol("pdr", hf_engine, [PROBLEM], recipe("protocol.pdr_schedule=[3,2,1]", "protocol.pdr_distill=oracle_correct"))[0]
    assert [s["drafts"] for s in wrong.meta["selected"]] == [wrong.meta["rounds"][0][:2], wrong.meta["rounds"][1][:2]]
    for r in (0, 1):  # the tokens of the workspace each next-round call read, and that it read it
        ws = workspace(tok, [visible_part(wrong.turns[i].text) for i in wrong.meta["selected"][r]["drafts"]], 96)
        n = len(encode(tok, ws))
        assert wrong.meta["workspace_tokens"][r] == [n] * len(wrong.meta["rounds"][r + 1]) and 0 < n <= 96
        assert all(ws in tok.decode(wrong.turns[i].prompt_ids) for i in wrong.meta["rounds"][r + 1])
    assert right.meta["oracle_empty"] == [0, 1] and right.meta["workspace_tokens"] == [[0, 0], [0]]
    first = right.turns[right.meta["rounds"][0][0]].prompt_ids
    assert all(right.turns[i].prompt_ids == first for rd in right.meta["rounds"] for i in rd)  # the problem alone
    assert right.correct is False and [t.accepted for t in right.turns].count(True) == 1  # drew on no draft
    with pytest.raises(UserError, match="key 'protocol.pdr_distill' is oracle_correct: .* problem 'q' has none"):
        run_protocol("pdr", hf_engine, [{**PROBLEM, "answer": ""}], recipe("protocol.pdr_distill=oracle_correct"))
