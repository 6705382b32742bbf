"""The pipeline's plan without running it: fingerprints derived from what each stage reads, sealed sections,
up-front input checks, `--dry-run`."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest

from conftest import PIPELINE_RECIPE, REPO
from longshort.config.loader import apply_overrides, build, describe, dump_yaml, read_yaml
from longshort.config.pipeline import quick_overrides
from longshort.config.recipe import Recipe
from longshort.errors import ConfigError
from longshort.pipeline.plan import STAGES, UnreadSection, make_plan, readable, sealed

ORDER = [name for name, _ in STAGES]


def quick_data(tmp_path) -> dict:
    """The tiny pipeline recipe in --quick form, as a plain dict (what `load_recipe` validates)."""
    return apply_overrides(read_yaml(__import__("pathlib").Path(PIPELINE_RECIPE)),
                           quick_overrides(PIPELINE_RECIPE) + [f"run.out_dir={tmp_path}"])


def plan_of(data: dict):
    return make_plan(build(Recipe, data, "test"), "test")


def _get(d: dict, key: str):
    for k in key.split("."):
        d = d[k]
    return d


def _set(d: dict, key: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    *head, last = key.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value
    return d


def candidates(value, tp: str):
    """Changed values to try for a key of type `tp` now at `value`, most natural first."""
    if tp.startswith("'"):
        yield from (eval(o) for o in tp.split(" | ") if eval(o) != value)  # a Literal: every other option
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int):
        yield from (value + 1, value + 2, value + 4, 2 * value + 8, 1)
    elif isinstance(value, float):
        yield from (value + 0.1, value / 2, 0.5, 0.25)
    elif isinstance(value, str):
        yield from (value + "x", "constant", "mod:fn")
    elif isinstance(value, list):
        yield from (value[:-1], value + value[-1:], ["x"], [1])
    elif isinstance(value, dict):
        yield from ({**value, "zz": "x.jsonl"}, {**value, "run": {"seed": 5}}, {**value, "zz": 1})
    elif value is None:
        yield from (1, 4, 0.5, "x", True, ["x"])


def derived_changes(a, b) -> set[str]:
    """The stages whose readable sections or stage settings differ, and every stage downstream of them."""
    changed: set[str] = set()
    for name, after in STAGES:
        sa, sb = a.stages[name], b.stages[name]
        own = readable(sa.recipe, name) != readable(sb.recipe, name) or sa.extra != sb.extra
        if own or changed & set(after):
            changed.add(name)
    return changed


def test_every_key_changes_exactly_the_stages_that_read_it(tmp_path):
    data = quick_data(tmp_path)
    base = plan_of(data)
    resolved = __import__("longshort.config.loader", fromlist=["to_dict"]).to_dict(base.pipeline)
    unchangeable, reran = [], {}
    for key, tp, _ in describe(Recipe):
        for value in candidates(_get(resolved, key), tp):
            try:
                plan = plan_of(_set(data, key, value))
            except ConfigError:
                continue
            if plan.pipeline == base.pipeline:
                continue
            got = {n for n in ORDER if plan.stages[n].fingerprint != base.stages[n].fingerprint}
            assert got == derived_changes(base, plan), (key, value)
            reran[key] = got
            break
        else:
            unchangeable.append(key)
    assert not unchangeable, unchangeable
    assert len(reran) == len(describe(Recipe)) > 150
    after_coldstart = set(ORDER[ORDER.index("coldstart"):])
    assert reran["protocol.max_turns"] == after_coldstart  # the bug the READS table had: cold start read it unhashed
    assert reran["engine.kind"] >= {"coldstart", "analyze"}
    assert "analyze" in reran["data.on_error"]
    assert not reran["evaluation.limit"] & {"base", "data", "reasoner", "analyze", "coldstart", "sft_long", "sft_short", "rl"}
    assert reran["pipeline.benchmark_eval"] == {"benchmarks"}
    assert reran["synthetic.n"] >= set(ORDER[1:]) and "base" not in reran["synthetic.n"]
    assert reran["run.seed"] == set(ORDER)


def test_a_stage_cannot_read_what_its_fingerprint_does_not_cover(tmp_path):
    plan = plan_of(quick_data(tmp_path))
    r = sealed(plan.stages["reasoner"].recipe, "reasoner")
    assert r.sft.steps == plan.stages["reasoner"].recipe.sft.steps and r.run.seed == 0
    with pytest.raises(UnreadSection, match="'reasoner' read 'evaluation.limit'.*READS"):
        _ = r.evaluation.limit
    assert "limit: 6" in dump_yaml(r)  # the stage's config.yaml still shows the whole recipe
    for copied in (copy.deepcopy(r), pickle.loads(pickle.dumps(r))):  # copies and Ray's pickles stay sealed
        with pytest.raises(UnreadSection):
            _ = copied.protocol.max_turns
    assert plan.stages["reasoner"].recipe.evaluation.limit == 6  # the plan itself (checks, report) reads it all


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longshort.cli", "pipeline", "--recipe", PIPELINE_RECIPE, "--quick", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("override, key", [
    ("pipeline.benchmarks={math500: /nonexistent/math500.jsonl}", "pipeline.benchmarks.math500"),
    ("analysis.delta=no_such_module:fn", "analysis.delta"),
    ("model.base=/nonexistent/model", "model.base"),
    ("coldstart.rewriter_model=/nonexistent/rewriter", "coldstart.rewriter_model"),
])
def test_a_missing_input_stops_before_any_work(tmp_path, override, key):
    for mode in ([], ["--dry-run"]):
        res = _cli(*mode, f"run.out_dir={tmp_path}", override)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and f"'{key}'" in lines[0], res.stderr[-2000:]
        assert not (tmp_path / "tiny-quick").exists()  # nothing ran, nothing written


def test_dry_run_lists_every_stage_and_its_inputs(tmp_path):
    res = _cli("--dry-run", f"run.out_dir={tmp_path}", "pipeline.benchmarks={math500: ../shared/benchmarks/math500.jsonl}")
    assert res.returncode == 0, res.stderr[-2000:]
    for i, name in enumerate(ORDER, 1):
        assert f"[{i}/{len(ORDER)}] {name}: would run (never ran;" in res.stdout
    assert "pipeline.benchmarks.math500: ../shared/benchmarks/math500.jsonl (given)" in res.stdout
    assert f"thoughts: {tmp_path}/tiny-quick/analyze/thoughts.jsonl (from stage analyze)" in res.stdout
    assert not (tmp_path / "tiny-quick").exists()


def test_a_stage_reads_one_key_of_a_section_without_the_rest(tmp_path):
    plan = plan_of(quick_data(tmp_path))
    r = sealed(plan.stages["analyze"].recipe, "analyze")
    assert r.roles.long.system_prompt  # the one key of `roles` analysis reads (its fingerprint covers it)
    with pytest.raises(UnreadSection, match="'analyze' read 'roles.long.max_tokens'"):
        _ = r.roles.long.max_tokens
    with pytest.raises(UnreadSection, match="'analyze' read 'roles.short'"):
        _ = r.roles.short
    assert "roles.long.system_prompt" in readable(plan.stages["analyze"].recipe, "analyze")
    changed = plan_of(_set(quick_data(tmp_path), "roles.long.max_tokens", 77))
    assert {n for n in ORDER if changed.stages[n].fingerprint != plan.stages[n].fingerprint} == \
        {"rl", "rl_length", "rl_operator", "eval", "benchmarks", "export"}  # a sampling cap reruns no analysis or SFT


def test_vllm_serves_an_lm_head_lora_only_merged(tmp_path):
    """The tiny roles train a LoRA on lm_head: vLLM can serve them merged into their own base copies, not as
    adapters — a recipe asking for adapters fails at plan time, naming the key, not at stage 8."""
    data = quick_data(tmp_path)
    plan_of(_set(_set(data, "engine.kind", "vllm"), "engine.lora_mode", "merged"))
    with pytest.raises(ConfigError, match="pipeline.rl: engine.kind vllm cannot serve.*lm_head.*engine.lora_mode: merged"):
        plan_of(_set(_set(data, "engine.kind", "vllm"), "engine.lora_mode", "adapter"))
    with pytest.raises(ConfigError, match=r"pipeline.eval: engine.kind vllm .* lm_head .*pipeline.sft_long.sft.lora.target_modules"):
        plan_of(_set(data, "pipeline.eval", {"engine": {"kind": "vllm", "lora_mode": "adapter"}}))


def test_operator_rl_trains_one_round_of_the_evaluated_schedule(tmp_path):
    """Stage rl_operator: a fresh adapter on the reasoner, RL through PDR with the evaluated first round's drafts and one
    refine call (the operators paper's M = [m, 1]), for Long⊗Short's RL steps; evaluation keeps the whole schedule."""
    plan = plan_of(_set(quick_data(tmp_path), "protocol.pdr_schedule", [4, 2, 1]))
    op = plan.stages["rl_operator"].recipe
    assert op.protocol.name == "pdr" and op.protocol.pdr_schedule == [4, 1] and op.protocol.long_cot_role == "long"
    assert op.roles.long.adapter is None and op.rl.loss == "cispo" and op.rl.operator_mix == 0.5
    assert op.rl.steps == plan.stages["rl"].recipe.rl.steps and op.model.base == str(plan.reasoner)
    assert plan.stages["eval"].recipe.protocol.pdr_schedule == [4, 2, 1]
    without = plan_of(_set(quick_data(tmp_path), "pipeline.systems", ["long_cot", "pdr"]))
    assert not without.solo_rl_ran("rl_operator") and plan.solo_rl_ran("rl_operator")
