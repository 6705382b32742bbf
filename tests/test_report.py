"""Reports a user can trust (issue #19): n and a 95% interval for every accuracy, `degenerate` (never `met`) for a
comparison that says nothing, plots whose labels do not collide, and a viewer that tells samples apart and sets
every system's answer side by side. Inputs are hand-built stage outputs; the report code is the real one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import PIPELINE_RECIPE, REPO
from longshort.config import load_recipe
from longshort.config.pipeline import quick_overrides
from longshort.eval import plot_figure as eval_figure
from longshort.eval import result_row, summary_markdown
from longshort.pipeline.compare import with_interval
from longshort.pipeline.plan import make_plan
from longshort.pipeline.report import headline, plot_rl, plot_systems, write_report
from longshort.sweep import plot_figure as sweep_figure
from longshort.types import Episode, Turn, write_episodes

SUMMARY_KEYS = ("accuracy", "tokens_per_problem", "b_seq", "b_total", "problems", "samples", "turns", "rethink_rate",
                "format_failure_rate", "tokens_by_role", "answered_rate", "accuracy_lenient")  # what stage eval keeps


def _ep(pid: str, correct: bool, tokens: int, protocol: str = "long_cot", sample: int = 0, answered: bool = True,
        role: str = "base", **meta) -> Episode:
    ep = Episode(problem_id=pid, problem=f"What is {pid}?", gold="7", protocol=protocol, answer=("7" if correct else "5") if answered else None,
                 correct=correct, meta={"sample": sample, **meta})
    ep.add(Turn(role=role, prompt_ids=[1, 2], completion_ids=list(range(tokens)), text=f"<think>{pid}</think> \\boxed{{{ep.answer}}}"))
    return ep


def _row(eps: list[Episode]) -> dict:
    """A system's row as stage eval records it, from the real `result_row`, with the report's interval."""
    r = result_row(eps[0].protocol if eps else "long_cot", "synthetic", eps)
    return with_interval({k: r[k] for k in SUMMARY_KEYS if k in r})


def _outcomes(eps: list[Episode]) -> dict:
    return {(e.problem_id, e.meta["sample"]): (bool(e.correct), e.generated_tokens) for e in eps}


def _status(head: dict) -> dict[str, str]:
    return {t["name"].split(": ", 1)[-1]: t["status"] for t in head["targets"]}


def _head(systems: dict[str, list[Episode]], oracle: float | None = None) -> dict:
    return headline({n: _row(e) for n, e in systems.items()}, {n: _outcomes(e) for n, e in systems.items()}, oracle)


PIDS = [f"p{i}" for i in range(8)]


def test_a_sound_comparison_is_met_or_missed():
    """The control: solved problems on both sides, the two disagreeing on some: no target is degenerate."""
    lc = [_ep(p, i < 7, 200) for i, p in enumerate(PIDS)]
    ls = [_ep(p, i < 6 or i == 7, 20, "long_short", role="long") for i, p in enumerate(PIDS)]
    head = _head({"long_cot": lc, "long_short_sft": ls}, oracle=50.0)
    assert _status(head) == {"tokens per problem ≥ 80% below long_cot": "met", "accuracy within 2 points of long_cot": "met",
                             "removes ≥ 90% of the removable tokens (long_cot − oracle trace)": "met"}
    assert head["degenerate"] == {} and head["discordant"] == [1, 1]


def test_zero_against_zero_accuracy_is_degenerate_never_met():
    """Both solve nothing: "within 2 points" and "80% fewer tokens" hold by arithmetic and mean nothing."""
    lc = [_ep(p, False, 200) for p in PIDS]
    ls = [_ep(p, False, 10, "long_short", role="long") for p in PIDS]
    head = _head({"long_cot": lc, "long_short_sft": ls})
    assert set(_status(head).values()) == {"degenerate"}
    for t in head["targets"]:
        assert t["met"] is False and t["missed_by"] is None and "solve" in t["degenerate"]
    assert set(head["degenerate"]) == {"token_reduction", "accuracy_delta"}


def test_a_token_reduction_when_one_system_answered_nothing_is_degenerate():
    lc = [_ep(p, i < 6, 200) for i, p in enumerate(PIDS)]
    ls = [_ep(p, False, 8, "long_short", answered=False, role="long") for p in PIDS]  # cut short every time: no answer
    head = _head({"long_cot": lc, "long_short_sft": ls})
    tokens = next(t for t in head["targets"] if "80%" in t["name"])
    assert tokens["value"] == pytest.approx(0.96) and tokens["status"] == "degenerate" and not tokens["met"]
    assert "answered none of its 8 episodes" in tokens["degenerate"]
    assert _status(head)["accuracy within 2 points of long_cot"] == "missed"  # that comparison is sound: 75% vs 0%


def test_no_episodes_is_degenerate():
    lc = [_ep(p, True, 200) for p in PIDS]
    head = _head({"long_cot": lc, "long_short_sft": []})
    assert set(_status(head).values()) == {"degenerate"}
    assert "long_short_sft has no episodes (n = 0)" in head["degenerate"]["token_reduction"]


def test_a_paired_test_without_discordant_pairs_is_no_success():
    """RL cut tokens while both adapters are right on exactly the same problems: McNemar has nothing to test, so
    "significant gain over SFT" is degenerate, not met (the old rule met it on the token interval alone)."""
    lc = [_ep(p, True, 200) for p in PIDS]
    sft = [_ep(p, i < 4, 120, "long_short", role="long") for i, p in enumerate(PIDS)]
    rl = [_ep(p, i < 4, 60 + i, "long_short", role="long") for i, p in enumerate(PIDS)]
    head = _head({"long_cot": lc, "long_short_sft": sft, "long_short_rl": rl})
    gain = next(t for t in head["targets"] if "significant gain" in t["name"])
    assert head["rl_vs_sft"]["discordant"] == [0, 0] and head["rl_vs_sft"]["tokens_significant"]
    assert gain["status"] == "degenerate" and "no discordant pairs" in gain["degenerate"] and "0:0" in gain["note"]


def test_pdr_gets_its_target_without_sr():
    lc = [_ep(p, i < 4, 200) for i, p in enumerate(PIDS)]
    pdr = [_ep(p, i < 6, 210, "pdr") for i, p in enumerate(PIDS)]
    head = _head({"long_cot": lc, "pdr": pdr})
    # 2 more right of 8 is a gain, not evidence: McNemar 0:2, p = 0.5 -> missed
    assert _status(head) == {"pdr beats long_cot at matched B_seq": "missed"} and head["pdr_vs_long_cot"]["discordant"] == [0, 2]
    many = [f"q{i}" for i in range(24)]
    lc = [_ep(p, i < 4, 200) for i, p in enumerate(many)]
    pdr = [_ep(p, i < 14, 190, "pdr") for i, p in enumerate(many)]  # 0:10, p = 0.002; B_seq 5% below: matched
    assert _status(_head({"long_cot": lc, "pdr": pdr})) == {"pdr beats long_cot at matched B_seq": "met"}
    pdr = [_ep(p, i < 14, 170, "pdr") for i, p in enumerate(many)]  # 15% below long CoT's B_seq: not matched
    assert _status(_head({"long_cot": lc, "pdr": pdr})) == {"pdr beats long_cot at matched B_seq": "missed"}


def test_pdr_after_operator_rl_is_tested_against_pdr_before_it_and_long_cot():
    """Operator RL's claim: PDR answered by the adapter RL-trained through it beats PDR before it, each pair on the same
    problems with its own B_seq; significance is McNemar's, as for every other target."""
    many = [f"q{i}" for i in range(24)]
    lc = [_ep(p, i < 12, 400) for i, p in enumerate(many)]
    pdr = [_ep(p, i < 4, 420, "pdr") for i, p in enumerate(many)]
    pdr_rl = [_ep(p, i < 14, 410, "pdr", role="long") for i, p in enumerate(many)]  # 10 more than pdr, 0 fewer
    head = _head({"long_cot": lc, "pdr": pdr, "pdr_rl": pdr_rl})
    status = _status(head)
    assert status["pdr_rl beats pdr at matched B_seq"] == "met" and head["pdr_rl_vs_pdr"]["discordant"] == [0, 10]
    assert head["pdr_rl_vs_pdr"]["b_seq_pdr"] == 420 and head["pdr_rl_vs_pdr"]["b_seq_matched"]
    # against long CoT: 2 more right of 24 is no evidence (McNemar 0:2)
    assert status["pdr_rl beats long_cot at matched B_seq"] == "missed" and head["pdr_rl_vs_long_cot"]["discordant"] == [0, 2]
    assert status["pdr beats long_cot at matched B_seq"] == "missed"
    # without PDR before RL there is nothing to compare it with: no target, no comparison
    head = _head({"long_cot": lc, "pdr_rl": pdr_rl})
    assert "pdr_rl_vs_pdr" not in head and set(_status(head)) == {"pdr_rl beats long_cot at matched B_seq"}


def test_the_length_penalty_baseline_is_compared_with_long_cot_and_long_short_paired():
    """What a user would pick instead: the one-adapter length-penalty baseline, paired against long CoT and against
    Long⊗Short on the same problems, reported whichever wins (no target)."""
    lc = [_ep(p, i < 7, 200) for i, p in enumerate(PIDS)]
    lp = [_ep(p, i < 7, 180, role="long") for i, p in enumerate(PIDS)]  # 10% fewer tokens, the same problems right
    ls = [_ep(p, i < 4, 60, "long_short", role="long") for i, p in enumerate(PIDS)]
    head = _head({"long_cot": lc, "length_penalty_rl": lp, "long_short_rl": ls})
    base = head["length_penalty_rl_vs_long_cot"]
    assert base["token_reduction"] == pytest.approx(0.10) and base["accuracy_delta_points"] == 0 and base["discordant"] == [0, 0]
    vs = head["long_short_rl_vs_length_penalty_rl"]
    assert vs["token_reduction"] == pytest.approx(1 - 60 / 180) and vs["accuracy_delta_points"] == pytest.approx(-37.5)
    assert vs["discordant"] == [3, 0] and vs["n_pairs"] == 8 and 0 < vs["mcnemar_p"] <= 1
    assert not any("length_penalty_rl" in t["name"] for t in head["targets"])


@pytest.fixture
def plan(tmp_path):
    return make_plan(load_recipe(PIPELINE_RECIPE, quick_overrides(PIPELINE_RECIPE) + [f"run.out_dir={tmp_path}"]), PIPELINE_RECIPE)


def _write_run(plan) -> dict:
    """Hand-built outputs of stages eval (three systems, one of them solving nothing), rl and benchmarks."""
    systems = {
        "long_cot": [_ep(p, i < 5, 200) for i, p in enumerate(PIDS)],
        "long_short_sft": [_ep(p, False, 30, "long_short", answered=False, role="long") for p in PIDS],
        "pdr": [_ep(p, i < 6, 400, "pdr") for i, p in enumerate(PIDS)],
    }
    proto = {"long_cot": "long_cot", "long_short_sft": "long_short", "pdr": "pdr"}
    for name, eps in systems.items():
        path = plan.stages["eval"].dir / name / "synthetic" / proto[name] / "synthetic.jsonl"
        path.parent.mkdir(parents=True)
        write_episodes(str(path), eps)
    rl = plan.stages["rl"].dir
    rl.mkdir(parents=True)
    (rl / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "accuracy": {1: 0.25, 2: 0.5, 3: 1.0}[s], "long/reward": 0.1 * s, "short/reward": 0.0,
                                                          "tokens": 100 - s, "sync/ok": True}) + "\n" for s in (1, 2, 3)))
    # step 1 draws p0 twice: its two groups' samples both say 0 and 1
    step1 = [_ep("p0", k == 1, 10, "long_short", sample=k % 2, role="long", group="1:p0", step=1) for k in range(4)]
    step3 = [_ep("p5", True, 12, "long_short", sample=k, role="short", group="3:p5", step=3) for k in range(2)]
    write_episodes(str(rl / "episodes.jsonl"), step1 + step3)
    bench = {"long_cot": {"math500": {**{k: _row(systems["long_cot"])[k] for k in SUMMARY_KEYS}, "problems": 8}}}
    rec = lambda summary: {"seconds": 1.0, "summary": summary}  # noqa: E731
    return {"reasoner": rec({"source": "shipped", "held_out": {"n": 500, "accuracy": 0.914}}),
            "coldstart": rec({}), "eval": rec({n: {k: v for k, v in _row(e).items() if k in SUMMARY_KEYS} for n, e in systems.items()}),
            "benchmarks": rec(bench)}


def test_report_card_states_n_and_intervals_and_marks_degenerate(plan):
    report = write_report(plan, _write_run(plan))
    run = plan.run_dir
    on_disk = json.loads((run / "report.json").read_text())
    for row in [*on_disk["systems"].values(), on_disk["benchmarks"]["long_cot"]["math500"]]:
        assert row["n"] == 8 and len(row["accuracy_ci"]) == 2
        assert row["accuracy_ci"][0] <= row["accuracy"] <= row["accuracy_ci"][1]
    assert on_disk["rl"]["episodes_per_step"] == 4 and on_disk["rl"]["last"]["accuracy_ci"][1] == 1.0  # 4 of 4 at step 3
    head = report["headline"]
    assert _status(head)["accuracy within 2 points of long_cot"] == "missed"  # 62.5% vs 0%: a real loss
    assert head["degenerate"] == {"token_reduction": "long_short_sft answered none of its 8 episodes"}
    md = (run / "report.md").read_text()
    # every accuracy the card prints carries its interval: the systems table, the benchmark table, the RL table
    assert re.search(r"\| long_cot \| 8 \| 0\.625 \[0\.\d+, 0\.\d+\] \|", md)
    assert re.search(r"\| long_cot \| math500 \| 8 \| 0\.625 \[0\.\d+, 0\.\d+\] \|", md)
    assert "| accuracy [95% CI], n = 4 | 0.250 [0.0456, 0.699] | 1.000 [0.51, 1] |" in md  # Wilson of 1/4 and 4/4
    for t in head["targets"]:
        line = next(line for line in md.splitlines() if line.startswith(f"- target: {t['name']}:"))
        assert line.rstrip().endswith(t["note"]) and (("**degenerate**" in line) == (t["status"] == "degenerate"))
        assert (": met" in line) == (t["status"] == "met")
    for png in ("accuracy_vs_tokens.png", "accuracy_vs_bseq.png", "rl_curves.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"


def test_viewer_indexes_every_sample_and_sets_the_systems_side_by_side(plan):
    write_report(plan, _write_run(plan))
    page = (plan.run_dir / "viewer.html").read_text()
    first = page.split("<h2>RL, first logged step</h2>", 1)[1].split("<h2>", 1)[0]
    assert [f"sample {k} of 4" in first for k in (1, 2, 3, 4)] == [True] * 4  # meta.sample says 0, 1, 0, 1
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)) == 4 + 2 + 3 * 4  # RL first and last step, 4 held-out problems × 3 systems
    table = page.split("every system on the same problems</h2>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 4 and all(f"<th>{s}</th>" in table for s in ("long_cot", "long_short_sft", "pdr"))
    p0 = table.split("<b>p0</b>", 1)[1].split("</tr>", 1)[0]  # one row: each system's answer to p0, linked to its episode
    assert [f'href="#eval-{s}-0"' in p0 for s in ("long_cot", "long_short_sft", "pdr")] == [True] * 3
    assert p0.count("correct") == 2 and p0.count("wrong") == 1 and "400 tokens" in p0
    for anchor in re.findall(r'href="#([^"]+)"', page):
        assert anchor in ids


def _no_overlap(fig) -> None:
    fig.canvas.draw()
    boxes = [t.get_window_extent() for ax in fig.axes for t in ax.texts]
    assert boxes and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _every_line_in_legend(fig) -> None:
    """Every drawn line has its legend entry; an errorbar series' line is labelled through its container."""
    from matplotlib.container import ErrorbarContainer

    series = {id(c[0]): c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)}
    lines = [series.get(id(ln), ln) for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() not in ("None", "none", "")]
    legend = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert lines and all(ln.get_label() in legend for ln in lines), ([ln.get_label() for ln in lines], legend)


def test_plots_keep_labels_apart_and_every_line_in_the_legend():
    import matplotlib.pyplot as plt

    same = {"accuracy": 0.0, "tokens_per_problem": 100.0, "b_seq": 100.0}  # three systems on one spot (0% is common)
    fig = plot_systems({"long_cot": same, "long_short_sft": same, "long_short_rl": {**same, "b_seq": 101.0}}, "b_seq", "B_seq", "t")
    _no_overlap(fig)
    plt.close(fig)
    fig = plot_rl([{"step": s, "accuracy": 0.1 * s, "long/reward": 0.2, "tokens": 50 + s} for s in (1, 2, 3)])
    _every_line_in_legend(fig)  # the dashed tokens line sits on the twin axis: it needs its entry too
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)  # steps are whole numbers
    plt.close(fig)
    fig = eval_figure([{"protocol": p, "benchmark": "math500", "b_seq": 50.0, "accuracy": 0.0} for p in ("long_cot", "pdr")])
    _no_overlap(fig)
    plt.close(fig)
    row = {"run": "r", "ignores": [], "accuracy_ci": [0.0, 0.3], "b_seq_ci": [40.0, 60.0], "b_seq": 50.0, "accuracy": 0.1}
    rows = [{**row, "protocol": "long_cot", "run": "a", "override": {"protocol.pdr_schedule": [2, 1]}, "frontier": {"b_seq": True}},
            {**row, "protocol": "pdr", "run": "b", "override": {"protocol.pdr_schedule": [2, 1]}, "frontier": {"b_seq": True}},
            {**row, "protocol": "pdr", "run": "c", "b_seq": 80.0, "b_seq_ci": [70.0, 90.0], "override": {"protocol.pdr_schedule": [4, 1]}, "frontier": {"b_seq": False}}]
    fig = sweep_figure(rows, "b_seq")
    _every_line_in_legend(fig)  # the frontier's dashed staircase included
    _no_overlap(fig)
    plt.close(fig)


def test_eval_summary_states_n_and_the_interval():
    eps = [_ep(p, i < 3, 10, sample=k) for i, p in enumerate(PIDS[:4]) for k in range(2)]
    row = result_row("long_cot", "math500", eps)
    assert row["n"] == 8 and row["accuracy"] == 0.75
    lo, hi = row["accuracy_ci"]
    assert 0.40 < lo < 0.75 < hi < 0.98
    md = summary_markdown({"model": "m", "adapters": {}, "engine": "hf", "samples": 2, "results": [row]}, plot=False)
    assert f"| long_cot | math500 | 4 | 8 | 0.750 [{lo:.3f}, {hi:.3f}] |" in md
    empty = summary_markdown({"model": "m", "adapters": {}, "engine": "hf", "samples": 1,
                              "results": [result_row("long_cot", "math500", [])]}, plot=False)
    assert "| long_cot | math500 | 0 | 0 | — (no episodes) |" in empty


def test_quick_writes_where_the_docs_say():
    plan = make_plan(load_recipe(PIPELINE_RECIPE, quick_overrides(PIPELINE_RECIPE)), PIPELINE_RECIPE)
    assert plan.run_dir == Path("runs/tiny-quick")
    doc = (Path(REPO) / "docs" / "pipeline.md").read_text()
    assert re.search(r"pipeline --recipe recipes/tiny/pipeline\.yaml --quick +# .*: runs/tiny-quick\n", doc)
