"""`longshort pipeline --quick` end to end on the real stages (tiny model, HF engine, local Ray): report card,
both adapters trained, every stage reused on a rerun, a changed section reruns only its stage."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from conftest import PIPELINE_STAGES as STAGES
from conftest import run_pipeline_quick as _run


@pytest.fixture(scope="module")
def quick(pipeline_quick):
    """The session's uninterrupted quick run (tests/conftest.py; shared with the kill trial in tests/reliability)."""
    return pipeline_quick


def test_report_card(quick):
    run, _ = quick
    report = json.loads((run / "report.json").read_text())
    assert set(report["systems"]) == {"long_cot", "long_short_sft", "long_short_rl", "length_penalty_rl", "sr", "pdr", "pdr_rl"}
    for row in report["systems"].values():
        assert row["problems"] == 6 and row["tokens_per_problem"] > 0 and row["n"] == 6
        assert row["b_total"] >= row["b_seq"] > 0  # budgets counted per call
        lo, hi = row["accuracy_ci"]
        assert 0 <= lo <= row["accuracy"] <= hi <= 1 and hi - lo > 0.2  # six problems: a wide interval
    for system in report["systems"]:  # long_cot, SR and PDR are the reasoner alone; Long⊗Short alternates the roles
        episodes = [json.loads(line) for f in (run / "eval" / system / "synthetic").rglob("*.jsonl") for line in f.open()]
        assert len(episodes) == 6
        roles = {t["role"] for ep in episodes for t in ep["turns"]}
        if system.startswith("long_short"):
            assert "long" in roles and roles <= {"long", "short"}, (system, roles)
        elif system in ("length_penalty_rl", "pdr_rl"):  # a one-adapter RL stage's system answers with its adapter
            assert roles == {"long"}, (system, roles)
        else:
            assert roles == {"base"}, (system, roles)
    head = report["headline"]
    lc, ls = report["systems"]["long_cot"], report["systems"]["long_short_rl"]
    assert head["long_short_system"] == "long_short_rl"
    assert head["token_reduction"] == pytest.approx(1 - ls["tokens_per_problem"] / lc["tokens_per_problem"])
    assert head["accuracy_delta_points"] == pytest.approx(100 * (ls["accuracy"] - lc["accuracy"]))
    assert {t["name"].split(":")[0] for t in head["targets"]} >= {"long_short_rl", "pdr beats long_cot at matched B_seq"}
    assert report["rl"]["steps"] == 2 and report["rl"]["sync_ok_every_step"] is True
    # every comparison is paired over the same problems, with its interval and p-value
    assert head["n_pairs"] == 6 and 0 <= head["accuracy_delta_p_value"] <= 1
    lo, hi = head["accuracy_delta_ci"]
    assert lo <= head["accuracy_delta_points"] <= hi
    assert set(head["rl_vs_sft"]) >= {"mcnemar_p", "accuracy_delta_ci", "tokens_delta_ci"}
    assert "p_value" in head["pdr_vs_long_cot"] and "p_value" in head["sr_vs_long_cot"]
    # PDR after RL through the operator, against long CoT and against PDR before it, each at its B_seq
    for against in ("long_cot", "pdr"):
        comp = head[f"pdr_rl_vs_{against}"]
        assert "p_value" in comp and comp["b_seq_pdr_rl"] == report["systems"]["pdr_rl"]["b_seq"] and f"b_seq_{against}" in comp
    assert {"pdr_rl beats pdr at matched B_seq", "pdr_rl beats long_cot at matched B_seq"} <= {t["name"] for t in head["targets"]}
    op = report["rl_operator"]
    assert op["steps"] == 2 and op["sync_ok_every_step"] is True and set(op["last"]) >= {"accuracy/pdr", "format_ok/refine"}
    assert head["oracle_tokens_per_problem"] > 0 and "removable_tokens_removed" in head
    assert report["reasoner"]["source"] == "shipped" and report["reasoner"]["n"] == 6
    assert report["reasoner"]["shipped_held_out"]["n"] >= 500 and report["reasoner"]["shipped_held_out"]["accuracy"] >= 0.85
    an = report["analysis"]
    assert 0 <= an["precision"] <= 1 and 0 <= an["recall"] <= 1
    assert {"add", "conclusion"} <= set(an["by_kind"]) and all(v["n"] > 0 for v in an["by_kind"].values())
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


def test_dry_run_after_a_run_lists_what_a_changed_key_reruns(quick):
    """`--dry-run protocol.max_turns=2`: coldstart reads protocol.max_turns, so it and every stage after it rerun."""
    run, args = quick
    before = {stage: (run / stage / "stage.json").read_bytes() for stage in STAGES}
    res = _run("--dry-run", *args, "protocol.max_turns=2", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    start = STAGES.index("coldstart")
    for i, stage in enumerate(STAGES, 1):
        state = "would run" if i > start else "cached"
        assert f"[{i}/{len(STAGES)}] {stage}: {state} (" in res.stdout, (stage, res.stdout)
    assert {stage: (run / stage / "stage.json").read_bytes() for stage in STAGES} == before  # nothing ran


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


def test_files_task_reads_the_users_columns(tmp_path):
    """`pipeline.task: files` reads data.train / data.test with data.fields, as every other reader of rows does."""
    import json

    from longshort.cli import main

    rows = [{"q": f"What is {i} + 1?", "final": str(i + 1), "gen": f"<think>\n{i} + 1 = {i + 1}\n</think>\n\\boxed{{{i + 1}}}"}
            for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"q": r["q"], "final": r["final"]}) + "\n" for r in rows[:2]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run: {{name: files, out_dir: {tmp_path / 'runs'}}}\nmodel: {{base: tiny}}\n"
        "data: {train: train.jsonl, test: test.jsonl, fields: {problem: q, answer: final, response: gen}}\n"
        "pipeline: {task: files, train_reasoner: false}\n")
    assert main(["pipeline", "--recipe", str(recipe), "--until", "data", "--no-progress"]) == 0
    out = tmp_path / "runs" / "files" / "data"
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert [t["problem"] for t in train] == [r["q"] for r in rows] and train[2]["answer"] == "3"
    assert train[0]["response"].startswith("<think>") and [t["answer"] for t in test] == ["1", "2"]
