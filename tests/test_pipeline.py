"""`longshort pipeline --quick` end to end on the real stages (tiny model, HF engine, local Ray): report card,
both adapters trained, every stage reused on a rerun, a changed section reruns only its stage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CLI = str(REPO / ".venv" / "bin" / "longshort")
RECIPE = str(REPO / "recipes" / "tiny" / "pipeline.yaml")
STAGES = ("base", "data", "reasoner", "analyze", "coldstart", "sft_long", "sft_short", "rl", "eval", "benchmarks", "export")


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "pipeline", "--recipe", RECIPE, "--quick", "--no-progress", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def quick(tmp_path_factory, benchmarks_dir):
    out = tmp_path_factory.mktemp("pipeline")
    args = [f"run.out_dir={out}", f"pipeline.benchmarks={{math500: {benchmarks_dir}/math500.jsonl}}"]
    res = _run(*args)
    assert res.returncode == 0, res.stderr[-4000:]
    return out / "tiny-quick", args


def test_report_card(quick):
    run, _ = quick
    report = json.loads((run / "report.json").read_text())
    assert set(report["systems"]) == {"long_cot", "long_short_sft", "long_short_rl", "sr", "pdr"}
    for row in report["systems"].values():
        assert row["problems"] == 6 and row["tokens_per_problem"] > 0
        assert row["b_total"] >= row["b_seq"] > row["tokens_per_problem"] * 0  # budgets counted per call
    head = report["headline"]
    lc, ls = report["systems"]["long_cot"], report["systems"]["long_short_rl"]
    assert head["long_short_system"] == "long_short_rl"
    assert head["token_reduction"] == pytest.approx(1 - ls["tokens_per_problem"] / lc["tokens_per_problem"])
    assert head["accuracy_delta_points"] == pytest.approx(100 * (ls["accuracy"] - lc["accuracy"]))
    assert {t["name"].split(":")[0] for t in head["targets"]} >= {"long_short_rl", "pdr beats long_cot at matched B_seq"}
    assert report["rl"]["steps"] == 2 and report["rl"]["sync_ok_every_step"] is True
    assert set(report["benchmarks"]) == {"long_cot", "long_short_rl"}
    for png in ("accuracy_vs_tokens.png", "accuracy_vs_bseq.png", "rl_curves.png", "thought_scores.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    viewer = (run / "viewer.html").read_text()
    assert report["viewer"] > 0 and "#dbe8f6" in viewer and "#fbe3cf" in viewer and "advantage" in viewer
    md = (run / "report.md").read_text()
    assert "## Headline (measured)" in md and "long_short_rl" in md
    for stage in STAGES:
        assert json.loads((run / stage / "stage.json").read_text())["status"] == "done"


def test_rl_trained_both_adapters_from_sft(quick):
    run, _ = quick
    (ck,) = sorted((run / "rl" / "checkpoints").glob("step-*"))[-1:]
    for role in ("long", "short"):
        sft = load_file(str(run / f"sft_{role}" / "final" / "adapter_model.safetensors"))
        rl = load_file(str(ck / "adapters" / role / "adapter_model.safetensors"))
        assert sft.keys() == rl.keys()
        assert any(not (sft[k] == rl[k]).all() for k in sft), f"RL left the {role} adapter unchanged"
    export = json.loads((run / "export" / "export" / "manifest.json").read_text())
    assert set(export["roles"]) == {"long", "short"}


def test_rerun_reuses_every_stage(quick):
    _, args = quick
    res = _run(*args, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {stage}: cached" in res.stderr


def test_changed_section_reruns_only_that_stage(quick):
    run, args = quick
    res = _run(*args, "pipeline.benchmark_eval.evaluation.limit=1", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "benchmarks: running" in res.stderr
    for stage in STAGES:
        if stage != "benchmarks":
            assert f"{stage}: cached" in res.stderr, stage
    report = json.loads((run / "report.json").read_text())
    assert report["benchmarks"]["long_cot"]["math500"]["problems"] == 1


def test_bad_stage_key_is_one_line(tmp_path):
    res = _run(f"run.out_dir={tmp_path}", "pipeline.rl.rl.lrr=1", timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pipeline.rl" in lines[0] and "'rl.lrr'" in lines[0] and "Traceback" not in res.stderr
