"""SIGKILL `longshort sft` / `longshort analyze` / `longshort pipeline` (real CLI subprocesses) at a seeded random
point after progress, rerun with run.resume=auto: nothing lost, nothing repeated, and for SFT the loss curve and for
the pipeline the RL curve and report card of an uninterrupted run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from harness import REPO, SECRET, count_rows, jsonl, kill_after_progress, run, same_rows, trial_seeds

from conftest import PIPELINE_RECIPE, PIPELINE_STAGES
from longshort.config import load_recipe
from longshort.run import checkpoint

SFT_RECIPE = REPO / "recipes" / "tiny" / "sft_long.yaml"
SFT_STEPS = 16
SFT_KEYS = (f"sft.steps={SFT_STEPS}", "sft.save_every=4", "sft.eval_every=4", "sft.lora.dropout=0.1")


@pytest.fixture(scope="module")
def sft_straight(tmp_path_factory, tiny_model) -> list[dict]:
    """The uninterrupted run's metrics rows (in-process: the same code path, no subprocess start-up)."""
    import torch

    from longshort.sft.trainer import Trainer

    out = tmp_path_factory.mktemp("sft_straight")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares 2 cores; results do not depend on the thread count
    try:
        rec = load_recipe(str(SFT_RECIPE), [f"run.out_dir={out}", "run.name=s", f"model.base={tiny_model}", *SFT_KEYS])
        Trainer(rec).run()
    finally:
        torch.set_num_threads(n)
    return jsonl(rec.run_dir / "metrics.jsonl")


@pytest.mark.parametrize("seed", trial_seeds())
def test_sft_killed_resumes_to_the_same_loss_curve(seed, sft_straight, tmp_path, tiny_model):
    rng = random.Random(seed)
    args = ["sft", "--recipe", str(SFT_RECIPE), f"run.out_dir={tmp_path}", "run.name=k", f"model.base={tiny_model}", *SFT_KEYS]
    metrics = tmp_path / "k" / "metrics.jsonl"
    at = rng.randint(2, SFT_STEPS - 6)
    done = kill_after_progress(args, tmp_path / "killed.err", count_rows(metrics), at, rng, jitter_s=0.3)
    assert not (tmp_path / "k" / "run.json").exists() and done < SFT_STEPS
    rc, err = run(args, tmp_path / "resumed.err")
    assert rc == 0, err[-3000:]
    if done >= 4:  # a checkpoint existed when it was killed
        assert "resuming from" in err
    rows = jsonl(metrics)
    assert [r["step"] for r in rows] == list(range(1, SFT_STEPS + 1))  # nothing lost, nothing logged twice
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in sft_straight], abs=1e-6)
    want = [r["eval_loss"] for r in sft_straight if "eval_loss" in r]
    assert [r["eval_loss"] for r in rows if "eval_loss" in r] == pytest.approx(want, abs=1e-6)
    for f in [p for p in (tmp_path / "k").rglob("*") if p.is_file()]:
        assert SECRET.encode() not in f.read_bytes(), f  # the hub token in the environment reaches no file


ANALYZE = ["analyze", "--recipe", "recipes/tiny/analyze.yaml", "engine.kind=hf", "synthetic.n=20", "analysis.max_traces=6",
           "analysis.batch_traces=1", "analysis.rollouts=2", "analysis.max_tokens=24"]  # fmt: skip


@pytest.mark.parametrize("seed", trial_seeds())
def test_analyze_killed_mid_rollouts_resumes_without_loss_or_repeats(seed, tmp_path: Path):
    """Kill once some traces are rolled out; the rerun rolls out the rest exactly once."""
    rng = random.Random(seed)
    args = [*ANALYZE, f"run.out_dir={tmp_path}", "run.name=kill"]
    rollouts = tmp_path / "kill" / "rollouts.jsonl"
    done = kill_after_progress(args, tmp_path / "killed.err", count_rows(rollouts), rng.randint(2, 3), rng, jitter_s=0.5)
    assert 2 <= done < 6, "the run should be killed mid-rollouts"
    assert not (tmp_path / "kill" / "thoughts.jsonl").exists()
    rc, err = run(args, tmp_path / "resumed.err")
    assert rc == 0, err[-3000:]
    ids = [r["id"] for r in jsonl(rollouts)]
    assert len(ids) == 6 == len(set(ids))  # nothing lost, nothing twice
    s = json.loads((tmp_path / "kill" / "summary.json").read_text())
    assert s["resumed"] >= 2 and s["resumed"] + s["rolled_out"] == 6 == s["traces_scored"]


def _quick_plan(overrides: list[str]):
    """The plan `longshort pipeline --quick OVERRIDES` runs: its stage fingerprints are what a finished stage's
    `stage.json` must carry."""
    from longshort.config.pipeline import quick_overrides
    from longshort.pipeline.plan import make_plan

    return make_plan(load_recipe(PIPELINE_RECIPE, [*quick_overrides(PIPELINE_RECIPE), *overrides]), PIPELINE_RECIPE)


def _units(straight: Path) -> list[tuple[str, float]]:
    """The pipeline's units of progress in order, each with its duration in the uninterrupted run `straight`: a stage
    ends when its stage.json appears, an RL step when its metrics row does (so kills land between RL checkpoints too).
    "rl step 1" holds the Ray start; "rl" is the rest of the stage after the last step (last checkpoint, Ray shutdown)."""
    sec = {s: json.loads((straight / s / "stage.json").read_text())["seconds"] for s in PIPELINE_STAGES}
    steps = [r["time/step"] for r in jsonl(straight / "rl" / "metrics.jsonl")]
    rl = straight / "rl"
    tail = (rl / "stage.json").stat().st_mtime - (rl / "metrics.jsonl").stat().st_mtime
    i = PIPELINE_STAGES.index("rl")
    return ([(s, sec[s]) for s in PIPELINE_STAGES[:i]] + [("rl step 1", sec["rl"] - sum(steps[1:]) - tail)]
            + [(f"rl step {k}", t) for k, t in enumerate(steps[1:], 2)] + [("rl", tail)]
            + [(s, sec[s]) for s in PIPELINE_STAGES[i + 1 :]])  # fmt: skip


@pytest.mark.parametrize("seed", trial_seeds())
def test_pipeline_killed_mid_stage_resumes_to_the_same_report(seed, pipeline_quick, tmp_path):
    """Kill `longshort pipeline --quick` once k units of progress are done (k seeded; a unit is a stage or an RL step),
    a seeded fraction into the next unit (jitter drawn within its duration in the uninterrupted run, so the kill lands
    mid-stage: in SFT, in the Ray RL stage before or between its checkpoints, in eval, ...). The rerun must reuse the
    finished stages, resume the interrupted one, run the rest once, and end with the uninterrupted run's RL curve and
    evaluation results (HF engine, every sampled call seeded: deterministic)."""
    rng = random.Random(seed)
    straight, straight_args = pipeline_quick
    args = [f"run.out_dir={tmp_path}", *(a for a in straight_args if not a.startswith("run.out_dir="))]
    cmd = ["pipeline", "--recipe", PIPELINE_RECIPE, "--quick", "--no-progress", *args]
    run_dir, n = tmp_path / "tiny-quick", len(PIPELINE_STAGES)

    def finished() -> list[str]:
        return [s for s in PIPELINE_STAGES if (run_dir / s / "stage.json").is_file()]

    def progress() -> int:  # units done: finished stages + logged RL steps
        return len(finished()) + len(jsonl(run_dir / "rl" / "metrics.jsonl"))

    units = _units(straight)
    at = rng.randint(1, len(units) - 1)  # kill while unit `at` (0-based; with the jitter maybe a later one) runs
    kill_after_progress(cmd, tmp_path / "killed.err", progress, at, rng, jitter_s=0.9 * units[at][1], timeout=400)
    done = finished()
    assert not (run_dir / "report.json").exists()  # (if every stage is done, the kill hit the report card)
    assert done == list(PIPELINE_STAGES[: len(done)])  # stages finish in plan order
    before = {s: (run_dir / s / "stage.json").read_bytes() for s in done}
    cut = PIPELINE_STAGES[len(done)] if len(done) < n else None  # the stage the kill interrupted
    attempted = cut is not None and (run_dir / cut / "attempt.json").is_file()
    assert not any((run_dir / s).exists() for s in PIPELINE_STAGES[len(done) + 1 :])
    rl_ckpt = checkpoint.latest(run_dir / "rl" / "checkpoints") if cut == "rl" else None  # killed mid-RL: resume point

    rc, err = run(cmd, tmp_path / "resumed.err", timeout=600)
    assert rc == 0, err[-3000:]
    killed_err = (tmp_path / "killed.err").read_text()
    plan = _quick_plan(args)
    for i, s in enumerate(PIPELINE_STAGES, 1):
        tag = f"[{i}/{n}] {s}:"
        if s in done:  # finished before the kill: reused as it was
            assert f"{tag} cached" in err and (run_dir / s / "stage.json").read_bytes() == before[s], s
            assert f"{tag} done" not in err
        else:
            assert f"{tag} {'resuming' if s == cut and attempted else 'running'} in " in err, (s, err[-3000:])
            assert err.count(f"{tag} done in ") == 1 and f"{tag} done" not in killed_err, s
        rec = json.loads((run_dir / s / "stage.json").read_text())
        assert rec["status"] == "done" and rec["fingerprint"] == plan.stages[s].fingerprint, s

    if cut == "rl":  # the rerun's RL restarted from the newest intact checkpoint the kill left (0: none yet)
        rl = json.loads((run_dir / "rl" / "stage.json").read_text())["summary"]
        assert rl["resumed_from"] == (rl_ckpt.step if rl_ckpt else 0), (rl, err[-3000:])
    rows = jsonl(run_dir / "rl" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, plan.stages["rl"].recipe.rl.steps + 1))  # each step once
    # sync/bytes is the size of the adapter folders sent to the rollout actors: their adapter_config.json holds the
    # absolute path of the reasoner, so it depends on the run directory's name, not on the resume (measured: 608482
    # vs 608526 bytes = 2 roles x 22 more characters in this test's tmp path). Everything else must match.
    want_rows = jsonl(straight / "rl" / "metrics.jsonl")
    assert (diff := same_rows(want_rows, rows, rel=0.0, abs_=0.0, skip=("time/", "sync/bytes"))) is None, diff
    report, want = (json.loads((d / "report.json").read_text()) for d in (run_dir, straight))
    assert report["systems"] == want["systems"]  # accuracy, tokens, budgets, turns of every system, exactly
    for f in [p for p in run_dir.rglob("*") if p.is_file()] + [tmp_path / "killed.err", tmp_path / "resumed.err"]:
        assert SECRET.encode() not in f.read_bytes(), f  # the hub token in the environment reaches no file
