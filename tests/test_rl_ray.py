"""RL on real Ray: data-parallel learners agree, the sync check catches a stale adapter, `longshort rl` end to end,
and a resumed run reproduces the uninterrupted one (HF engine, fixed seed)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longshort.cli import main
from longshort.config.recipe import load_recipe
from longshort.types import TrainSequence

from conftest import rl_overrides as _recipe  # the suite's tiny RL settings, shared with tests/reliability/

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "tiny" / "rl.yaml")


def _samples(n: int, seed: int) -> list[TrainSequence]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(12, 30)
        ids = [rng.randrange(5, 800) for _ in range(k)]
        mask = [0] * (k // 2) + [1] * (k - k // 2)
        out.append(TrainSequence("long" if i % 2 else "short", ids, mask, advantage=rng.uniform(-1, 1)))
    return out


def _tensors(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(files["adapter_model.safetensors"])


def test_one_and_two_learner_workers_make_the_same_update(ray_cluster, tmp_path, tiny_model, tiny_adapters):
    from longshort.rl.actors import LearnerGroup, read_adapter

    init = {r: read_adapter(p) for r, p in tiny_adapters.items()}
    results = {}
    for workers in (1, 2):
        recipe = load_recipe(RECIPE, _recipe(tmp_path, tiny_model, tiny_adapters,
                                             f"rl.learner_workers={workers}", "rl.learner_cpus=0.5",
                                             "rl.minibatches=2", "rl.micro_batch_size=2", "rl.lr=1e-2"))  # fmt: skip
        group = LearnerGroup(tiny_model, init, init, recipe)
        try:
            samples = _samples(12, seed=3)
            batches = {r: [s for s in samples if s.role == r] for r in ("long", "short")}
            norms = {}
            for r, ss in batches.items():
                for i, s in enumerate(ss):
                    s.minibatch = i * 2 // len(ss)
                norms[r] = [float(sum(sum(s.mask) for s in ss if s.minibatch == m)) for m in range(2)]
            stats = group.train(batches, norms)
            results[workers] = (stats, {r: _tensors(f) for r, f in group.export(["long", "short"]).items()})
        finally:
            group.shutdown()
    (s1, a1), (s2, a2) = results[1], results[2]
    for role in ("long", "short"):
        assert s1[role].tokens == s2[role].tokens > 0
        assert s1[role].grad_norm == pytest.approx(s2[role].grad_norm, rel=1e-4)
        start = load_file(str(Path(tiny_adapters[role]) / "adapter_model.safetensors"))
        # the update each made: Δ = end − start over all LoRA tensors; Adam divides by sqrt(v), which turns
        # float-summation-order noise in near-zero gradients into lr-scale noise, so compare Δ as a whole
        d1 = torch.cat([(a1[role][k] - start[k]).flatten() for k in sorted(start)])
        d2 = torch.cat([(a2[role][k] - start[k]).flatten() for k in sorted(start)])
        rel = float((d1 - d2).norm() / d1.norm())
        print(role, "update norm", float(d1.norm()), "relative difference", rel)
        assert float(d1.norm()) > 1e-2 and rel < 1e-3


def test_sync_check_catches_a_stale_adapter(ray_cluster, tmp_path, tiny_model, tiny_adapters):
    import ray

    from longshort.rl.actors import LearnerGroup, RolloutWorker, read_adapter
    from longshort.rl.sync import SyncError, push, verify

    recipe = load_recipe(RECIPE, _recipe(tmp_path, tiny_model, tiny_adapters, "rl.lr=1e-2", "rl.learner_cpus=0.5"))
    init = {r: read_adapter(p) for r, p in tiny_adapters.items()}
    group = LearnerGroup(tiny_model, init, init, recipe)
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(tiny_model, recipe, group.export(["long", "short"]), 0)
    try:
        probes = {r: list(range(20, 60)) for r in ("long", "short")}
        ok = verify(group, [worker], probes, 1e-4)
        assert set(ok) == {"long", "short"} and max(ok.values()) < 1e-4
        samples = [s for s in _samples(6, seed=1) if s.role == "long"]
        group.train({"long": samples}, {"long": [float(sum(sum(s.mask) for s in samples))]})
        with pytest.raises(SyncError, match="long adapter"):
            verify(group, [worker], probes, 1e-4)  # the engine still serves the old long adapter
        assert verify(group, [worker], {"short": probes["short"]}, 1e-4)["short"] < 1e-4  # short was not trained
        push([worker], group.export(["long"]))
        assert max(verify(group, [worker], probes, 1e-4).values()) < 1e-4
    finally:
        ray.kill(worker)
        group.shutdown()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float):
            if not (math.isnan(x) and math.isnan(y)) and not math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def test_rl_end_to_end_updates_both_adapters_with_verified_sync(rl_straight_run, tiny_adapters):
    rows = _rows(rl_straight_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["sync/ok"] is True and r["trained"] == ["long", "short"]
        for role in ("long", "short"):
            for key in ("reward", "reward/correct", "reward/format", "reward/length", "reward/synergy", "accuracy",
                        "tokens_per_problem", "turns", "format_failure_rate", "kl", "entropy", "clip_frac", "grad_norm",
                        "padding"):  # fmt: skip
                assert f"{role}/{key}" in r
            assert r[f"sync/{role}_max_diff"] < 1e-3 and r[f"{role}/logprob_gap_max"] < 1e-3
        assert r["time/rollout"] > 0 and r["time/learn"] > 0 and r["time/sync"] > 0 and r["offpolicy"] is False
        # the names and meanings of eval's summary (longshort/metrics.py): rethinks per short turn, per-episode tokens
        assert r["tokens_per_problem"] > 0 and 0 <= r["rethink_rate"] <= 1 and "rethinks_per_episode" in r
    assert rows[-1]["long/kl"] > 0 and rows[-1]["short/kl"] > 0
    final = rl_straight_run / "checkpoints" / "step-000004" / "adapters"
    for role in ("long", "short"):
        start = load_file(str(Path(tiny_adapters[role]) / "adapter_model.safetensors"))
        end = load_file(str(final / role / "adapter_model.safetensors"))
        assert start.keys() == end.keys()
        assert max(float((start[k] - end[k]).abs().max()) for k in start) > 1e-4
    episodes = _rows(rl_straight_run / "episodes.jsonl")
    assert episodes and all(set(e["rewards"]) == {"long", "short"} and set(e["advantages"]) == {"long", "short"} for e in episodes)
    assert (rl_straight_run / "summary.md").is_file() and any((rl_straight_run / "tensorboard").iterdir())


def test_resumed_run_reproduces_the_uninterrupted_run(rl_straight_run, tmp_path, tiny_model, tiny_adapters):
    args = _recipe(tmp_path, tiny_model, tiny_adapters, "rl.checkpoint_every=2", "run.name=b")
    assert main(["rl", "--recipe", RECIPE, "--no-progress", *args, "rl.steps=3"]) == 0  # stops after step 3
    # the first run ends with a checkpoint at step 3; the second resumes from it and only runs step 4
    assert main(["rl", "--recipe", RECIPE, "--no-progress", *args, "rl.steps=4"]) == 0
    resumed = _rows(tmp_path / "b" / "metrics.jsonl")
    straight = _rows(rl_straight_run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        assert _same(_comparable(a), _comparable(b)), (a["step"], _comparable(a), _comparable(b))


SHARED = """
import ray
from longshort.rl.pool import connect_ray, owns_ray, shared_ray
with shared_ray():
    first = connect_ray(None, 2)
    node = ray.get_runtime_context().get_node_id()
    again = connect_ray(None, 2)  # the next RL stage: the same local instance, resources checked as local
    same = ray.get_runtime_context().get_node_id() == node
    resized = connect_ray(None, 1)  # another size: a new local instance of that size
    cpus = ray.cluster_resources()["CPU"]
    print(first, again, same, resized, cpus, owns_ray())
print(ray.is_initialized(), owns_ray())
"""


@pytest.mark.timeout(100)
def test_the_pipelines_rl_stages_share_one_local_ray_and_stop_it_at_the_end():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHARED], capture_output=True, text=True, timeout=90, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    inside, after = out.stdout.strip().splitlines()[-2:]
    assert inside == "True True True True 1.0 False"  # started, kept, the same node, restarted at 1 CPU; not owned by a run
    assert after == "False True"  # stopped when the block ends; a run outside one owns (and stops) its own Ray
