"""The shared run machinery (longshort/run/): checkpoints, settings checked on resume, append-only logs, schedules."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from longshort.config import load_recipe
from longshort.errors import ConfigError
from longshort.run import checkpoint as ck
from longshort.run import open_run
from longshort.run.logs import METRICS, TENSORBOARD, MetricsLog, rows, truncate
from longshort.run.schedule import epoch_order, lr_factor, scheduler, take
from longshort.run.settings import check, claim, settings


def _save(root, step: int, payload: bytes, keep: int = 3, **state):
    partial = ck.begin(root, step)
    (partial / "adapters" / "long").mkdir(parents=True)
    (partial / "adapters" / "long" / "weights.bin").write_bytes(payload)
    return ck.commit(partial, step, {"cursor": step * 4, **state}, keep)


# ---- checkpoints --------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_corrupt_and_partial_ones_are_skipped(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 2, b"two")
    p4 = _save(root, 4, b"four")
    got = ck.latest(root)
    assert (got.step, got.state["cursor"], got.path) == (4, 16, p4)
    assert open(got.adapter("long") + "/weights.bin", "rb").read() == b"four"

    (p4 / "adapters" / "long" / "weights.bin").write_bytes(b"fouR")  # same size, other bytes
    (root / "step-000006.partial").mkdir()  # a write the kill interrupted
    warnings: list[str] = []
    got = ck.latest(root, warnings.append)
    assert got.step == 2
    assert any("step-000006.partial" in w and "incomplete" in w for w in warnings)
    assert any("step-000004" in w and "checksum mismatch in adapters/long/weights.bin" in w for w in warnings)

    p2 = root / "step-000002"
    (p2 / "stray.txt").write_text("x")  # a file nobody checksummed is not part of a checkpoint
    assert "files not in manifest.json: stray.txt" in ck.verify(p2)
    (p2 / "stray.txt").unlink()
    _save(root, 8, b"eight", keep=2)  # the next write removes the leftover partial and prunes to `keep`
    assert not (root / "step-000006.partial").exists()
    assert [p.name for p in ck.complete_dirs(root)] == ["step-000008", "step-000004"]


def test_a_checkpoint_without_state_is_not_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 2, b"two")
    p4 = _save(root, 4, b"four")
    manifest = json.loads((p4 / ck.MANIFEST).read_text())
    del manifest["files"][ck.STATE]
    (p4 / ck.STATE).unlink()
    (p4 / ck.MANIFEST).write_text(json.dumps(manifest))
    warnings: list[str] = []
    assert ck.latest(root, warnings.append).step == 2 and "no state.json" in warnings[0]


def test_resume_checks_the_recorded_settings(tmp_path):
    root = tmp_path / "checkpoints"
    rec = load_recipe(None, ["sft.role=long", "sft.lora.r=8"])
    keys = ("model", "sft")
    _save(root, 2, b"x", settings=settings(rec, keys))
    assert ck.resume(root, settings(rec, keys)).step == 2
    changed = load_recipe(None, ["sft.role=long", "sft.lora.r=4"])
    with pytest.raises(ConfigError, match=r"key 'sft\.lora\.r' is 4 but checkpoint .*step-000002 was written with 8: .*run\.resume=never"):
        ck.resume(root, settings(changed, keys))
    _save(root, 4, b"x")  # written without settings: an older format, never resumed silently
    with pytest.raises(ConfigError, match="does not record the settings"):
        ck.resume(root, settings(rec, keys))


def test_rng_state_round_trip(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ck.save_rng(folder, rank=1)
    want = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    cp = ck.Checkpoint(folder, 0, {})
    ck.restore_rng(cp, rank=1)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == want[:2] and torch.equal(got[2], want[2])
    with pytest.raises(Exception, match="no RNG state for process 0"):
        ck.restore_rng(cp, rank=0)


# ---- settings -----------------------------------------------------------------------------------------------


def test_settings_are_every_leaf_of_the_named_sections_minus_the_free_ones():
    rec = load_recipe(None, [])
    s = settings(rec, ("run.seed", "sft"), free=("sft.steps", "sft.lora.dropout"))
    assert s["run.seed"] == 0 and s["sft.lora.r"] == 8 and s["sft.lora.target_modules"][0] == "q_proj"
    assert "sft.steps" not in s and "sft.lora.dropout" not in s and "sft.lr" in s
    assert not any(k.startswith(("run.name", "model.")) for k in s)
    check(json.loads(json.dumps(s)), s, "x")  # what a JSON file gives back is equal
    with pytest.raises(ConfigError, match=r"key 'sft\.role' is 'short' but x was written with 'long'"):
        check(s, {**s, "sft.role": "short"}, "x")
    with pytest.raises(ConfigError, match=r"key 'sft\.new' is 1 but x was written with \(unset\)"):
        check(s, {**s, "sft.new": 1}, "x")


def test_claim_records_then_checks(tmp_path):
    path = tmp_path / "settings.json"
    claim(path, {"a": 1.5, "b": [1, 2]}, "auto")
    claim(path, {"a": 1.5, "b": (1, 2)}, "auto")
    with pytest.raises(ConfigError, match="key 'a' is 2 but .*settings.json was written with 1.5"):
        claim(path, {"a": 2, "b": [1, 2]}, "auto")
    claim(path, {"a": 2}, "never")  # starting over records the new settings
    assert json.loads(path.read_text()) == {"a": 2}


def test_open_run_writes_the_recipe_and_never_clears_the_outputs(tmp_path):
    rec = load_recipe(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    d = open_run(rec, ("metrics.jsonl", "checkpoints"))
    (d / "metrics.jsonl").write_text("{}\n")
    (d / "checkpoints" / "step-000001").mkdir(parents=True)
    (d / "keep.txt").write_text("x")
    open_run(rec, ("metrics.jsonl", "checkpoints"))
    assert (d / "metrics.jsonl").exists()
    open_run(load_recipe(None, [f"run.out_dir={tmp_path}", "run.name=r", "run.resume=never"]), ("metrics.jsonl", "checkpoints"))
    assert not (d / "metrics.jsonl").exists() and not (d / "checkpoints").exists() and (d / "keep.txt").exists()
    assert "resume: never" in (d / "config.yaml").read_text()


# ---- logs ---------------------------------------------------------------------------------------------------


def test_truncate_keeps_steps_up_to_k_drops_torn_lines_and_k0_empties(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 2, 3)) + '{"step": 4, "lo')
    truncate(log, 2)
    assert [r["step"] for r in rows(log)] == [1, 2, 2]  # (a log never repeats a step; truncate keeps what it has)
    assert log.read_text().endswith("\n")  # the next append starts on a line of its own
    episodes = tmp_path / "episodes.jsonl"
    episodes.write_text(json.dumps({"meta": {"step": 1}}) + "\n" + json.dumps({"meta": {"step": 2}}) + "\n")
    truncate(episodes, 1, step_of=lambda r: r["meta"]["step"])
    assert rows(episodes) == [{"meta": {"step": 1}}]
    truncate(log, 0)  # a restart from scratch: nothing of the killed run stays
    assert not log.exists()


def test_metrics_log_is_strict_json_and_resumes_at_k(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = MetricsLog(tmp_path, 0)
    for step in (1, 2, 3):
        m.log({"step": step, "loss": 1.0 / step, "gap": float("nan"), "ok": True, "roles": ["long"]})
    m.close()
    text = (tmp_path / METRICS).read_text()
    assert "NaN" not in text and json.loads(text.splitlines()[0])["gap"] is None
    with open(tmp_path / METRICS, "a") as f:
        f.write('{"step": 4, "loss": 0.')  # torn by a kill
    m = MetricsLog(tmp_path, 2)  # resumed from the step-2 checkpoint
    m.log({"step": 3, "loss": 0.5})
    m.close()
    assert [(r["step"], r["loss"]) for r in rows(tmp_path / METRICS)] == [(1, 1.0), (2, 0.5), (3, 0.5)]
    acc = EventAccumulator(str(tmp_path / TENSORBOARD))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.5)]  # step 3 purged, redone
    assert "gap" not in acc.Tags()["scalars"] and "ok" not in acc.Tags()["scalars"]


# ---- schedules ----------------------------------------------------------------------------------------------


def test_lr_factor_warmup_then_decay():
    assert [lr_factor(u, 10, 2, "constant") for u in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5) and lr_factor(20, 10, 2, "linear") == 0.0
    with pytest.raises(ValueError):
        lr_factor(5, 10, 0, "step")


def test_scheduler_reports_the_rate_the_next_update_uses():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = scheduler(opt, total=4, warmup=2, kind="cosine")
    used = []
    for u in range(4):
        logged = sched.get_last_lr()[0]  # what a trainer logs for update u (read before stepping)
        p.grad = torch.ones(1)
        before = float(p.detach())
        opt.step()
        used.append(before - float(p.detach()))  # SGD moves by exactly the rate used
        assert logged == pytest.approx(used[-1]) == pytest.approx(lr_factor(u, 4, 2, "cosine"))
        sched.step()


def test_data_order_is_a_function_of_the_cursor():
    n, seed = 5, 7
    whole = take(n, seed, 0, 13)
    assert sorted(whole[:5]) == sorted(whole[5:10]) == list(range(5)) and whole[:5] != whole[5:10]
    assert whole[:5] == epoch_order(n, seed, 0)
    for cursor in (1, 4, 5, 9):
        assert take(n, seed, cursor, 13 - cursor) == whole[cursor:]
    assert take(n, seed + 1, 0, 5) != whole[:5]


# ---- run.report_to ------------------------------------------------------------------------------------------


def test_report_to_sends_metrics_to_the_backends_asked_and_refuses_a_missing_one_up_front(tmp_path):
    import importlib.util

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from longshort.errors import UserError

    assert load_recipe(None).run.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"key 'run.report_to\[1\]': expected 'tensorboard' \| 'wandb' \| 'mlflow'"):
        load_recipe(None, ["run.report_to=[tensorboard,neptune]"])
    for report_to in (["tensorboard"], []):
        d = tmp_path / f"to-{len(report_to)}"
        d.mkdir()
        m = MetricsLog(d, 0, load_recipe(None, [f"run.report_to=[{','.join(report_to)}]"]).run.report_to)
        for step in (1, 2):
            m.log({"step": step, "loss": 1.0 / step, "ok": True})
        m.close()
        assert [r["loss"] for r in rows(d / METRICS)] == [1.0, 0.5]  # metrics.jsonl whatever report_to says
        assert (d / TENSORBOARD).is_dir() == bool(report_to)
    acc = EventAccumulator(str(tmp_path / "to-1" / TENSORBOARD))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 0.5)]
    missing = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is None]
    if not missing:
        pytest.skip("wandb and mlflow are both installed here: nothing to refuse")
    for name in missing:
        with pytest.raises(UserError, match=rf"^key 'run.report_to': {name} is not installed \(pip install {name}\)"):
            MetricsLog(tmp_path / name, 0, ["tensorboard", name])
        assert not (tmp_path / name).exists()  # refused before the run wrote anything
