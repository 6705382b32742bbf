"""Driver pieces without Ray: schedules, the resumable data stream, training batches and their normalisers."""

from __future__ import annotations

from longshort.config.recipe import load_recipe
from longshort.rl.batches import batch_at, build_batches, roles_to_train
from longshort.types import Episode, Turn


def test_alternate_schedule_switches_every_k_steps():
    r = load_recipe(None, ["rl.schedule=alternate", "rl.alternate_k=2"])
    assert [roles_to_train(r, s) for s in range(1, 7)] == [["long"], ["long"], ["short"], ["short"], ["long"], ["long"]]
    assert roles_to_train(load_recipe(None, []), 3) == ["long", "short"]


def test_data_stream_is_a_function_of_the_cursor():
    problems = [{"id": str(i)} for i in range(5)]
    whole = batch_at(problems, 0, 12, seed=7)
    assert sorted(p["id"] for p in whole[:5]) == [str(i) for i in range(5)]  # each epoch covers every problem once
    assert batch_at(problems, 4, 8, seed=7) == whole[4:]  # a resumed cursor continues the same stream


def test_batches_carry_role_advantages_and_token_normalisers():
    eps = []
    for i, adv in enumerate((1.0, -1.0, 0.5)):
        ep = Episode(problem_id="p", problem="", gold="", protocol="long_short", meta={"sample": i})
        ep.add(Turn("long", [1, 2], [3, 4, 5], "t"))
        ep.add(Turn("short", [6], [7, 8], "a"))
        ep.advantages = {"long": adv, "short": -adv}
        eps.append(ep)
    r = load_recipe(None, ["rl.minibatches=2"])
    batches, norms = build_batches(eps, ["long", "short"], r)
    assert [s.advantage for s in batches["long"]] == [1.0, -1.0, 0.5]
    assert [s.advantage for s in batches["short"]] == [-1.0, 1.0, -0.5]
    assert [s.minibatch for s in batches["long"]] == [0, 0, 1]
    assert norms["long"] == [6.0, 3.0] and norms["short"] == [4.0, 2.0]  # own completion tokens per minibatch
    r2 = load_recipe(None, ["rl.loss_agg=token_sum_norm", "roles.long.max_tokens=10"])
    _, norms2 = build_batches(eps, ["long"], r2)
    assert norms2["long"] == [30.0]


def test_a_failed_sync_exits_3_is_logged_and_leaves_no_checkpoint_of_its_step(ray_cluster, tmp_path, tiny_model,
                                                                               tiny_adapters, monkeypatch, capsys):
    """Step 2's adapters never reach the engine (its push is lost): the probe measures the stale adapter for real,
    the step is logged with sync/ok false and its measured diff, the CLI exits 3 with one line, and only step 1 is
    checkpointed."""
    import json

    import longshort.rl.pool as pool
    from longshort.cli import main

    from conftest import RL_RECIPE, rl_overrides

    real_push, pushes = pool.push, []

    def lossy_push(workers, files):
        pushes.append(sorted(files))
        return real_push(workers, files) if len(pushes) == 1 else 0  # step 2: nothing is sent

    monkeypatch.setattr(pool, "push", lossy_push)
    args = rl_overrides(tmp_path, tiny_model, tiny_adapters, "rl.steps=3", "rl.checkpoint_every=1", "run.name=s")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("longshort rl: error: sync check failed at step 2:"), err
    assert "no checkpoint of step 2 is written" in err[0] and "continue from checkpoint step-000001" in err[0]
    run = tmp_path / "s"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
    tolerance = json.loads((run / "precision.json").read_text())["sync_tolerance"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and len(pushes) == 2
    for r in rows:
        assert r["sync/max_abs_diff"] == max(r["sync/long_max_diff"], r["sync/short_max_diff"])
    assert rows[0]["sync/ok"] is True and rows[0]["sync/max_abs_diff"] <= tolerance
    assert rows[1]["sync/ok"] is False and rows[1]["sync/max_abs_diff"] > tolerance


def test_merged_mode_rl_passes_the_measured_sync_check_every_step(ray_cluster, tmp_path, tiny_model, tiny_adapters):
    """`longshort rl ... engine.lora_mode=merged rl.steps=3`: every step's pushed adapters are merged in place into the
    rollout engine, the probe measures them (sync/ok from the real diff, within the float32 tolerance), and the mode
    is on record in precision.json."""
    import json

    from longshort.cli import main

    from conftest import RL_RECIPE, rl_overrides

    args = rl_overrides(tmp_path, tiny_model, tiny_adapters, "rl.steps=3", "rl.checkpoint_every=3", "run.name=m",
                        "engine.lora_mode=merged", "rl.problems_per_step=1", "rl.group_size=2")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 0
    run = tmp_path / "m"
    info = json.loads((run / "precision.json").read_text())
    assert info["engine_lora_mode"] == {"requested": "merged", "resolved": "merged", "device": "cpu"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["sync/ok"] is True and r["trained"] == ["long", "short"]
        assert r["sync/max_abs_diff"] == max(r["sync/long_max_diff"], r["sync/short_max_diff"]) <= info["sync_tolerance"]
        assert max(r["long/logprob_gap_max"], r["short/logprob_gap_max"]) <= info["sync_tolerance"]


def test_a_wrong_push_in_merged_mode_fails_the_sync_check(ray_cluster, tmp_path, tiny_model, tiny_adapters, monkeypatch, capsys):
    """lora_mode auto (= merged on CPU rollout actors): at step 2 the learner's adapters reach the engine with the
    roles swapped, a real merge of the wrong weights; the probe measures it, sync/ok is false and the run exits 3."""
    import json

    import ray

    import longshort.rl.pool as pool
    from longshort.cli import main

    from conftest import RL_RECIPE, rl_overrides

    real_push, pushes = pool.push, []

    def swapped_push(workers, files):
        pushes.append(sorted(files))
        if len(pushes) == 1:
            return real_push(workers, files)
        ray.get([w.set_adapters.remote({"long": files["short"], "short": files["long"]}) for w in workers])
        return sum(len(b) for role in files.values() for b in role.values())

    monkeypatch.setattr(pool, "push", swapped_push)
    args = rl_overrides(tmp_path, tiny_model, tiny_adapters, "rl.steps=2", "rl.checkpoint_every=1", "run.name=w",
                        "engine.lora_mode=auto", "rl.problems_per_step=1", "rl.group_size=2")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("longshort rl: error: sync check failed at step 2:"), err
    run = tmp_path / "w"
    info = json.loads((run / "precision.json").read_text())
    assert info["engine_lora_mode"] == {"requested": "auto", "resolved": "merged", "device": "cpu"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and len(pushes) == 2
    assert rows[0]["sync/ok"] is True and rows[0]["sync/max_abs_diff"] <= info["sync_tolerance"]
    assert rows[1]["sync/ok"] is False and min(rows[1]["sync/long_max_diff"], rows[1]["sync/short_max_diff"]) > info["sync_tolerance"]


def test_offpolicy_rollouts_overlap_learning_and_are_scored_under_the_adapters_that_sampled(ray_cluster, tmp_path,
                                                                                              tiny_model, tiny_adapters):
    """rl.offpolicy_steps=1: steps 2 and 4 are rolled out while the step before trains, with the adapters from before
    that update. The learner takes π_old from those adapters: every sampled token's engine logprob matches it (gap
    within the tolerance), the ratio measures the one-step drift (≠ 1; an on-policy step with one epoch has ratio 1
    exactly), and every push still passes the sync probe. A checkpoint step is never followed by an early rollout."""
    import json

    from longshort.cli import main

    from conftest import RL_RECIPE, rl_overrides

    args = rl_overrides(tmp_path, tiny_model, tiny_adapters, "rl.steps=4", "rl.checkpoint_every=2", "run.name=o",
                        "rl.offpolicy_steps=1", "rl.problems_per_step=1", "rl.group_size=2", "rl.lr=2e-2")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 0
    run = tmp_path / "o"
    tolerance = json.loads((run / "precision.json").read_text())["sync_tolerance"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["offpolicy"] for r in rows] == [False, True, False, True]  # step 3 follows checkpoint step 2: on-policy
    for r in rows:
        assert r["sync/ok"] is True and r["trained"] == ["long", "short"]
        assert max(r["long/logprob_gap_max"], r["short/logprob_gap_max"]) <= tolerance
        drift = max(abs(r["long/ratio"] - 1), abs(r["short/ratio"] - 1))
        assert (drift > 1e-5) if r["offpolicy"] else (drift == 0.0), (r["step"], drift)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
