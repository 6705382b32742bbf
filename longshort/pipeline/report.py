"""The report card: report.json, report.md, the plots and the trajectory viewer of a pipeline run.

The headline compares Long⊗Short (after RL, else after SFT) with the long-CoT reasoner on the held-out split:
token reduction = 1 − tokens(LS)/tokens(long CoT) (target ≥ 0.80) and accuracy delta in points (target ≥ −2),
the paper's claim in miniature (arXiv 2505.11827); and PDR against long CoT at matched B_seq (arXiv 2510.01123).
Every number is read from the stage outputs; targets are reported as met or missed with the measured value.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from longshort.eval import annotate_apart, new_figure, to_png
from longshort.io import atomic_write_bytes, atomic_write_text, read_jsonl, write_json
from longshort.pipeline.compare import ALPHA, outcomes as episode_outcomes, paired, with_interval
from longshort.pipeline.plan import Plan
from longshort.pipeline.stages import one_line
from longshort.pipeline.viewer import write_viewer
from longshort.stats import wilson

TOKEN_REDUCTION_TARGET = 0.80  # Long⊗Short: ≥ 80% fewer tokens than the long-CoT reasoner
ACCURACY_DELTA_TARGET = -2.0  # ... while losing at most 2 accuracy points
BSEQ_MATCH = 0.10  # PDR's B_seq counts as matched when it is within ±10% of long CoT's
REMOVABLE_TARGET = 0.90  # ... and removes ≥ 90% of what the generator's concise trace shows to be removable
# (system, baseline) at B_seq: the operators against long CoT (arXiv 2510.01123), and PDR after RL through the
# operator against long CoT and against PDR before it; every pair but SR's has a target
OPERATOR_PAIRS = (("pdr", "long_cot"), ("sr", "long_cot"), ("pdr_rl", "long_cot"), ("pdr_rl", "pdr"))


def _n(row: dict[str, Any]) -> int:
    return int(row.get("n", row.get("problems", 0)))


def _empty(named: dict[str, dict[str, Any]]) -> str | None:
    for name, row in named.items():
        if _n(row) == 0:
            return f"{name} has no episodes (n = 0)"
    return None


def token_degenerate(named: dict[str, dict[str, Any]]) -> str | None:
    """Why a token comparison of these systems (baseline first) says nothing, or None: a system that answered
    nothing, or systems that solve nothing, write no solution, so their token counts are no solution's length."""
    reason = _empty(named)
    for name, row in named.items():
        if reason is None and row.get("answered_rate") == 0:
            reason = f"{name} answered none of its {_n(row)} episodes"
    base_name, base = next(iter(named.items()))
    if reason is None and not base["tokens_per_problem"]:
        reason = f"{base_name} generated no tokens"
    if reason is None and all(row["accuracy"] == 0 for row in named.values()):
        reason = f"{' and '.join(named)} solve no problem: fewer tokens for no solution"
    return reason


def accuracy_degenerate(named: dict[str, dict[str, Any]], pair: dict[str, Any] | None = None,
                        test: bool = False) -> str | None:
    """Why an accuracy comparison of these systems says nothing, or None. `test`: the claim rests on McNemar's
    test, which only sees the discordant pairs (problems exactly one of the two solves)."""
    reason = _empty(named)
    if reason is None and all(row["accuracy"] == 0 for row in named.values()):
        reason = f"{' and '.join(named)} solve 0 of {min(_n(r) for r in named.values())} problems each"
    if reason is None and pair is not None and pair["n_pairs"] == 0:
        reason = f"no problem was evaluated by both {' and '.join(named)}"
    if reason is None and pair is not None and test and not sum(pair["discordant"]):
        reason = "no discordant pairs: both are right on exactly the same problems, so McNemar's test has nothing to test"
    return reason


def _target(name: str, value: float | None, target: float, met: bool, missed_by: float | None,
            degenerate: str | None = None, note: str = "") -> dict[str, Any]:
    """One target of the report card: `status` met / missed / degenerate. A degenerate comparison (reason in
    `degenerate`) is never met, whatever its numbers say."""
    status = "degenerate" if degenerate else "met" if met else "missed"
    out = {"name": name, "value": value, "target": target, "met": status == "met", "status": status,
           "missed_by": missed_by if status == "missed" else None, "note": note}
    if degenerate:
        out["degenerate"] = degenerate
    return out


def headline(systems: dict[str, dict[str, Any]], outcomes: dict[str, Any] | None = None,
             oracle_tokens: float | None = None) -> dict[str, Any]:
    """Token reduction and accuracy delta of Long⊗Short vs long CoT; the operators at matched B_seq (OPERATOR_PAIRS).

    With `outcomes` (per-episode results of each system on the same problems) each comparison carries its
    paired test and intervals; with `oracle_tokens` (mean tokens of the generator's concise trace on those
    problems) the share of the removable tokens that Long⊗Short removed. A comparison that says nothing (no
    episodes, nothing answered, nothing solved, no discordant pairs) is reported as `degenerate`, never met."""
    outcomes = outcomes or {}
    base = systems["long_cot"]
    ls_name = "long_short_rl" if "long_short_rl" in systems else "long_short_sft" if "long_short_sft" in systems else None
    out: dict[str, Any] = {"long_cot": {k: base[k] for k in ("accuracy", "tokens_per_problem", "b_seq")}, "targets": [],
                           "degenerate": {}}
    if ls_name:
        ls = systems[ls_name]
        pair = paired(outcomes["long_cot"], outcomes[ls_name]) if "long_cot" in outcomes and ls_name in outcomes else None
        tok_bad = token_degenerate({"long_cot": base, ls_name: ls})
        acc_bad = accuracy_degenerate({"long_cot": base, ls_name: ls}, pair)
        red = 1 - ls["tokens_per_problem"] / base["tokens_per_problem"] if base["tokens_per_problem"] else None
        delta = 100 * (ls["accuracy"] - base["accuracy"])
        out.update(long_short_system=ls_name, token_reduction=red, accuracy_delta_points=delta)
        out["degenerate"].update({k: v for k, v in (("token_reduction", tok_bad), ("accuracy_delta", acc_bad)) if v})
        if pair is not None:
            out.update(accuracy_delta_ci=pair["accuracy_delta_ci"], accuracy_delta_p_value=pair["mcnemar_p"],
                       token_reduction_ci=pair["token_reduction_ci"], n_pairs=pair["n_pairs"], discordant=pair["discordant"])
        if oracle_tokens is not None:
            removable = base["tokens_per_problem"] - oracle_tokens
            out["oracle_tokens_per_problem"] = oracle_tokens
            out["removable_tokens_removed"] = (base["tokens_per_problem"] - ls["tokens_per_problem"]) / removable if removable > 0 else None
        if "long_short_rl" in outcomes and "long_short_sft" in outcomes:  # does RL add anything over SFT alone?
            out["rl_vs_sft"] = paired(outcomes["long_short_sft"], outcomes["long_short_rl"])
        if out.get("removable_tokens_removed") is not None:
            rr = out["removable_tokens_removed"]
            out["targets"].append(_target(f"{ls_name}: removes ≥ 90% of the removable tokens (long_cot − oracle trace)",
                                          rr, REMOVABLE_TARGET, rr >= REMOVABLE_TARGET, max(0.0, REMOVABLE_TARGET - rr), tok_bad))
        if "rl_vs_sft" in out and "long_short_sft" in systems:
            r = out["rl_vs_sft"]
            rs = {"long_short_sft": systems["long_short_sft"], "long_short_rl": systems["long_short_rl"]}
            sig = (r["accuracy_significant"] and r["accuracy_delta_points"] > 0) or (r["tokens_significant"] and r["tokens_delta"] < 0
                                                                                  and r["accuracy_delta_points"] >= ACCURACY_DELTA_TARGET)
            out["targets"].append(_target(
                "long_short_rl: significant gain over long_short_sft (accuracy, or fewer tokens at ≥ −2 points)",
                r["mcnemar_p"], ALPHA, bool(sig), None, accuracy_degenerate(rs, r, test=True),
                f"accuracy {r['accuracy_delta_points']:+.1f} points (McNemar p {r['mcnemar_p']:.3g}, discordant "
                f"{r['discordant'][0]}:{r['discordant'][1]}), tokens {r['tokens_delta']:+.1f} "
                f"[{r['tokens_delta_ci'][0]:+.1f}, {r['tokens_delta_ci'][1]:+.1f}]"))
        out["targets"] += [
            _target(f"{ls_name}: tokens per problem ≥ 80% below long_cot", red, TOKEN_REDUCTION_TARGET,
                    red is not None and red >= TOKEN_REDUCTION_TARGET,
                    None if red is None else max(0.0, TOKEN_REDUCTION_TARGET - red), tok_bad),
            _target(f"{ls_name}: accuracy within 2 points of long_cot", delta, ACCURACY_DELTA_TARGET,
                    delta >= ACCURACY_DELTA_TARGET, max(0.0, ACCURACY_DELTA_TARGET - delta), acc_bad),
        ]
    # the single-model baseline a user would pick instead, against long CoT and against Long⊗Short: reported
    # whichever wins, with no target of its own
    for name, against in (("length_penalty_rl", "long_cot"), (ls_name, "length_penalty_rl")):
        if name in outcomes and against in outcomes:
            p = paired(outcomes[against], outcomes[name])
            out[f"{name}_vs_{against}"] = {k: p[k] for k in (
                "n_pairs", "discordant", "accuracy_delta_points", "accuracy_delta_ci", "mcnemar_p", "tokens_delta",
                "tokens_delta_ci", "token_reduction", "token_reduction_ci")}
    for name, against in OPERATOR_PAIRS:
        if name not in systems or against not in systems:
            continue
        row, ref = systems[name], systems[against]
        matched = abs(row["b_seq"] - ref["b_seq"]) <= BSEQ_MATCH * ref["b_seq"]
        gain = 100 * (row["accuracy"] - ref["accuracy"])
        comp = out[f"{name}_vs_{against}"] = {"accuracy_delta_points": gain, f"b_seq_{name}": row["b_seq"],
                                              f"b_seq_{against}": ref["b_seq"], "b_seq_matched": matched}
        pair = paired(outcomes[against], outcomes[name]) if name in outcomes and against in outcomes else None
        if pair is not None:
            comp.update(accuracy_delta_ci=pair["accuracy_delta_ci"], p_value=pair["mcnemar_p"], discordant=pair["discordant"])
        bad = accuracy_degenerate({against: ref, name: row}, pair, test=True)
        if bad:
            comp["degenerate"] = bad
        if name != "sr":  # the operators paper's claims; SR is reported, with no target of its own
            # "more accurate" is a claim about the systems, not this sample: it needs the paired test's p < ALPHA
            sig = pair is not None and pair["mcnemar_p"] is not None and pair["mcnemar_p"] < ALPHA
            out["targets"].append(_target(f"{name} beats {against} at matched B_seq", gain, 0.0, matched and gain > 0 and sig,
                                          max(0.0, -gain) if matched else None, bad,
                                          "" if matched else f"B_seq not matched ({row['b_seq']:.0f} vs {ref['b_seq']:.0f})"))
    return out


def oracle_tokens(plan: Plan, ids: set[str]) -> float | None:
    """Mean tokens of the generator's concise trace (essential steps only, plus the end-of-turn token that a
    generation counts) over the evaluated problems; None when the held-out rows carry no oracle trace."""
    from longshort.chat import encode
    from longshort.models import load_tokenizer

    rows = [r for r in _rows(plan.test_file) if r.get("id") in ids and isinstance(r.get("oracle_response"), str)]
    if not rows or len(rows) < len(ids):
        return None
    tok = load_tokenizer(str(plan.reasoner))
    return sum(len(encode(tok, r["oracle_response"])) + 1 for r in rows) / len(rows)


def plot_systems(systems: dict[str, dict[str, Any]], x: str, xlabel: str, title: str) -> Any:
    fig, ax = new_figure((6.4, 4.4), 110)
    for i, (name, r) in enumerate(systems.items()):
        ax.scatter([r[x]], [r["accuracy"]], marker="osD^vP"[i % 6], s=60, label=name)
    ax.set(xlabel=xlabel, ylabel="accuracy (held-out split)", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    annotate_apart(ax, [(r[x], r["accuracy"], name) for name, r in systems.items()], fontsize=8)
    return fig


def plot_rl(rows: list[dict[str, Any]]) -> Any:
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure((6.4, 4.4), 110)
    steps = [r["step"] for r in rows]
    for key in ("long/reward", "short/reward", "accuracy"):
        if any(key in r for r in rows):
            ax.plot(steps, [r.get(key, math.nan) for r in rows], marker=".", label=key)
    ax.set(xlabel="RL step", ylabel="reward / accuracy", title="Multi-turn RL of both roles")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no tick at step 1.5
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r.get("tokens_per_problem", math.nan) for r in rows], color="grey", linestyle="--", label="tokens per episode")
    ax2.set_ylabel("tokens per episode (dashed)")
    # one legend for both axes: the twin's line needs its entry too
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig


def plot_scores(scores: list[float]) -> Any:
    fig, ax = new_figure((6.4, 4.4), 110)
    ax.hist(scores, bins=20, range=(0, 1), color="#4477aa")
    ax.set(xlabel="thought importance M = log2(1 + eff·acc − δ)", ylabel="thoughts", title="Thought scores (MC prefix rollouts)")
    return fig


def _rows(path: Path) -> list[dict[str, Any]]:
    return [r for _, r in read_jsonl(path, on_error="skip")] if path.is_file() else []


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_report(plan: Plan, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write report.json, report.md, PNGs and viewer.html into the run directory; return the report."""
    out = plan.run_dir
    systems = {name: with_interval(row) for name, row in records["eval"]["summary"].items()}
    per_episode = {name: episode_outcomes(plan.stages["eval"].dir / name / "synthetic") for name in systems}
    rl_rows = _rows(plan.stages["rl"].dir / "metrics.jsonl")
    scores = [r["M"] for r in _rows(plan.stages["analyze"].dir / "thoughts.jsonl") if isinstance(r.get("M"), (int, float))]
    head = headline(systems, per_episode, oracle_tokens(plan, {pid for pid, _ in per_episode.get("long_cot", {})}))
    reasoner = records["reasoner"]["summary"]
    lc = systems["long_cot"]
    analysis = records["coldstart"]["summary"].get("ground_truth", {})
    rl: dict[str, Any] = {}
    if rl_rows:
        keys = ("accuracy", "tokens_per_problem", "tokens_per_solved", "long/reward", "short/reward", "rethink_rate", "sync/ok")
        cfg = plan.stages["rl"].recipe.rl
        per_step = cfg.problems_per_step * cfg.group_size  # the episodes each step's accuracy is a mean of
        rl = {"steps": len(rl_rows), "first": {k: rl_rows[0].get(k) for k in keys}, "last": {k: rl_rows[-1].get(k) for k in keys},
              "sync_ok_every_step": all(r.get("sync/ok") is True for r in rl_rows), "episodes_per_step": per_step}
        for end in ("first", "last"):
            acc = rl[end].get("accuracy")
            if isinstance(acc, (int, float)):
                rl[end]["accuracy_ci"] = list(wilson(acc * per_step, per_step))
    op_rows = _rows(plan.stages["rl_operator"].dir / "metrics.jsonl")
    operator_rl: dict[str, Any] = {}
    if op_rows:  # RL through PDR (system pdr_rl): per call kind and per rollout protocol, first and last step
        keys = ("accuracy/pdr", "accuracy/long_cot", "format_ok/refine", "tokens/refine", "reward/pdr", "reward/long_cot")
        operator_rl = {"steps": len(op_rows), "first": {k: op_rows[0].get(k) for k in keys}, "last": {k: op_rows[-1].get(k) for k in keys},
                       "sync_ok_every_step": all(r.get("sync/ok") is True for r in op_rows)}
    report = {
        "run": str(out), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stages": {n: {"seconds": r["seconds"], "summary": r["summary"]} for n, r in records.items()},
        "total_stage_seconds": sum(r["seconds"] for r in records.values()),
        "systems": systems, "headline": head, "rl": rl, "rl_operator": operator_rl,
        "reasoner": {"source": reasoner.get("source", "base" if "skipped" in reasoner else "train"), "accuracy": lc["accuracy"],
                     "accuracy_ci": lc["accuracy_ci"], "n": lc["n"], "shipped_held_out": reasoner.get("held_out")},
        "analysis": {k: analysis[k] for k in ("precision", "precision_ci", "recall", "recall_ci", "precision_scored",
                                              "precision_scored_ci", "forced_kept", "forced_redundant", "confusion",
                                              "by_kind") if k in analysis},
        "benchmarks": {s: ({b: with_interval(r) for b, r in v.items()} if isinstance(v, dict) else v)
                       for s, v in records["benchmarks"]["summary"].items()},
    }
    plots = {"accuracy_vs_tokens.png": plot_systems(systems, "tokens_per_problem", "generated tokens per problem (all calls)",
                                                    "Accuracy against tokens per problem"),
             "accuracy_vs_bseq.png": plot_systems(systems, "b_seq", "B_seq: tokens on the sequential path", "Accuracy against B_seq")}
    if rl_rows:
        plots["rl_curves.png"] = plot_rl(rl_rows)
    if scores:
        plots["thought_scores.png"] = plot_scores(scores)
    for name, fig in plots.items():
        atomic_write_bytes(out / name, to_png(fig))
    report["plots"] = sorted(plots)
    report["viewer"] = write_viewer(plan, out / "viewer.html")
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    head = report["headline"]
    lines = [f"# longshort pipeline report — `{report['run']}`", "", f"Written {report['written_at']}; stage time "
             f"{report['total_stage_seconds']:.0f} s (cached stages count the time they took when they ran).", "",
             "## Held-out split", ""]
    rs = report.get("reasoner", {})
    if rs:
        lines += [f"Reasoner: **{rs['source']}**; long CoT solves {_acc(rs['accuracy'], rs['accuracy_ci'], rs['n'])} of n={rs['n']} "
                  "held-out problems (strict rule: the last \\boxed{} of the output).", ""]
    lenient = any("accuracy_lenient" in r for r in report["systems"].values())
    lines += _md_table(["system", "n", "accuracy [95% CI]"] + (["lenient [95% CI]"] if lenient else []) + ["tokens / problem", "B_seq", "B_total", "turns"], [
        [n, str(_n(r)), _acc(r["accuracy"], r.get("accuracy_ci"), _n(r))]
        + ([_acc(r["accuracy_lenient"], r.get("accuracy_lenient_ci"), _n(r)) if "accuracy_lenient" in r else "—"] if lenient else [])
        + [f"{r['tokens_per_problem']:.1f}", f"{r['b_seq']:.1f}", f"{r['b_total']:.1f}", f"{r['turns']:.2f}"]
        for n, r in report["systems"].items()])
    lines += ["", "## Headline (measured)", ""]
    if head.get("token_reduction") is not None:
        extra = ""
        if "accuracy_delta_ci" in head:
            extra = (f" (tokens {_ci(head['token_reduction_ci'], 100)} %, accuracy {_ci(head['accuracy_delta_ci'])} points, "
                     f"McNemar p = {head['accuracy_delta_p_value']:.3g}, {head['n_pairs']} paired problems)")
        lines.append(f"- {head['long_short_system']} vs long_cot: **{100 * head['token_reduction']:.1f}% fewer tokens**, "
                     f"accuracy **{head['accuracy_delta_points']:+.1f} points**{extra}.")
    for what, why in head.get("degenerate", {}).items():
        lines.append(f"- {what.replace('_', ' ')} is **degenerate**: {why}.")
    if head.get("removable_tokens_removed") is not None:
        lines.append(f"- removable tokens removed: **{100 * head['removable_tokens_removed']:.1f}%** (long_cot "
                     f"{head['long_cot']['tokens_per_problem']:.1f} tokens, the generator's concise trace {head['oracle_tokens_per_problem']:.1f}).")
    if "rl_vs_sft" in head:
        r = head["rl_vs_sft"]
        lines.append(f"- RL vs SFT only: accuracy {r['accuracy_delta_points']:+.1f} points {_ci(r['accuracy_delta_ci'])} "
                     f"(McNemar p = {r['mcnemar_p']:.3g}), tokens {r['tokens_delta']:+.1f} {_ci(r['tokens_delta_ci'])}.")
    for key, p in head.items():
        if key.endswith("_vs_length_penalty_rl") or key == "length_penalty_rl_vs_long_cot":
            name, against = key.split("_vs_")
            lines.append(f"- {name} vs {against}: {_pct(p['token_reduction'])} fewer tokens {_ci(p['token_reduction_ci'], 100)}, "
                         f"accuracy {p['accuracy_delta_points']:+.1f} points {_ci(p['accuracy_delta_ci'])} (McNemar p = "
                         f"{p['mcnemar_p']:.3g}, discordant {p['discordant'][0]}:{p['discordant'][1]}, {p['n_pairs']} paired problems).")
    for name, against in OPERATOR_PAIRS:
        if f"{name}_vs_{against}" in head:
            p = head[f"{name}_vs_{against}"]
            test = f", {_ci(p['accuracy_delta_ci'])}, p = {p['p_value']:.3g}" if "p_value" in p else ""
            lines.append(f"- {name} vs {against}: accuracy {p['accuracy_delta_points']:+.1f} points{test} at B_seq {p['b_seq_' + name]:.0f} vs "
                         f"{p['b_seq_' + against]:.0f} ({'matched' if p['b_seq_matched'] else 'not matched'})"
                         + (f"; **degenerate**: {p['degenerate']}." if "degenerate" in p else "."))
    for t in head["targets"]:
        status = t.get("status", "met" if t["met"] else "missed")  # report.json written before `status` existed
        status = ("met" if status == "met" else f"**degenerate** ({t['degenerate']})" if status == "degenerate"
                  else f"**missed** (by {t['missed_by']:.3g})" if t.get("missed_by") is not None else "**missed**")
        value = "—" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"- target: {t['name']}: measured {value} (target {t['target']:g}): {status}" + (f" — {t['note']}" if t.get("note") else ""))
    if report["rl"]:
        f, last = report["rl"]["first"], report["rl"]["last"]
        n = report["rl"].get("episodes_per_step")
        lines += ["", "## RL", "", f"{report['rl']['steps']} steps; sync check passed every step: {report['rl']['sync_ok_every_step']}"
                  + (f"; each step's accuracy is over its n = {n} sampled episodes." if n else "."), ""]

        def cell(step: dict[str, Any], k: str) -> str:
            v = step.get(k)
            return _acc(v, step.get("accuracy_ci"), n) if k == "accuracy" and n and isinstance(v, (int, float)) else _fmt(v)

        lines += _md_table(["metric", "first step", "last step"],
                           [[f"accuracy [95% CI], n = {n}" if k == "accuracy" and n else k, cell(f, k), cell(last, k)]
                            for k in f if k not in ("sync/ok", "accuracy_ci")])
    op = report.get("rl_operator")
    if op:
        lines += ["", "## RL through PDR (stage rl_operator, system pdr_rl)", "",
                  f"{op['steps']} steps; sync check passed every step: {op['sync_ok_every_step']}. Training rollouts, first and last step "
                  "(a step's operator and long-trace rollouts are each about half of its episodes):", ""]
        lines += _md_table(["metric", "first step", "last step"], [[k, _fmt(op["first"][k]), _fmt(op["last"][k])] for k in op["first"]])
    an = report.get("analysis") or {}
    if an.get("by_kind"):
        lines += ["", "## Thought analysis against the generator's ground truth", "",
                  f"Selected as long turns: precision **{an['precision']:.3f}** {_ci(an.get('precision_ci'))}, recall "
                  f"**{an['recall']:.3f}** {_ci(an.get('recall_ci'))} (essential = start, add, conclusion steps)."
                  + (f" {an['forced_kept']} first thoughts are long turns by `coldstart.keep_first` whatever their score "
                     f"({an['forced_redundant']} of them redundant); of the thoughts the score chose, precision "
                     f"**{an['precision_scored']:.3f}** {_ci(an['precision_scored_ci'])}." if an.get("forced_kept") else ""), ""]
        lines += _md_table(["step kind", "essential", "thoughts", "mean M [95% CI]"],
                           [[k, "yes" if v["essential"] else "no", str(v["n"]), f"{v['mean']:.3f} {_ci(v['ci'])}"]
                            for k, v in an["by_kind"].items()])
    bench = report["benchmarks"]
    if bench and "skipped" not in bench:
        lines += ["", "## Real benchmarks (final models; a tiny model scores low, the harness runs)", ""]
        lines += _md_table(["system", "benchmark", "n", "accuracy [95% CI]", "tokens / problem"],
                           [[s, b, str(_n(r)), _acc(r["accuracy"], r.get("accuracy_ci"), _n(r)), f"{r['tokens_per_problem']:.1f}"]
                            for s, v in bench.items() for b, r in v.items()])
    lines += ["", "## Stages", ""]
    lines += _md_table(["stage", "seconds", "summary"], [[n, f"{s['seconds']:.0f}", one_line(n, s["summary"])] for n, s in report["stages"].items()])
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in report["plots"]) + "; episodes: [viewer.html](viewer.html).", ""]
    return "\n".join(lines)


def _acc(acc: float, ci: Any, n: int) -> str:
    """An accuracy as the report prints it: with its interval, or no number at all when nothing was evaluated."""
    return f"{acc:.3f} {_ci(ci)}".rstrip() if n else "— (no episodes)"


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def _ci(ci: Any, scale: float = 1.0) -> str:
    if not ci or any(not isinstance(x, (int, float)) or math.isnan(x) for x in ci):
        return ""
    return f"[{scale * ci[0]:.3g}, {scale * ci[1]:.3g}]"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
