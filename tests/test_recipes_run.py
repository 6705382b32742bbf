"""The paper-scale recipes run to the report card (issue #15): each recipe's `--quick` plan, resolved as
`longshort pipeline --quick` resolves it, goes through every stage and the report card in CI, so a recipe that
cannot finish fails here and not hours into a cluster run.

Only what a CPU cannot hold is replaced: the 7B/8B base by the session's tiny model (`model.base`), the engine by
the scripted engine of tests/test_protocols.py (the one engine double: deterministic, tag-correct answers, every
request recorded), and the traces and held-out problems by a few rows written here. The runner is the real one
(plan, fingerprints, sealed recipes, stage.json, report card), and so are the stages whose work is generation or
data: `base`, `data`, `analyze`, `coldstart`, `eval`, `benchmarks` (on the real benchmark files). The training
stages need the GPUs and Ray, so each runs the part of its stage a CPU can: SFT stages load their real training
examples as the trainer does (from the real cold-start files) and then serve the session's random adapters; RL
stages run one real rollout step of their protocol (RolloutWorker on the scripted engine, rewards, advantages)
and checkpoint without a learner update; `export` finds RL's final adapters as export does. Their GPU-scale
resources are checked by tests/test_recipes_scale.py.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import PIPELINE_STAGES
from conftest import REPO as _REPO
from test_protocols import ScriptedEngine
from longshort.config import load_recipe
from longshort.config.pipeline import SYSTEMS, quick_overrides
from longshort.errors import ConfigError
from longshort.pipeline.plan import make_plan
from longshort.types import ROLES

REPO = Path(_REPO)
PAPER = ["recipes/qwen2.5-7b/pipeline.yaml", "recipes/llama3.1-8b/pipeline.yaml"]
PAPER_BENCHMARKS = {"math500", "aime24", "aime25", "amc23", "gsm8k"}
TEST_ROWS = 8


def _write_data(tmp: Path) -> tuple[Path, Path]:
    """R1-style traces (a <think> block of several thoughts, then a boxed summary) and held-out problems."""

    def row(i: int) -> dict:
        a, b = 10 + i, 3 + 2 * i
        response = (f"<think>\nFirst, {a} + {b}: add the tens.\n\nWait, let me check the units again.\n\n"
                    f"So {a} + {b} = {a + b}.\n</think>\nThe answer is \\boxed{{{a + b}}}.")
        return {"id": f"t{i}", "problem": f"What is {a} + {b}?", "answer": str(a + b), "response": response}

    train, test = tmp / "train.jsonl", tmp / "test.jsonl"
    train.write_text("".join(json.dumps(row(i)) + "\n" for i in range(12)))
    test.write_text("".join(json.dumps({k: v for k, v in row(i).items() if k != "response"}) + "\n" for i in range(12, 12 + TEST_ROWS)))
    return train, test


def _script(prompt: str, request, k: int) -> str:
    """Each request answered in its protocol's format: sums of the last problem in the prompt solved, judges pick."""
    sums = re.findall(r"What is (\d+) \+ (\d+)\?", prompt)
    n = int(sums[-1][0]) + int(sums[-1][1]) if sums else 0
    if "Reply with the numbers" in prompt:  # a PDR judge
        want = int(re.search(r"numbers of the (\d+) best", prompt).group(1))
        return "best: \\boxed{" + ", ".join(str(j) for j in range(1, want + 1)) + "}"
    if "Write a short summary" in prompt:  # a PDR summary
        return f"the drafts say {n}"
    if "</think>" in request.params.stop:  # a Long⊗Short long turn (by its stop string: long CoT may run on `long`)
        return f"<think>the sum is {n}</think>"
    if "</answer>" in request.params.stop:  # a Long⊗Short short turn
        return f"<answer>so \\boxed{{{n}}}</answer>"
    return f"the sum is {n}, so \\boxed{{{n}}}"  # long CoT, SR, PDR drafts, the analysis rollouts


@pytest.fixture
def scripted(monkeypatch, tiny_model, tiny_tokenizer, tiny_adapters):
    """Every engine a stage starts is a scripted one; every protocol run records its stage and temperatures; the
    training stages run their CPU part (module docstring). Returns {(stage, protocol): {temperatures}}."""
    import longshort.engines
    import longshort.eval
    import longshort.protocols
    from longshort.pipeline import stages

    sampled: dict[tuple[str, str], set[float]] = defaultdict(set)
    now: list[str] = []  # the stage running

    def make_engine(kind, model_path, cfg, adapters=None, seed=0):
        return ScriptedEngine(tiny_tokenizer, _script, adapters=tuple(adapters or ()))

    real_protocol = longshort.protocols.run_protocol

    def run_protocol(name, engine, problems, recipe, seed=None):
        calls = len(engine.calls)
        episodes = real_protocol(name, engine, problems, recipe, seed)
        sampled[(now[-1], name)] |= {r.params.temperature for call in engine.calls[calls:] for r in call}
        return episodes

    def sft(plan, stage, progress):
        from longshort.models import load_tokenizer
        from longshort.sft.data import load_examples

        r, cfg = stage.recipe, stage.recipe.sft
        tok = load_tokenizer(r.model.base)
        examples, counts, _ = load_examples(cfg.data, tok, cfg.role, getattr(r.roles, cfg.role).system_prompt, cfg.max_length,
                                            r.data.on_error)
        assert examples, f"stage {stage.name}: no training examples for role {cfg.role} in {cfg.data} ({dict(counts)})"
        trained = tiny_model if stage.name == "reasoner" else tiny_adapters[cfg.role]
        (stage.dir / "final").symlink_to(trained, target_is_directory=True)
        return {**({"source": "train"} if stage.name == "reasoner" else {}), "role": cfg.role, "mode": cfg.mode,
                "steps": cfg.steps, "examples": len(examples)}

    def rl(plan, stage, progress):
        from longshort.rl import checkpoint
        from longshort.rl.actors import RolloutWorker, read_adapter
        from longshort.rl.advantages import assign_advantages
        from longshort.rl.batches import batch_at, load_problems
        from longshort.rl.metrics import episode_row
        from longshort.rl.rewards import assign_rewards

        r = stage.recipe
        files = {role: read_adapter(getattr(r.roles, role).adapter or tiny_adapters[role]) for role in ROLES}  # rl_length: fresh
        worker = RolloutWorker(str(plan.reasoner), r, files, r.run.seed)
        try:
            episodes = worker.rollout(batch_at(load_problems(r), 0, r.rl.problems_per_step, r.run.seed), r.rl.group_size, 1, r.run.seed)
        finally:
            worker.close()
            shutil.rmtree(worker.dir, ignore_errors=True)
        assert len(episodes) == r.rl.problems_per_step * r.rl.group_size
        assign_rewards(episodes, r.rl.rewards, r.roles.short.max_tokens)
        assign_advantages(episodes, r.rl.estimator, ROLES)
        checkpoint.save(stage.dir / "checkpoints", r.rl.steps, {"adapters": files, "trainer": b""}, {"cursor": 0}, 1)
        return {"steps": r.rl.steps, "resumed_from": 0, "last": episode_row(episodes)}

    def export(plan, stage, progress):
        adapters = stages.final_adapters(plan)  # what export reads: RL's newest complete checkpoint
        assert set(adapters) == set(ROLES)
        return {"out": str(stage.dir / "export"), "roles": {}}

    def tracked(name, runner):
        def run(plan, stage, progress):
            now.append(name)
            try:
                return runner(plan, stage, progress)
            finally:
                now.pop()
        return run

    monkeypatch.setattr(longshort.engines, "make_engine", make_engine)
    monkeypatch.setattr(longshort.protocols, "run_protocol", run_protocol)  # RL's rollouts
    monkeypatch.setattr(longshort.eval, "run_protocol", run_protocol)  # evaluation
    cpu_part = {"reasoner": sft, "sft_long": sft, "sft_short": sft, "rl": rl, "rl_length": rl, "rl_operator": rl, "export": export}
    for name, runner in list(stages.RUNNERS.items()):
        monkeypatch.setitem(stages.RUNNERS, name, tracked(name, cpu_part.get(name, runner)))
    monkeypatch.chdir(REPO)  # the recipes' benchmark paths are relative to the repository root
    return sampled


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PAPER, ids=[Path(p).parent.name for p in PAPER])
def test_paper_recipe_runs_every_stage_to_the_report_card(path, tmp_path, tiny_model, scripted):
    from longshort.pipeline.runner import run_plan

    train, test = _write_data(tmp_path)
    overrides = quick_overrides(REPO / path) + [f"run.out_dir={tmp_path}", f"model.base={tiny_model}",
                                                f"data.train={train}", f"data.test={test}"]
    plan = make_plan(load_recipe(str(REPO / path), overrides), path)
    assert list(plan.stages) == list(PIPELINE_STAGES)
    log: list[str] = []
    report = run_plan(plan, progress=False, log=log.append)
    run = plan.run_dir

    for i, stage in enumerate(PIPELINE_STAGES, 1):
        assert json.loads((run / stage / "stage.json").read_text())["status"] == "done", stage
        assert f"[{i}/{len(PIPELINE_STAGES)}] {stage}: done" in "\n".join(log), stage
    assert set(report["systems"]) == set(SYSTEMS)  # the paper recipes compare every system
    for name, row in report["systems"].items():
        assert row["problems"] == TEST_ROWS and row["answered_rate"] == 1.0 and row["b_total"] >= row["b_seq"] > 0, name
    assert report["systems"]["pdr"]["b_total"] > report["systems"]["pdr"]["b_seq"]  # parallel drafts and a judge
    assert set(report["benchmarks"]) == {"long_cot", "long_short_rl"}
    for name, by_bench in report["benchmarks"].items():
        assert set(by_bench) == PAPER_BENCHMARKS, name
        assert all(row["problems"] == 8 for row in by_bench.values()), name  # the quick benchmark limit
    assert "## Headline (measured)" in (run / "report.md").read_text()
    assert (run / "viewer.html").is_file()

    # each system at its own sampling settings: greedy long CoT and Long⊗Short, sampled SR and PDR on the held-out
    # split; sampled benchmarks; RL rollouts (Long⊗Short's and the length-penalty baseline's long CoT) sampled
    assert scripted[("eval", "long_cot")] == {0.0} and scripted[("eval", "long_short")] == {0.0}
    for system in ("sr", "pdr"):
        assert scripted[("eval", system)] and min(scripted[("eval", system)]) > 0, system
    assert min(scripted[("benchmarks", "long_cot")] | scripted[("benchmarks", "long_short")]) > 0
    assert min(scripted[("rl", "long_short")]) > 0 and min(scripted[("rl_length", "long_cot")]) > 0
    assert min(scripted[("rl_operator", "pdr")]) > 0  # RL through the operator samples its drafts too


@pytest.mark.parametrize("path", PAPER, ids=[Path(p).parent.name for p in PAPER])
def test_greedy_pdr_drafts_stop_the_plan_before_any_stage(path, tmp_path):
    """The old setting (one greedy `protocol.temperature` for every system, PDR included) fails in seconds."""
    with pytest.raises(ConfigError) as e:
        make_plan(load_recipe(str(REPO / path), [f"run.out_dir={tmp_path}", "protocol.pdr_temperature=null"]), path)
    msg = str(e.value)
    assert "\n" not in msg and "pipeline.eval" in msg and "key 'protocol.temperature' is 0 (greedy)" in msg
    assert "protocol.pdr_temperature" in msg
    assert not (tmp_path / Path(path).parent.name).exists()
