"""Reward terms on hand-made episodes: correctness, format, Kimi length, and both synergy terms."""

from __future__ import annotations

import pytest

from longshort.config.rl import RewardConfig
from longshort.rl.rewards import assign_rewards, length_rewards, needless_rethinks
from longshort.types import Episode, Turn


def _turn(role: str, text: str, n: int, parent: int = -1, ok: bool = True) -> Turn:
    return Turn(role=role, prompt_ids=[1, 2], completion_ids=list(range(3, 3 + n)), text=text, parent=parent, format_ok=ok)


def _episode(turns: list[Turn], answer: str | None, gold: str = "20", sample: int = 0) -> Episode:
    ep = Episode(problem_id="p", problem="1+19?", gold=gold, protocol="long_short", meta={"group": "g", "sample": sample})
    for t in turns:
        ep.add(t)
    ep.answer = answer
    return ep


def test_length_reward_matches_kimi_formula():
    # lengths 10, 20, 30: lambda = 0.5, 0, -0.5; wrong answers keep only the negative part
    assert length_rewards([10, 20, 30], [True, True, True]) == [0.5, 0.0, -0.5]
    assert length_rewards([10, 20, 30], [False, True, False]) == [0.0, 0.0, -0.5]
    assert length_rewards([7, 7], [True, False]) == [0.0, 0.0]


def test_reward_components_on_hand_made_group():
    # A: think, answer right at once (short 4 tokens). B: think, needless rethink holding the right answer, think,
    # answer (short 8 tokens). C: think (malformed), wrong answer.
    a = _episode([_turn("long", "<think> 1+19=20 </think>", 10), _turn("short", "<answer> \\boxed{20} </answer>", 4)], "20")
    b = _episode(
        [
            _turn("long", "<think> 1+19=20 </think>", 20),
            _turn("short", "<answer> 20 </rethink>", 6),
            _turn("long", "<think> yes 20 </think>", 10, parent=0),
            _turn("short", "<answer> \\boxed{20} </answer>", 8, parent=1),
        ],
        "20",
        sample=1,
    )
    c = _episode([_turn("long", "<think> 1+19=21", 40, ok=False), _turn("short", "<answer> \\boxed{21} </answer>", 4)], "21", sample=2)
    w = RewardConfig(correct=1.0, format=0.2, length=0.1, synergy=0.5)
    assign_rewards([a, b, c], w, short_max_tokens=16)

    assert [e.correct for e in (a, b, c)] == [True, True, False]
    assert c.rewards["long"]["format"] == -1.0 and c.rewards["short"]["format"] == 0.0
    # long tokens 10, 30, 40 -> lambda 0.5, -1/6, -0.5 (C wrong: min(0, -0.5))
    assert a.rewards["long"]["length"] == pytest.approx(0.5)
    assert b.rewards["long"]["length"] == pytest.approx(0.5 - 20 / 30)
    assert c.rewards["long"]["length"] == pytest.approx(-0.5)
    # short tokens 4, 14, 4 -> lambda 0.5, -0.5, 0.5 (C wrong: min(0, 0.5) = 0)
    assert [e.rewards["short"]["length"] for e in (a, b, c)] == pytest.approx([0.5, -0.5, 0.0])
    # synergy long: c * (1 - t_final/T_short) / (1 + R)
    assert a.rewards["long"]["synergy"] == pytest.approx(1 - 4 / 16)
    assert b.rewards["long"]["synergy"] == pytest.approx((1 - 8 / 16) / 2)
    assert c.rewards["long"]["synergy"] == 0.0
    # synergy short: c / (1 + needless rethinks); B handed back a right answer
    assert needless_rethinks(b) == 1
    assert a.rewards["short"]["synergy"] == 1.0 and b.rewards["short"]["synergy"] == 0.5 and c.rewards["short"]["synergy"] == 0.0
    total = 1.0 * 1 + 0.2 * 0 + 0.1 * 0.5 + 0.5 * 0.75
    assert a.rewards["long"]["total"] == pytest.approx(total)


def test_needed_rethink_is_not_penalised():
    ep = _episode(
        [
            _turn("long", "<think> 1+19=21 </think>", 5),
            _turn("short", "<answer> 21? </rethink>", 3),
            _turn("long", "<think> no, 20 </think>", 5, parent=0),
            _turn("short", "<answer> \\boxed{20} </answer>", 3, parent=1),
        ],
        "20",
    )
    assert needless_rethinks(ep) == 0
    assign_rewards([ep, _episode([_turn("long", "x", 5, ok=False)], None, sample=1)], RewardConfig(), short_max_tokens=10)
    assert ep.rewards["short"]["synergy"] == 1.0


def test_paper_preset_is_the_shared_outcome_reward(tmp_path):
    """`rl.rewards: paper` gives both roles of an episode the grader's verdict and nothing else (docs/rl.md)."""
    from longshort.config import load_recipe
    from longshort.errors import ConfigError

    w = load_recipe("recipes/tiny/rl.yaml", ["rl.rewards=paper"]).rl.rewards
    right = _episode([_turn("long", "<think> 1+19=20", 30, ok=False), _turn("short", "<answer> \\boxed{20} </answer>", 4)], "20")
    wrong = _episode([_turn("long", "<think> 1+19=21 </think>", 5), _turn("short", "<answer> \\boxed{21} </answer>", 2)], "21", sample=1)
    assign_rewards([right, wrong], w, short_max_tokens=16)
    assert [ep.rewards[r]["total"] for ep in (right, wrong) for r in ("long", "short")] == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="rl.rewards.*unknown preset 'papr'"):
        load_recipe("recipes/tiny/rl.yaml", ["rl.rewards=papr"])
