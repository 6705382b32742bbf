"""Golden runs, torchtune-style: the first steps of SFT and RL on the tiny model (fixed seed, float32) must give the
per-step losses (and RL rewards) recorded in tests/golden/*.json. A change that moves them — in the model build,
the data, the masks, the loss, the optimizer or the RL rollouts — fails here even when every shape still fits.

An intended change regenerates the files: `LONGSHORT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py`
(then check the diff of tests/golden/ in review). The runs are deterministic on one machine; another CPU may sum
floats in another order (~1e-6), well inside the tolerance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from longshort.io import write_json

from conftest import RL_RECIPE, rl_overrides

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
REGENERATE = "LONGSHORT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py"
RTOL, ATOL = 1e-4, 1e-6  # ATOL: an RL loss of a role whose advantages are all zero is 0 up to float noise

SFT_RECIPE = REPO / "recipes" / "tiny" / "sft_long.yaml"
SFT_SETTINGS = ["sft.steps=5", "sft.warmup_steps=2", "model.dtype=float32", "sft.eval_fraction=0", "sft.save_every=5"]
# RL: stop strings that the random tiny model emits ("e") end turns at different lengths, so the length and format
# rewards differ inside a group and the advantages are non-zero (with the suite's default settings every episode
# of a group earns the same reward); no entropy bonus, so the loss is the PPO policy loss alone.
RL_SETTINGS = ["rl.steps=3", "rl.entropy_coef=0", "model.dtype=float32", "engine.dtype=float32",
               'roles.long.stop=["</think>", "e"]', 'roles.short.stop=["</rethink>", "</answer>", "e"]']


def check_golden(name: str, settings: list[str], got: dict[str, list[float]]) -> None:
    """Compare `got` with tests/golden/NAME (written instead when LONGSHORT_UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("LONGSHORT_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        write_json(path, {"regenerate": REGENERATE, "settings": settings, **got})
        return
    if not path.is_file():
        pytest.fail(f"golden file {path.relative_to(REPO)} is missing; write it with: {REGENERATE}")
    golden = json.loads(path.read_text())
    assert golden["settings"] == settings, f"{name} was recorded with other settings; regenerate it: {REGENERATE}"
    for key, values in got.items():
        assert values == pytest.approx(golden[key], rel=RTOL, abs=ATOL), (
            f"{name} {key}: got {values}, golden {golden[key]}; if the change is intended, regenerate: {REGENERATE}")


@pytest.mark.usefixtures("one_torch_thread")
def test_sft_first_steps_match_the_golden_losses(tmp_path, tiny_model):
    from longshort.config import load_recipe
    from longshort.sft.trainer import Trainer

    rec = load_recipe(str(SFT_RECIPE), [f"run.out_dir={tmp_path}", "run.name=golden", f"model.base={tiny_model}", *SFT_SETTINGS])
    Trainer(rec).run()
    rows = [json.loads(line) for line in (rec.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    check_golden("sft_tiny.json", SFT_SETTINGS, {"loss": [r["loss"] for r in rows]})


def test_rl_first_steps_match_the_golden_losses_and_rewards(ray_cluster, tmp_path, tiny_model):
    from longshort.cli import main

    # fresh adapters (A from run.seed, B = 0), not the session's `tiny_adapters`: their A matrices come from the
    # global torch RNG at whatever point of the session the fixture is first built
    args = rl_overrides(tmp_path, tiny_model, {"long": "null", "short": "null"}, "run.name=golden", *RL_SETTINGS)
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 0
    rows = [json.loads(line) for line in (tmp_path / "golden" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # a golden of zero-advantage steps would pin nothing of the policy gradient
        assert r["long/advantage_abs"] > 0 and r["short/advantage_abs"] > 0, r
        assert r["sync/ok"] is True
    got = {f"{role}/{k}": [r[f"{role}/{k}"] for r in rows] for role in ("long", "short") for k in ("pg_loss", "reward")}
    check_golden("rl_tiny.json", RL_SETTINGS, got)
