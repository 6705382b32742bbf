"""Resume trials for every stage that resumes: nothing is logged twice (a kill before the first checkpoint, a line
torn by the kill), and a resume with settings other than the ones the state was made with stops with one line
naming the key (exit 2), or starts over with run.resume=never. (Evaluation: tests/test_eval.py, changed protocol.)"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from harness import REPO, count_rows, jsonl, kill_after_progress, one_error_line, run, same_rows, start, trial_seeds

from conftest import RL_RECIPE, rl_overrides
from longshort.cli import main
from longshort.config import load_recipe
from longshort.run import checkpoint

SFT_RECIPE = str(REPO / "recipes" / "tiny" / "sft_long.yaml")
TORN = '{"step": 99, "loss": 0.12'  # half a row, as a SIGKILL mid-append leaves it


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tear(*logs: Path) -> None:
    for log in logs:
        with open(log, "a", encoding="utf-8") as f:
            f.write(TORN)


def _tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with one error line and no traceback. Returns that line."""
    assert main(argv) == 2
    return one_error_line(capsys.readouterr().err, f"longshort {argv[0]}: error: ")


# ---- SFT ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", trial_seeds())
def test_sft_killed_before_its_first_checkpoint_logs_every_step_once(seed, tmp_path, tiny_model):
    """No checkpoint until the last step: the kill leaves only log rows (and a torn line); the rerun starts from
    step 0 and must not append to them."""
    rng = random.Random(seed)
    steps = 10
    args = ["sft", "--recipe", SFT_RECIPE, f"run.out_dir={tmp_path}", "run.name=k", f"model.base={tiny_model}",
            f"sft.steps={steps}", "sft.save_every=100", "sft.eval_every=5"]  # fmt: skip
    run_dir = tmp_path / "k"
    metrics = run_dir / "metrics.jsonl"
    kill_after_progress(args, tmp_path / "killed.err", count_rows(metrics), rng.randint(2, 5), rng, jitter_s=0.3)
    assert checkpoint.latest(run_dir / "checkpoints") is None
    killed = jsonl(metrics)
    assert 2 <= len(killed) < steps
    _tear(metrics)
    rc, err = run(args, tmp_path / "rerun.err")
    assert rc == 0, err[-3000:]
    assert "resuming from" not in err
    rows = jsonl(metrics)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # each step once, the torn line gone
    assert (diff := same_rows(killed, rows[: len(killed)], rel=0.0, abs_=1e-7, skip=("wall_s",))) is None, diff
    assert _tensorboard_steps(run_dir, "loss") == list(range(1, steps + 1))


def test_sft_torn_line_after_a_checkpoint_is_dropped_and_the_step_redone(tmp_path, tiny_model):
    from longshort.sft.trainer import Trainer

    keys = [f"run.out_dir={tmp_path}", f"model.base={tiny_model}", "sft.steps=8", "sft.save_every=2", "sft.eval_every=100"]
    straight = load_recipe(SFT_RECIPE, [*keys, "run.name=straight"])
    Trainer(straight, progress=False).run()
    rec = load_recipe(SFT_RECIPE, [*keys, "run.name=cut"])
    assert Trainer(rec, progress=False, stop_after=4).run() == {"stopped_at": 4}
    metrics = rec.run_dir / "metrics.jsonl"
    with open(metrics, "a") as f:  # the killed run had logged step 5 and was writing step 6; newest checkpoint: 4
        f.write(json.dumps({**jsonl(metrics)[-1], "step": 5, "loss": 123.0}) + "\n")
    _tear(metrics)
    messages: list[str] = []
    Trainer(rec, log=messages.append, progress=False).run()
    assert any("resuming from" in m and "step-000004" in m for m in messages)
    rows = jsonl(metrics)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in jsonl(straight.run_dir / "metrics.jsonl")], abs=1e-6)
    assert _tensorboard_steps(rec.run_dir, "loss") == list(range(1, 9))


def test_sft_resume_with_changed_settings_names_the_key(tmp_path, tiny_model, capsys):
    from longshort.sft.trainer import Trainer

    keys = [f"run.out_dir={tmp_path}", "run.name=s", f"model.base={tiny_model}", "sft.steps=6", "sft.save_every=2",
            "sft.eval_every=100"]  # fmt: skip
    assert Trainer(load_recipe(SFT_RECIPE, keys), progress=False, stop_after=2).run() == {"stopped_at": 2}
    argv = ["sft", "--recipe", SFT_RECIPE, *keys]
    for change, key in (("sft.role=short", "sft.role"), ("sft.lora.r=4", "sft.lora.r"), ("sft.mode=full", "sft.mode"),
                        ("sft.lr=1e-3", "sft.lr"), ("model.tiny.num_layers=2", "model.tiny.num_layers")):  # fmt: skip
        line = _error(capsys, [*argv, change])
        assert f"key '{key}'" in line and "step-000002" in line and "run.resume=never" in line, line
    assert main([*argv, "sft.steps=8"]) == 0  # more steps: the same state goes on
    capsys.readouterr()
    run_dir = tmp_path / "s"
    assert [r["step"] for r in jsonl(run_dir / "metrics.jsonl")] == list(range(1, 9))
    line = _error(capsys, [*argv, "sft.steps=8", "sft.role=short"])  # a finished run is checked too
    assert "key 'sft.role'" in line and "run.json" in line, line
    assert main([*argv, "sft.role=short", "run.resume=never"]) == 0  # starts over as the short role
    info = json.loads((run_dir / "run.json").read_text())
    assert info["role"] == "short" and [r["step"] for r in jsonl(run_dir / "metrics.jsonl")] == list(range(1, 7))


# ---- analysis -----------------------------------------------------------------------------------------------

ANALYZE = ["analyze", "--recipe", "recipes/tiny/analyze.yaml", "engine.kind=hf", "synthetic.n=20",
           "analysis.batch_traces=1", "analysis.rollouts=2", "analysis.max_tokens=16"]  # fmt: skip


def test_analyze_resume_with_changed_settings_names_the_key(tmp_path, capsys):
    argv = [*ANALYZE, f"run.out_dir={tmp_path}", "run.name=a"]
    assert main([*argv, "analysis.max_traces=2"]) == 0
    rollouts = tmp_path / "a" / "rollouts.jsonl"
    assert len(jsonl(rollouts)) == 2
    capsys.readouterr()
    for change, key in (("analysis.rollouts=3", "analysis.rollouts"), ("analysis.temperature=0.3", "analysis.temperature"),
                        ("analysis.chunker=llm", "analysis.chunker"), ("run.seed=1", "run.seed")):  # fmt: skip
        line = _error(capsys, [*argv, "analysis.max_traces=2", change])
        assert f"key '{key}'" in line and "run.resume=never" in line, line
    _tear(rollouts)
    assert main([*argv, "analysis.max_traces=3", "analysis.alpha=0.1"]) == 0  # more traces, other scoring: resumes
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["resumed"] == 2 and summary["rolled_out"] == 1
    assert sorted(r["id"] for r in jsonl(rollouts)) == sorted({r["id"] for r in jsonl(rollouts)})  # once each
    assert main([*argv, "analysis.max_traces=2", "analysis.rollouts=3", "run.resume=never"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["resumed"] == 0 and all(r["n"] == 3 for r in jsonl(rollouts))


# ---- RL -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", trial_seeds())
def test_rl_killed_before_its_first_checkpoint_logs_every_step_once_and_checks_settings(seed, tmp_path, tiny_model,
                                                                                        tiny_adapters):  # fmt: skip
    rng = random.Random(seed)
    steps = 3
    args = ["rl", "--recipe", RL_RECIPE, "--no-progress",
            *rl_overrides(tmp_path, tiny_model, tiny_adapters, f"rl.steps={steps}", "rl.checkpoint_every=100",
                          "rl.ray_num_cpus=2", "run.name=r")]  # fmt: skip
    run_dir = tmp_path / "r"
    metrics, episodes = run_dir / "metrics.jsonl", run_dir / "episodes.jsonl"
    kill_after_progress(args, tmp_path / "killed.err", count_rows(metrics), 1, rng, jitter_s=2.0, timeout=400)
    assert checkpoint.latest(run_dir / "checkpoints") is None
    killed = jsonl(metrics)
    assert 1 <= len(killed) < steps
    _tear(metrics, episodes)
    rc, err = run(args, tmp_path / "rerun.err", timeout=500)
    assert rc == 0, err[-3000:]
    rows = jsonl(metrics)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # each step once, the torn line gone
    assert (diff := same_rows(killed, rows[: len(killed)])) is None, diff  # the same steps again (HF engine: exact)
    per_step = Counter(e["meta"]["step"] for e in jsonl(episodes))
    assert per_step == {s: per_step[1] for s in range(1, steps + 1)} and per_step[1] > 0  # each step's episodes once
    assert _tensorboard_steps(run_dir, "accuracy") == list(range(1, steps + 1))

    # the run ended with a checkpoint at step 3: resuming it with a learning rate of another run is refused
    r = start([*args, f"rl.steps={steps + 1}", "rl.lr=5e-4"], tmp_path / "changed.err")
    assert r.finish(300) == 2
    line = one_error_line(r.stderr, "longshort rl: error: key 'rl.lr' is 0.0005 but checkpoint ")
    assert "step-000003" in line and "run.resume=never" in line, line
    assert [r["step"] for r in jsonl(metrics)] == list(range(1, steps + 1))  # nothing was touched
