"""`longshort rl` under faults on a real local Ray cluster (HF engine: deterministic, so results are comparable).

One chain of three real CLI runs of the same 4-step run directory, killed at seeded random points:
  run A: a rollout actor's process is SIGKILLed after step 1 (the run replaces it and redoes its share of the
         step), then the whole driver process group is SIGKILLed after step 2;
  run B: resumes; its learner worker's process is SIGKILLed -> exit 3 with one line naming the worker, the
         step and the checkpoint to resume from, no traceback;
  run C: resumes and finishes.
The finished run must equal the uninterrupted reference run (tests/conftest.py `rl_straight_run`) step by step,
with every step logged exactly once. The same runs carry an HF token in their environment that must never reach a
file, and show that the Ray cluster they start serves no public dashboard.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from harness import SECRET, jsonl, one_error_line, same_rows, start, trial_seeds
from safetensors.torch import load_file

from conftest import RL_RECIPE, rl_overrides

STEPS = 4
DASHBOARD_PORT = 8265  # Ray's default dashboard port


def _no_public_dashboard(run) -> None:
    """Ray (include_dashboard=False) still starts a minimal dashboard head for usage stats: it must serve no web UI
    and its HTTP port must listen on loopback only."""
    heads = 0
    for p in run.descendants():
        try:
            cmd = p.cmdline()
            listen = [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
        if any(a.endswith("dashboard/dashboard.py") for a in cmd):
            heads += 1
            assert "--disable-frontend" in cmd and "--host=127.0.0.1" in cmd, cmd
        for addr in listen:
            if addr.port == DASHBOARD_PORT:
                assert addr.ip in ("127.0.0.1", "::1"), (cmd, addr)
    assert heads <= 1


def _untimed(obj):
    """An episode without its wall-clock fields (`wall_s` of each turn), the only part a rerun may change."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k != "wall_s"}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _adapters(run_dir: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    root = run_dir / "checkpoints" / f"step-{step:06d}" / "adapters"
    return {r: load_file(str(root / r / "adapter_model.safetensors")) for r in ("long", "short")}


@pytest.mark.parametrize("seed", trial_seeds())
def test_rl_survives_actor_deaths_and_a_driver_kill(seed, rl_straight_run, tmp_path, tiny_model, tiny_adapters):
    rng = random.Random(seed)
    args = ["rl", "--recipe", RL_RECIPE, "--no-progress",
            *rl_overrides(tmp_path, tiny_model, tiny_adapters, f"rl.steps={STEPS}", "rl.checkpoint_every=1",
                          "rl.ray_num_cpus=2", "run.name=f")]  # fmt: skip
    run_dir = tmp_path / "f"
    metrics = run_dir / "metrics.jsonl"

    # run A: lose a rollout actor mid-run (replaced, the step's share redone), then SIGKILL the driver's group
    a = start(args, tmp_path / "a.err")
    a.wait_until(lambda: len(jsonl(metrics)) >= 1, 400, "step 1")
    _no_public_dashboard(a)
    time.sleep(rng.uniform(0.0, 1.0))
    victim = a.actor_pid("RolloutWorker")
    assert victim is not None, "no rollout actor process found"
    os.kill(victim, signal.SIGKILL)
    a.wait_until(lambda: len(jsonl(metrics)) >= 2, 300, "step 2 after the rollout actor died")
    time.sleep(rng.uniform(0.0, 1.0))
    finished = a.proc.poll() is not None
    a.kill()
    assert not finished, f"run A ended before the driver kill:\n{a.stderr[-3000:]}"
    assert re.search(rf"rollout worker 0 \(pid {victim}\) died at step \d; restarting it", a.stderr), a.stderr[-3000:]
    killed_at = len(jsonl(metrics))
    assert 2 <= killed_at < STEPS

    # run B: resumes; lose the learner worker -> one clear line, exit 3
    b = start(args, tmp_path / "b.err")
    # the rollout actor starts after the learner has loaded the checkpoint: from then on the learner is mid-run
    b.wait_until(lambda: b.actor_pid("RolloutWorker") is not None, 300, "the rollout worker")
    time.sleep(rng.uniform(0.0, 3.0))
    learner = b.actor_pid("LearnerWorker")
    os.kill(learner, signal.SIGKILL)
    assert b.finish(300) == 3, b.stderr[-3000:]
    line = one_error_line(b.stderr, f"longshort rl: error: learner worker 0 (pid {learner}) died ")
    m = re.search(r"died (at step (\d+)|before the first step); rerun with run\.resume=auto to continue from checkpoint "
                  r"step-(\d{6})$", line)  # fmt: skip
    assert m, line
    ckpt_step = int(m.group(3))
    assert ckpt_step >= killed_at - 1  # run A checkpointed every step it logged (the kill may tear the last one)
    if m.group(2):
        assert int(m.group(2)) == ckpt_step + 1  # the step it died in is the one after the newest checkpoint

    # run C: resumes and finishes
    c = start(args, tmp_path / "c.err")
    assert c.finish(400) == 0, c.stderr[-3000:]
    rows = jsonl(metrics)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # nothing lost, nothing logged twice
    straight = jsonl(rl_straight_run / "metrics.jsonl")
    assert (diff := same_rows(straight, rows)) is None, diff
    episodes = [_untimed(e) for e in jsonl(run_dir / "episodes.jsonl")]
    assert (diff := same_rows([_untimed(e) for e in jsonl(rl_straight_run / "episodes.jsonl")], episodes)) is None, diff
    want, got = _adapters(rl_straight_run, STEPS), _adapters(run_dir, STEPS)
    for role in want:
        assert max(float((want[role][k] - got[role][k]).abs().max()) for k in want[role]) < 1e-5, role

    # the hub token in the environment never reaches the run directory or the logs
    for f in [p for p in run_dir.rglob("*") if p.is_file()] + [tmp_path / f"{x}.err" for x in "abc"]:
        assert SECRET.encode() not in f.read_bytes(), f
