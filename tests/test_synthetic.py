"""The synthetic long-CoT task: determinism, disjoint splits, correct and verbose traces."""

from __future__ import annotations

import json
import re

import pytest

from longshort.config.synthetic import SyntheticConfig
from longshort.data.synthetic import generate, write_task
from longshort.errors import ConfigError
from longshort.grading import extract_answer


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deterministic_by_seed():
    assert generate(50, 3) == generate(50, 3)
    assert generate(50, 3) != generate(50, 4)


def test_write_task_splits_are_disjoint_and_complete(tmp_path):
    counts = write_task(400, 7, tmp_path, test_fraction=0.25)
    train, test = _rows(tmp_path / "train.jsonl"), _rows(tmp_path / "test.jsonl")
    assert counts == {"train": 300, "test": 100, "total": 400}
    assert (len(train), len(test)) == (300, 100)
    content = lambda rows: {tuple(r["numbers"]) for r in rows}  # noqa: E731
    assert not content(train) & content(test)  # disjoint by problem content, whatever the wording
    assert len(content(train)) == 300 and len({r["problem"] for r in train + test}) == 400
    assert len({r["id"] for r in train + test}) == 400
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["counts"] == counts and meta["seed"] == 7
    assert 0.2 < meta["redundant_step_share"] < 0.8  # verbose: a real share of the steps is redundant


def test_traces_are_correct_single_digit_chains(tmp_path):
    cfg = SyntheticConfig()
    for r in generate(300, 0, cfg):
        nums = r["numbers"]
        assert all(1 <= x <= 9 for x in nums) and cfg.min_ops <= len(nums) - 1 <= cfg.max_ops
        assert r["answer"] == str(sum(nums))
        resp = r["response"]
        assert resp.startswith("<think>\n") and resp.endswith("\n</think>\n\\boxed{" + r["answer"] + "}")
        assert extract_answer(resp) == r["answer"]
        body = resp[len("<think>\n") : resp.index("\n</think>")]
        steps = body.split("\n\n")
        assert all(s and "\n" not in s for s in steps)  # one line per step
        for s in steps:  # every stated computation is right
            lhs, eq, rhs = s.split("; left:")[0].rstrip(".").rpartition(" = ")
            if eq:
                terms = re.findall(r"\d+", lhs.split(":")[-1].split(",")[-1])
                assert sum(map(int, terms)) == int(rhs.split(".")[0]), s
        adds = [s for s in steps if re.match(r"(Now add|Add) \d", s)]
        assert len(adds) == len(nums) - 1  # each essential addition exactly once, with its running sum
        # The start and every addition end with the digits still to add: the next operand is the list's head.
        start = next(s for s in steps if s.startswith("Start with"))
        lefts = [re.search(r"; left: ([\d ]+|none)\.$", s).group(1) for s in [start, *adds]]
        assert lefts == [" ".join(map(str, nums[i:])) or "none" for i in range(1, len(nums) + 1)]
        assert [int(re.match(r"(?:Now add|Add) (\d)", s).group(1)) for s in adds] == nums[1:]
        assert steps[-1] == f"So the answer is {r['answer']}."


def test_redundancy_is_configurable():
    plain = SyntheticConfig(p_verify=0, p_alternative=0, p_doubt=0, p_recap=0, p_restate=0)
    for r in generate(50, 1, plain):
        assert r["steps"] == r["essential_steps"] == len(r["numbers"]) + 1


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="synthetic.min_ops"):
        SyntheticConfig(min_ops=0)
    with pytest.raises(ConfigError, match="synthetic.p_verify"):
        SyntheticConfig(p_verify=1.5)
    with pytest.raises(ConfigError, match="distinct"):
        generate(100, 0, SyntheticConfig(min_ops=1, max_ops=1))  # only 81 distinct problems exist
