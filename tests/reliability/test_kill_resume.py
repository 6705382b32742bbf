"""SIGKILL `longshort sft` / `longshort analyze` (real CLI subprocesses) at a seeded random point after progress,
rerun with run.resume=auto: nothing lost, nothing repeated, and for SFT the loss curve of an uninterrupted run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from harness import REPO, SECRET, count_rows, jsonl, kill_after_progress, run, trial_seeds

from longshort.config import load_recipe

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
