"""Turn protocols: turn logic and budget arithmetic, hand-checked with a scripted engine, then on real engines.

The scripted engine is a test double of the *engine* only (the one external boundary): it answers each
request with a predetermined text, tokenised by the real tiny tokenizer, so every budget can be recomputed
by hand from the chat-rendered prompts. Everything else (chat views, tags, grading, episodes) is real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from longshort import budget
from longshort.chat import encode, prompt_text
from longshort.config import load_recipe
from longshort.engines.base import Completion, GenRequest
from longshort.protocols import run_protocol
from longshort.types import Episode

P1 = {"id": "p1", "problem": "What is 2 + 3?", "answer": "5"}
P2 = {"id": "p2", "problem": "What is 4 + 4?", "answer": "8"}


class ScriptedEngine:
    """Engine double: `script(prompt_text, request, k)` -> completion text; honours max_tokens, stops and eos."""

    def __init__(self, tokenizer, script, adapters=()):
        self.tokenizer = tokenizer
        self.script = script
        self.adapters = {a: f"/adapters/{a}" for a in adapters}
        self.calls: list[list[GenRequest]] = []  # every generate() call, as sent
        self.prompts: list[list[str]] = []  # the decoded prompts of each call

    def generate(self, requests):
        self.calls.append(requests)
        self.prompts.append([self.tokenizer.decode(r.prompt_ids, skip_special_tokens=False) for r in requests])
        out = []
        for r, prompt in zip(requests, self.prompts[-1]):
            comps = []
            for k in range(r.params.n):
                text = self.script(prompt, r, k)
                for s in r.params.stop:  # stop strings end the text and are kept, as in the real engines
                    if s in text:
                        text = text[: text.index(s) + len(s)]
                ids = encode(self.tokenizer, text)
                eos = self.tokenizer.eos_token_id
                if eos in ids:
                    ids = ids[: ids.index(eos) + 1]
                finish = "stop"
                if len(ids) > r.params.max_tokens:
                    ids, finish = ids[: r.params.max_tokens], "length"
                comps.append(Completion(ids, self.tokenizer.decode(ids, skip_special_tokens=True), [-0.5] * len(ids), finish))
            out.append(comps)
        return out

    def close(self):  # the pipeline's stages close every engine they start
        pass


def recipe(*overrides: str):
    return load_recipe(None, ["engine.max_model_len=1024", *overrides])


def n_tokens(tok, text: str) -> int:
    return len(encode(tok, text))


def view(tok, rc, problem, transcript, role) -> str:
    return prompt_text(tok, getattr(rc.roles, role).system_prompt, problem, transcript, role)


# ---------------------------------------------------------------------------------------------- long_cot


def test_long_cot_one_batched_call_and_budget(tiny_tokenizer):
    tok = tiny_tokenizer
    rc = recipe("protocol.long_cot_role=base")
    texts = {"p1": "2 + 3 = 5 so \\boxed{5}", "p2": "4 + 4 = 9 so \\boxed{9}"}
    eng = ScriptedEngine(tok, lambda prompt, r, k: texts["p1" if "2 + 3" in prompt else "p2"])
    eps = run_protocol("long_cot", eng, [P1, P2], rc)
    assert len(eng.calls) == 1 and len(eng.calls[0]) == 2  # both problems in one engine call
    assert all(r.role is None for r in eng.calls[0])  # base model
    for ep, row in zip(eps, [P1, P2]):
        (turn,) = ep.turns
        prompt = prompt_text(tok, rc.protocol.system_prompt, row["problem"], [], "base")
        assert turn.input_tokens == n_tokens(tok, prompt)
        assert ep.b_seq == ep.b_total == n_tokens(tok, texts[row["id"]])  # generated tokens; reads apart
        assert ep.tokens_read == n_tokens(tok, prompt) and turn.step == 0
        assert turn.role == "base" and turn.format_ok and turn.accepted
    assert [ep.answer for ep in eps] == ["5", "9"]
    assert [ep.correct for ep in eps] == [True, False]


def test_long_cot_role_uses_adapter_only_when_served(tiny_tokenizer):
    served = ScriptedEngine(tiny_tokenizer, lambda *a: "\\boxed{1}", adapters=("long",))
    bare = ScriptedEngine(tiny_tokenizer, lambda *a: "\\boxed{1}")
    run_protocol("long_cot", served, [P1], recipe("protocol.long_cot_role=long"))
    run_protocol("long_cot", bare, [P1], recipe("protocol.long_cot_role=long"))
    assert served.calls[0][0].role == "long"
    assert bare.calls[0][0].role is None  # no long adapter loaded: the base serves the role


def test_recipe_adapter_the_engine_lacks_is_an_error_not_the_base(tiny_tokenizer):
    from longshort.errors import ConfigError

    bare = ScriptedEngine(tiny_tokenizer, lambda *a: "\\boxed{1}")
    with pytest.raises(ConfigError, match=r"roles\.long\.adapter.*serves no 'long' adapter"):
        run_protocol("long_cot", bare, [P1], recipe("protocol.long_cot_role=long", "roles.long.adapter=/x/long"))
    assert bare.calls == []  # nothing ran on the base


def test_long_cot_capped_output_is_a_format_failure(tiny_tokenizer):
    eng = ScriptedEngine(tiny_tokenizer, lambda *a: "one two three four five six seven eight nine ten " * 4)
    (ep,) = run_protocol("long_cot", eng, [P1], recipe("protocol.max_tokens=7"))
    assert eng.calls[0][0].params.max_tokens == 7
    assert ep.turns[0].output_tokens == 7 and ep.turns[0].finish_reason == "length"
    assert not ep.turns[0].format_ok and ep.format_failures == 1 and ep.meta["end"] == "length"


# ---------------------------------------------------------------------------------------------- long_short


def long_short_script(plan: dict[str, list[str]]):
    """Each problem's turns in order (long, short, long, ...), chosen by which problem the prompt holds."""
    cursor = {pid: 0 for pid in plan}

    def script(prompt, request, k):
        pid = "p1" if "2 + 3" in prompt else "p2"
        text = plan[pid][cursor[pid]]
        cursor[pid] += 1
        return text

    return script


def test_long_short_turns_chains_and_budgets(tiny_tokenizer):
    tok = tiny_tokenizer
    rc = recipe()
    plan = {
        "p1": ["<think>2 plus 3</think>", "<answer>not sure</rethink>", "<think>it is 5</think>", "<answer>\\boxed{5}</answer>"],
        "p2": ["<think>4 plus 4</think>", "no tags at all"],
    }
    eng = ScriptedEngine(tok, long_short_script(plan), adapters=("long", "short"))
    ep1, ep2 = run_protocol("long_short", eng, [P1, P2], rc)

    # one engine call per step, batched over the episodes still running
    assert [len(c) for c in eng.calls] == [2, 2, 1, 1]
    assert [r.role for c in eng.calls for r in c] == ["long", "long", "short", "short", "long", "short"]
    assert [r.params.stop for r in eng.calls[0]] == [["</think>"]] * 2
    assert eng.calls[1][0].params.max_tokens == rc.roles.short.max_tokens

    assert [t.role for t in ep1.turns] == ["long", "short", "long", "short"]
    assert [t.parent for t in ep1.turns] == [-1, -1, 0, 1]  # each role's turns form one chain
    assert ep1.answer == "5" and ep1.correct and ep1.meta["end"] == "final"
    assert all(t.format_ok and t.accepted for t in ep1.turns)
    assert ep1.rethinks == 1

    # Hand check: each turn's full context is exactly that role's chat view of the transcript so far.
    transcript: list[tuple[str, str]] = []
    total = read = 0
    for i, (turn, text) in enumerate(zip(ep1.turns, plan["p1"])):
        prompt = view(tok, rc, P1["problem"], transcript, turn.role)
        assert turn.input_tokens == n_tokens(tok, prompt)
        assert tok.decode(ep1.context_ids(i)[: turn.input_tokens], skip_special_tokens=False) == prompt
        assert turn.text == text and turn.output_tokens == n_tokens(tok, text)
        total += n_tokens(tok, text)
        read += n_tokens(tok, prompt)
        transcript.append((turn.role, text))
    assert ep1.b_seq == ep1.b_total == total and ep1.tokens_read == read
    assert [t.step for t in ep1.turns] == [0, 1, 2, 3]  # one turn per step: all on the critical path
    # prompt_ids of a continuing turn are only the glue + partner turn + header, not the whole context
    assert ep1.turns[2].prompt_ids == encode(tok, view(tok, rc, P1["problem"], transcript[:2], "long")[
        len(view(tok, rc, P1["problem"], [], "long") + plan["p1"][0]):])
    # what the engine was sent is the recorded context
    assert eng.calls[2][0].prompt_ids == ep1.context_ids(0) + ep1.turns[2].prompt_ids

    # p2: the short turn is malformed -> recorded as a format failure, the episode ends unanswered
    assert [t.format_ok for t in ep2.turns] == [True, False]
    assert ep2.answer is None and ep2.correct is False and ep2.meta["end"] == "malformed"


def test_long_short_max_turns_and_capped_long_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    rc = recipe("protocol.max_turns=3", "roles.long.max_tokens=6")
    plan = {"p1": ["<think>" + " one two" * 20, "<answer>maybe 5</rethink>", "<think>5</think>", "unused"]}
    eng = ScriptedEngine(tok, long_short_script(plan))
    (ep,) = run_protocol("long_short", eng, [P1], rc)
    assert [t.role for t in ep.turns] == ["long", "short", "long"]
    first = ep.turns[0]
    assert first.finish_reason == "length" and first.output_tokens == 6 and not first.format_ok
    assert ep.turns[1].format_ok  # the short role still got the capped thought and handed back
    assert ep.meta["end"] == "max_turns" and ep.answer is None and ep.correct is False
    assert all(r.role is None for c in eng.calls for r in c)  # no adapters loaded: base serves both roles


def test_long_short_eos_inside_a_turn_keeps_the_chain(tiny_tokenizer):
    tok = tiny_tokenizer
    plan = {"p1": ["<think>5" + tok.eos_token, "<answer>go on</rethink>", "<think>5</think>", "<answer>\\boxed{5}</answer>"]}
    eng = ScriptedEngine(tok, long_short_script(plan))
    (ep,) = run_protocol("long_short", eng, [P1], recipe())
    assert ep.turns[0].completion_ids[-1] == tok.eos_token_id and not ep.turns[0].format_ok
    assert ep.turns[2].parent == 0  # the eos is part of the sequence; the next prompt continues after it
    prompt = view(tok, load_recipe(None), P1["problem"], [(t.role, t.text) for t in ep.turns[:2]], "long")
    assert tok.decode(ep.context_ids(2)[: ep.turns[2].input_tokens], skip_special_tokens=False) == prompt
    assert ep.correct


def test_long_short_context_full_ends_without_crash(tiny_tokenizer):
    rc = recipe("engine.max_model_len=120", "roles.long.max_tokens=40")
    plan = {"p1": ["<think>" + " a b" * 30 + "</think>", "<answer>x</rethink>"] * 3}
    eng = ScriptedEngine(tiny_tokenizer, long_short_script(plan))
    (ep,) = run_protocol("long_short", eng, [P1], rc)
    assert ep.meta["end"] == "context_full" and ep.answer is None
    assert all(len(r.prompt_ids) + r.params.max_tokens <= 120 for c in eng.calls for r in c)


# ---------------------------------------------------------------------------------------------- sr


def test_sr_rounds_with_error_analysis(tiny_tokenizer):
    tok = tiny_tokenizer
    rc = recipe("protocol.sr_rounds=2", "protocol.sr_error_analysis=true")
    counter = iter(range(100))

    def script(prompt, r, k):
        if "list its errors" in prompt:
            return f"analysis {next(counter)}: step two is wrong"
        return f"solution {next(counter)} gives \\boxed{{5}}"

    eng = ScriptedEngine(tok, script)
    ep1, ep2 = run_protocol("sr", eng, [P1, P2], rc)
    assert [len(c) for c in eng.calls] == [2] * 5  # solve, (analyse, refine) x 2; both problems per call
    assert [t.kind for t in ep1.turns] == ["draft", "judge", "refine", "judge", "refine"]
    assert all(t.parent == -1 and t.accepted for t in ep1.turns)  # fresh contexts, all sequential
    assert [t.step for t in ep1.turns] == [0, 1, 2, 3, 4]
    assert ep1.b_seq == ep1.b_total == sum(t.output_tokens for t in ep1.turns)
    assert ep1.tokens_read == sum(t.input_tokens for t in ep1.turns)
    # round 2 sees the problem, round 1's solution and its analysis, and nothing older
    last_prompt = eng.prompts[4][0]
    assert ep1.turns[2].text in last_prompt and ep1.turns[3].text in last_prompt
    assert ep1.turns[0].text not in last_prompt and ep1.turns[1].text not in last_prompt
    assert ep1.turns[4].input_tokens == n_tokens(tok, last_prompt)
    assert ep1.answer == "5" and ep1.correct and not ep2.correct


# ---------------------------------------------------------------------------------------------- pdr


def pdr_script(judge_picks_latest: bool = True):
    """Drafts are numbered in generation order (`#n`); a judge picks the candidates with the highest numbers.

    So whatever order a judge is shown the drafts in, the expected pick is known by content."""
    counter = iter(range(10_000))

    def script(prompt, r, k):
        if "Reply with the numbers" in prompt:
            shown = re.findall(r"### Candidate (\d+)\n[^#]*#(\d+)", prompt)
            want = int(re.search(r"numbers of the (\d+) best", prompt).group(1))
            best = sorted(shown, key=lambda s: -int(s[1]))[:want]
            return "best: \\boxed{" + ", ".join(j for j, _ in best) + "}"
        if "Write a short summary" in prompt:
            return f"summary #{next(counter)}: they say 5"
        return f"draft #{next(counter)} so \\boxed{{5}}"

    return script


def number(turn) -> int:
    return int(re.search(r"#(\d+)", turn.text).group(1))


@pytest.mark.parametrize(
    "mode,distill_calls,calls_per_step",
    [
        ("shared_topk", 2, [2, 2, 2, 2, 2]),  # one judge per episode per transition
        ("per_sample_topk", 5, [2, 8, 8, 2, 2]),  # 4 then 1 judges per episode; 4 requests (n=1) per episode
        ("global_summary", 2, [2, 2, 2, 2, 2]),
        ("random_k", 0, [2, 8, 2]),
    ],
)
def test_pdr_schedule_8_4_1_counts_and_budgets(tiny_tokenizer, mode, distill_calls, calls_per_step):
    tok = tiny_tokenizer
    rc = recipe(f"protocol.pdr_distill={mode}", "protocol.pdr_schedule=[8,4,1]", "protocol.pdr_k=2", "protocol.pdr_kappa=64")
    eng = ScriptedEngine(tok, pdr_script())
    eps = run_protocol("pdr", eng, [P1, P2], rc)
    assert [len(c) for c in eng.calls] == calls_per_step
    for ep in eps:
        drafts = [t for t in ep.turns if t.kind == "draft"]
        distills = [t for t in ep.turns if t.kind in ("judge", "distill")]
        assert len(drafts) == 13 and len(distills) == distill_calls  # 8 + 4 + 1 generation calls
        assert [len(r) for r in ep.meta["rounds"]] == [8, 4, 1]
        assert all(t.parent == -1 for t in ep.turns)
        accepted = [i for i, t in enumerate(ep.turns) if t.accepted]
        # the sequential path: one draft per round, plus the distill calls that built the workspaces it read
        assert sum(ep.turns[i].kind == "draft" for i in accepted) == 3
        assert sum(ep.turns[i].kind != "draft" for i in accepted) == min(distill_calls, 2)
        # B_seq: the critical path, each step's longest call (a round of drafts, a distill step), accepted or not
        steps = sorted({t.step for t in ep.turns})
        assert steps == list(range(3 + (2 if distill_calls else 0)))
        assert ep.b_seq == sum(max(t.output_tokens for t in ep.turns if t.step == s) for s in steps)
        assert ep.b_total == sum(t.output_tokens for t in ep.turns) > ep.b_seq
        assert ep.tokens_read == sum(t.input_tokens for t in ep.turns)
        # measured never exceeds nominal (the caps: `longshort budget`)
        nominal = budget.nominal("pdr", rc.protocol, rc.roles)
        assert ep.b_seq <= nominal["b_seq"] and ep.b_total <= nominal["b_total"] and len(ep.turns) == nominal["calls"]
        assert all(t.input_tokens == len(t.prompt_ids) for t in ep.turns)  # fresh contexts
        assert all(w <= 64 for ws in ep.meta["workspace_tokens"] for w in ws)  # κ bound
        assert ep.answer == "5" and ep.correct == (ep.problem_id == "p1")
        if mode.endswith("topk"):
            # the judge picks the newest drafts; the accepted draft of each round is its top pick
            for r in (0, 1):
                round_drafts = ep.meta["rounds"][r]
                newest = max(round_drafts, key=lambda i: number(ep.turns[i]))
                assert ep.turns[newest].accepted
                assert sum(ep.turns[i].accepted for i in round_drafts) == 1
            for sel in ep.meta["selected"]:
                shown = ep.meta["rounds"][sel["round"]]
                assert sel["drafts"] == sorted(shown, key=lambda i: -number(ep.turns[i]))[:2]
        else:
            # by convention the first draft a workspace drew on is on the path
            assert ep.turns[ep.meta["rounds"][2][0]].accepted


def test_pdr_hand_checked_budget(tiny_tokenizer):
    """[2, 1], shared top-1: B_seq = longer draft + judge + final (generated); B_total every generated token."""
    tok = tiny_tokenizer
    rc = recipe("protocol.pdr_schedule=[2,1]", "protocol.pdr_k=1", "protocol.pdr_distill=shared_topk")
    eng = ScriptedEngine(tok, pdr_script())
    (ep,) = run_protocol("pdr", eng, [P1], rc)
    d0, d1, judge, final = ep.turns
    assert [t.kind for t in ep.turns] == ["draft", "draft", "judge", "draft"]
    assert eng.calls[0][0].params.n == 2  # both first-round drafts from one request

    sys = rc.protocol.system_prompt
    draft_prompt = prompt_text(tok, sys, P1["problem"], [], "long")
    judge_prompt = eng.prompts[1][0]
    final_prompt = eng.prompts[2][0]
    assert d1.text in final_prompt and d0.text not in final_prompt  # the judge chose #1 (the newest)
    assert (d1.accepted, judge.accepted, final.accepted, d0.accepted) == (True, True, True, False)
    assert [t.step for t in ep.turns] == [0, 0, 1, 2]
    longer = max(n_tokens(tok, d0.text), n_tokens(tok, d1.text))
    assert ep.b_seq == longer + n_tokens(tok, judge.text) + n_tokens(tok, final.text)
    assert ep.b_total == sum(n_tokens(tok, t.text) for t in (d0, d1, judge, final))
    assert ep.tokens_read == 2 * n_tokens(tok, draft_prompt) + n_tokens(tok, judge_prompt) + n_tokens(tok, final_prompt)


def test_pdr_judge_garbage_falls_back_and_is_a_format_failure(tiny_tokenizer):
    rc = recipe("protocol.pdr_schedule=[3,1]", "protocol.pdr_k=2", "protocol.pdr_distill=shared_topk")
    eng = ScriptedEngine(tiny_tokenizer, lambda p, r, k: "no idea" if "Reply with the numbers" in p else f"d{k} \\boxed{{5}}")
    (ep,) = run_protocol("pdr", eng, [P1], rc)
    judge = next(t for t in ep.turns if t.kind == "judge")
    assert not judge.format_ok
    assert ep.meta["selected"][0]["drafts"] == ep.meta["rounds"][0][:2]  # first k in shown order


def test_each_protocol_samples_at_its_own_temperature(tiny_tokenizer):
    """long_cot at protocol.temperature, SR and PDR at their own keys (every call), which default to it."""
    from longshort.errors import ConfigError

    def temperatures(name, rc):
        eng = ScriptedEngine(tiny_tokenizer, pdr_script())
        run_protocol(name, eng, [P1, P2], rc)
        return {r.params.temperature for call in eng.calls for r in call}

    own = recipe("protocol.temperature=0.0", "protocol.sr_temperature=0.5", "protocol.pdr_temperature=0.7",
                 "protocol.pdr_schedule=[2,1]", "protocol.sr_error_analysis=true")
    assert [temperatures(n, own) for n in ("long_cot", "sr", "pdr")] == [{0.0}, {0.5}, {0.7}]
    shared = recipe("protocol.temperature=0.3")
    assert [temperatures(n, shared) for n in ("long_cot", "sr", "pdr")] == [{0.3}] * 3
    with pytest.raises(ConfigError, match=r"^key 'protocol.pdr_temperature' is 0 \(greedy\): the 2 parallel drafts"):
        temperatures("pdr", recipe("protocol.pdr_temperature=0", "protocol.pdr_schedule=[2,1]"))
    with pytest.raises(ConfigError, match=r"key 'protocol.temperature' is 0 \(greedy\) \(protocol.pdr_temperature is null\)"):
        temperatures("pdr", recipe("protocol.temperature=0", "protocol.pdr_schedule=[2,1]"))
    assert temperatures("pdr", recipe("protocol.pdr_temperature=0", "protocol.pdr_schedule=[1,1]")) == {0.0}  # one draft: greedy is fine


# ---------------------------------------------------------------------------------------------- real engines


def tiny_recipe(tiny_adapters, *overrides: str):
    return load_recipe(
        None,
        [
            "engine.max_model_len=1024",
            f"roles.long.adapter={tiny_adapters['long']}",
            f"roles.short.adapter={tiny_adapters['short']}",
            "roles.long.max_tokens=12",
            "roles.short.max_tokens=8",
            "protocol.max_tokens=12",
            "protocol.pdr_kappa=32",
            *overrides,
        ],
    )


def check_episode(ep: Episode, tok) -> None:
    """Invariants every real episode must satisfy, whatever random text the tiny model wrote."""
    assert ep.turns
    for i, t in enumerate(ep.turns):
        assert 0 < t.output_tokens <= 12 and len(t.logprobs) == t.output_tokens
        assert all(lp <= 0 for lp in t.logprobs)
        assert t.finish_reason in ("stop", "length") and t.wall_s > 0
        assert t.input_tokens == len(ep.context_ids(i)) - t.output_tokens
        assert t.format_ok is False or t.finish_reason == "stop"
    assert ep.b_total >= ep.b_seq > 0 and ep.correct in (True, False)


@pytest.mark.parametrize("name", ["long_cot", "long_short", "sr", "pdr"])
def test_protocols_on_vllm(vllm_engine, tiny_adapters, name):
    rc = tiny_recipe(tiny_adapters, "protocol.pdr_schedule=[3,2,1]", "protocol.sr_rounds=1", "protocol.max_turns=4")
    eps = run_protocol(name, vllm_engine, [P1, P2], rc)
    assert [ep.problem_id for ep in eps] == ["p1", "p2"]
    for ep in eps:
        check_episode(ep, vllm_engine.tokenizer)
    if name == "long_short":
        ep = eps[0]
        assert ep.turns[0].role == "long" and (len(ep.turns) == 1 or ep.turns[1].role == "short")
        if len(ep.turns) > 2:
            assert ep.turns[2].parent == 0
        # vLLM's text and token ids agree with the chat rendering, so the long role's next turn continues its
        # chain (parent 0) rather than starting over, whatever the random model wrote
        from longshort.chat import prompt_text as render
        from longshort.protocols.calls import Setup
        from longshort.protocols.long_short import _State, _continuation

        tok = vllm_engine.tokenizer
        setup = Setup(vllm_engine, rc.protocol, rc.roles, 1024)
        for e, row in zip(eps, [P1, P2]):
            transcript = [(t.role, t.text) for t in e.turns[:2]]
            st = _State(transcript, {"long": (0, render(tok, rc.roles.long.system_prompt, row["problem"], [], "long"))})
            nxt = render(tok, rc.roles.long.system_prompt, row["problem"], transcript, "long")
            assert _continuation(setup, e, st, "long", nxt)[0] == 0
        if len(ep.turns) > 2:
            prompt = view(tok, rc, P1["problem"], [(t.role, t.text) for t in ep.turns[:2]], "long")
            assert tok.decode(ep.context_ids(2)[: ep.turns[2].input_tokens], skip_special_tokens=False) == prompt
    if name == "pdr":
        for ep in eps:
            assert sum(t.kind == "draft" for t in ep.turns) == 6 and ep.b_total > ep.b_seq


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_engine_reports_its_adapters_and_the_protocol_uses_them(kind, request, tiny_adapters):
    """A recipe whose roles name no adapter still runs each role on the adapter the engine serves."""
    engine = request.getfixturevalue(f"{kind}_engine")
    assert engine.adapters == tiny_adapters
    named = tiny_recipe(tiny_adapters, "protocol.max_turns=2")  # greedy: the roles' default temperature is 0
    unnamed = tiny_recipe(tiny_adapters, "protocol.max_turns=2", "roles.long.adapter=null", "roles.short.adapter=null")
    a = run_protocol("long_short", engine, [P1], named)[0]
    b = run_protocol("long_short", engine, [P1], unnamed)[0]
    assert [t.completion_ids for t in a.turns] == [t.completion_ids for t in b.turns]
    base = engine.score([a.turns[0].prompt_ids + a.turns[0].completion_ids], [None], [len(a.turns[0].prompt_ids)])[0]
    assert max(abs(x - y) for x, y in zip(base, b.turns[0].logprobs)) > 1e-3  # and that is not the base's output


def test_greedy_long_short_same_on_hf_and_vllm(vllm_engine, hf_engine, tiny_adapters):
    """Same recipe, greedy: the two engines produce the same first turn (the protocol is engine-agnostic)."""
    rc = tiny_recipe(tiny_adapters, "protocol.max_turns=2")
    a = run_protocol("long_short", vllm_engine, [P1], rc)[0]
    b = run_protocol("long_short", hf_engine, [P1], rc)[0]
    assert a.turns[0].prompt_ids == b.turns[0].prompt_ids
    assert a.turns[0].completion_ids == b.turns[0].completion_ids


# ---------------------------------------------------------------------------------------------- SmolLM2-135M


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> str:
    from longshort.models import materialise_smollm2

    return str(materialise_smollm2(tmp_path_factory.mktemp("smol") / "smollm2"))


def test_smollm2_long_cot_and_long_short_on_math500(smollm2, benchmarks_dir):
    """A real small instruct model through both single- and two-role protocols on real MATH500 problems."""
    import json

    from longshort.config.core import EngineConfig
    from longshort.engines import make_engine

    rows = []
    with open(Path(benchmarks_dir) / "math500.jsonl") as f:
        for i, line in enumerate(f):
            if i == 2:
                break
            d = json.loads(line)
            rows.append({"id": d.get("unique_id", str(i)), "problem": d["problem"], "answer": d["answer"]})
    rc = load_recipe(
        None,
        ["engine.max_model_len=768", "protocol.max_tokens=8", "protocol.temperature=0.0", "roles.long.max_tokens=8",
         "roles.short.max_tokens=6", "protocol.max_turns=2"],
    )
    engine = make_engine("hf", smollm2, EngineConfig(dtype="float32", max_model_len=768, batch_size=8))
    try:
        cot = run_protocol("long_cot", engine, rows, rc)
        ls = run_protocol("long_short", engine, rows, rc)
    finally:
        engine.close()
    tok = engine.tokenizer
    for ep, row in zip(cot, rows):
        (t,) = ep.turns
        assert t.input_tokens == n_tokens(tok, prompt_text(tok, rc.protocol.system_prompt, row["problem"], [], "long"))
        assert t.output_tokens > 0 and re.search(r"[A-Za-z]{3}", t.text)  # a real model writes words
        assert ep.correct in (True, False)
    for ep in ls:
        assert [t.role for t in ep.turns][:2] == ["long", "short"][: len(ep.turns)]
        assert ep.b_seq == ep.b_total == sum(t.output_tokens for t in ep.turns)  # one call per step: all on the path
        assert ep.tokens_read == sum(t.input_tokens for t in ep.turns)
        assert ep.meta["end"] in ("final", "malformed", "max_turns")
