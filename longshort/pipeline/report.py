"""The report card: report.json, report.md, the plots and the trajectory viewer of a pipeline run.

The headline compares Long⊗Short (after RL, else after SFT) with the long-CoT reasoner on the held-out split:
token reduction = 1 − tokens(LS)/tokens(long CoT) (target ≥ 0.80) and accuracy delta in points (target ≥ −2),
the paper's claim in miniature (arXiv 2505.11827); and PDR against long CoT at matched B_seq (arXiv 2510.01123).
Every number is read from the stage outputs; targets are reported as met or missed with the measured value.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

from longshort.io import atomic_write_bytes, atomic_write_text, read_jsonl, write_json
from longshort.pipeline.compare import ALPHA, outcomes as episode_outcomes, paired, with_interval
from longshort.pipeline.plan import Plan
from longshort.pipeline.stages import one_line
from longshort.pipeline.viewer import write_viewer

TOKEN_REDUCTION_TARGET = 0.80  # Long⊗Short: ≥ 80% fewer tokens than the long-CoT reasoner
ACCURACY_DELTA_TARGET = -2.0  # ... while losing at most 2 accuracy points
BSEQ_MATCH = 1.10  # PDR's B_seq counts as matched when it is at most 10% above long CoT's
REMOVABLE_TARGET = 0.90  # ... and removes ≥ 90% of what the generator's concise trace shows to be removable


def headline(systems: dict[str, dict[str, Any]], outcomes: dict[str, Any] | None = None,
             oracle_tokens: float | None = None) -> dict[str, Any]:
    """Token reduction and accuracy delta of Long⊗Short vs long CoT; PDR vs long CoT at matched B_seq.

    With `outcomes` (per-episode results of each system on the same problems) each comparison carries its
    paired test and intervals; with `oracle_tokens` (mean tokens of the generator's concise trace on those
    problems) the share of the removable tokens that Long⊗Short removed."""
    outcomes = outcomes or {}
    base = systems["long_cot"]
    ls_name = "long_short_rl" if "long_short_rl" in systems else "long_short_sft" if "long_short_sft" in systems else None
    out: dict[str, Any] = {"long_cot": {k: base[k] for k in ("accuracy", "tokens_per_problem", "b_seq")}, "targets": []}
    if ls_name:
        ls = systems[ls_name]
        red = 1 - ls["tokens_per_problem"] / base["tokens_per_problem"] if base["tokens_per_problem"] else None
        delta = 100 * (ls["accuracy"] - base["accuracy"])
        out.update(long_short_system=ls_name, token_reduction=red, accuracy_delta_points=delta)
        if "long_cot" in outcomes and ls_name in outcomes:
            t = paired(outcomes["long_cot"], outcomes[ls_name])
            out.update(accuracy_delta_ci=t["accuracy_delta_ci"], accuracy_delta_p_value=t["mcnemar_p"],
                       token_reduction_ci=t["token_reduction_ci"], n_pairs=t["n_pairs"])
        if oracle_tokens is not None:
            removable = base["tokens_per_problem"] - oracle_tokens
            out["oracle_tokens_per_problem"] = oracle_tokens
            out["removable_tokens_removed"] = (base["tokens_per_problem"] - ls["tokens_per_problem"]) / removable if removable > 0 else None
        if "long_short_rl" in outcomes and "long_short_sft" in outcomes:  # does RL add anything over SFT alone?
            out["rl_vs_sft"] = paired(outcomes["long_short_sft"], outcomes["long_short_rl"])
        if out.get("removable_tokens_removed") is not None:
            rr = out["removable_tokens_removed"]
            out["targets"].append({"name": f"{ls_name}: removes ≥ 90% of the removable tokens (long_cot − oracle trace)",
                                   "value": rr, "target": REMOVABLE_TARGET, "met": rr >= REMOVABLE_TARGET,
                                   "missed_by": max(0.0, REMOVABLE_TARGET - rr)})
        if "rl_vs_sft" in out:
            r = out["rl_vs_sft"]
            sig = (r["accuracy_significant"] and r["accuracy_delta_points"] > 0) or (r["tokens_significant"] and r["tokens_delta"] < 0
                                                                                  and r["accuracy_delta_points"] >= ACCURACY_DELTA_TARGET)
            out["targets"].append({"name": "long_short_rl: significant gain over long_short_sft (accuracy, or fewer tokens at ≥ −2 points)",
                                   "value": r["mcnemar_p"], "target": ALPHA, "met": bool(sig), "missed_by": None,
                                   "note": f"accuracy {r['accuracy_delta_points']:+.1f} points (McNemar p {r['mcnemar_p']:.3g}), "
                                           f"tokens {r['tokens_delta']:+.1f} [{r['tokens_delta_ci'][0]:+.1f}, {r['tokens_delta_ci'][1]:+.1f}]"})
        out["targets"] += [
            {"name": f"{ls_name}: tokens per problem ≥ 80% below long_cot", "value": red, "target": TOKEN_REDUCTION_TARGET,
             "met": red >= TOKEN_REDUCTION_TARGET, "missed_by": max(0.0, TOKEN_REDUCTION_TARGET - red)},
            {"name": f"{ls_name}: accuracy within 2 points of long_cot", "value": delta, "target": ACCURACY_DELTA_TARGET,
             "met": delta >= ACCURACY_DELTA_TARGET, "missed_by": max(0.0, ACCURACY_DELTA_TARGET - delta)},
        ]
    if "pdr" in systems:
        pdr = systems["pdr"]
        matched = pdr["b_seq"] <= BSEQ_MATCH * base["b_seq"]
        gain = 100 * (pdr["accuracy"] - base["accuracy"])
        out["pdr_vs_long_cot"] = {"accuracy_delta_points": gain, "b_seq_pdr": pdr["b_seq"], "b_seq_long_cot": base["b_seq"],
                                  "b_seq_matched": matched}
        if "pdr" in outcomes and "long_cot" in outcomes:
            t = paired(outcomes["long_cot"], outcomes["pdr"])
            out["pdr_vs_long_cot"].update(accuracy_delta_ci=t["accuracy_delta_ci"], p_value=t["mcnemar_p"])
    if "sr" in systems:
        sr = systems["sr"]
        out["sr_vs_long_cot"] = {"accuracy_delta_points": 100 * (sr["accuracy"] - base["accuracy"]), "b_seq_sr": sr["b_seq"],
                                 "b_seq_long_cot": base["b_seq"], "b_seq_matched": sr["b_seq"] <= BSEQ_MATCH * base["b_seq"]}
        if "sr" in outcomes and "long_cot" in outcomes:
            t = paired(outcomes["long_cot"], outcomes["sr"])
            out["sr_vs_long_cot"].update(accuracy_delta_ci=t["accuracy_delta_ci"], p_value=t["mcnemar_p"])
        out["targets"].append({"name": "pdr beats long_cot at matched B_seq", "value": gain, "target": 0.0,
                               "met": matched and gain > 0, "missed_by": max(0.0, -gain) if matched else None,
                               "note": "" if matched else f"B_seq not matched ({pdr['b_seq']:.0f} vs {base['b_seq']:.0f})"})
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


def _fig() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.4), dpi=110)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_systems(systems: dict[str, dict[str, Any]], x: str, xlabel: str, title: str) -> bytes:
    fig, ax = _fig()
    for i, (name, r) in enumerate(systems.items()):
        ax.scatter([r[x]], [r["accuracy"]], marker="osD^vP"[i % 6], s=60, label=name)
        ax.annotate(name, (r[x], r["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(xlabel=xlabel, ylabel="accuracy (held-out split)", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_rl(rows: list[dict[str, Any]]) -> bytes:
    fig, ax = _fig()
    steps = [r["step"] for r in rows]
    for key in ("long/reward", "short/reward", "accuracy"):
        if any(key in r for r in rows):
            ax.plot(steps, [r.get(key, math.nan) for r in rows], marker=".", label=key)
    ax.set(xlabel="RL step", ylabel="reward / accuracy", title="Multi-turn RL of both roles")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r.get("tokens", math.nan) for r in rows], color="grey", linestyle="--", label="tokens per episode")
    ax2.set_ylabel("tokens per episode (dashed)")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def plot_scores(scores: list[float]) -> bytes:
    fig, ax = _fig()
    ax.hist(scores, bins=20, range=(0, 1), color="#4477aa")
    ax.set(xlabel="thought importance M = log2(1 + eff·acc − δ)", ylabel="thoughts", title="Thought scores (MC prefix rollouts)")
    return _png(fig)


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
        keys = ("accuracy", "tokens", "tokens_per_solved", "long/reward", "short/reward", "rethink_rate", "sync/ok")
        rl = {"steps": len(rl_rows), "first": {k: rl_rows[0].get(k) for k in keys}, "last": {k: rl_rows[-1].get(k) for k in keys},
              "sync_ok_every_step": all(r.get("sync/ok") is True for r in rl_rows)}
    report = {
        "run": str(out), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stages": {n: {"seconds": r["seconds"], "summary": r["summary"]} for n, r in records.items()},
        "total_stage_seconds": sum(r["seconds"] for r in records.values()),
        "systems": systems, "headline": head, "rl": rl,
        "reasoner": {"source": reasoner.get("source", "base" if "skipped" in reasoner else "train"), "accuracy": lc["accuracy"],
                     "accuracy_ci": lc["accuracy_ci"], "n": lc["n"], "shipped_held_out": reasoner.get("held_out")},
        "analysis": {k: analysis[k] for k in ("precision", "precision_ci", "recall", "recall_ci", "precision_scored",
                                              "precision_scored_ci", "forced_kept", "forced_redundant", "confusion",
                                              "by_kind") if k in analysis},
        "benchmarks": records["benchmarks"]["summary"],
    }
    plots = {"accuracy_vs_tokens.png": plot_systems(systems, "tokens_per_problem", "generated tokens per problem (all calls)",
                                                    "Accuracy against tokens per problem"),
             "accuracy_vs_bseq.png": plot_systems(systems, "b_seq", "B_seq: tokens on the sequential path", "Accuracy against B_seq")}
    if rl_rows:
        plots["rl_curves.png"] = plot_rl(rl_rows)
    if scores:
        plots["thought_scores.png"] = plot_scores(scores)
    for name, data in plots.items():
        atomic_write_bytes(out / name, data)
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
        lines += [f"Reasoner: **{rs['source']}**; long CoT solves {rs['accuracy']:.3f} {_ci(rs['accuracy_ci'])} of n={rs['n']} "
                  "held-out problems (strict rule: the last \\boxed{} of the output).", ""]
    lenient = any("accuracy_lenient" in r for r in report["systems"].values())
    lines += _md_table(["system", "n", "accuracy [95% CI]"] + (["lenient"] if lenient else []) + ["tokens / problem", "B_seq", "B_total", "turns"], [
        [n, str(r.get("n", r["problems"])), f"{r['accuracy']:.3f} {_ci(r.get('accuracy_ci'))}"]
        + ([f"{r['accuracy_lenient']:.3f}" if "accuracy_lenient" in r else "—"] if lenient else [])
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
    if head.get("removable_tokens_removed") is not None:
        lines.append(f"- removable tokens removed: **{100 * head['removable_tokens_removed']:.1f}%** (long_cot "
                     f"{head['long_cot']['tokens_per_problem']:.1f} tokens, the generator's concise trace {head['oracle_tokens_per_problem']:.1f}).")
    if "rl_vs_sft" in head:
        r = head["rl_vs_sft"]
        lines.append(f"- RL vs SFT only: accuracy {r['accuracy_delta_points']:+.1f} points {_ci(r['accuracy_delta_ci'])} "
                     f"(McNemar p = {r['mcnemar_p']:.3g}), tokens {r['tokens_delta']:+.1f} {_ci(r['tokens_delta_ci'])}.")
    for key, name in (("pdr_vs_long_cot", "pdr"), ("sr_vs_long_cot", "sr")):
        if key in head:
            p = head[key]
            test = f", {_ci(p['accuracy_delta_ci'])}, p = {p['p_value']:.3g}" if "p_value" in p else ""
            lines.append(f"- {name} vs long_cot: accuracy {p['accuracy_delta_points']:+.1f} points{test} at B_seq {p['b_seq_' + name]:.0f} vs "
                         f"{p['b_seq_long_cot']:.0f} ({'matched' if p['b_seq_matched'] else 'not matched'}).")
    for t in head["targets"]:
        status = "met" if t["met"] else f"**missed** (by {t['missed_by']:.3g})" if t.get("missed_by") is not None else "**missed**"
        lines.append(f"- target: {t['name']}: measured {t['value']:.3g} (target {t['target']:g}): {status} {t.get('note', '')}".rstrip())
    if report["rl"]:
        f, last = report["rl"]["first"], report["rl"]["last"]
        lines += ["", "## RL", "", f"{report['rl']['steps']} steps; sync check passed every step: {report['rl']['sync_ok_every_step']}.", ""]
        lines += _md_table(["metric", "first step", "last step"],
                           [[k, _fmt(f.get(k)), _fmt(last.get(k))] for k in f if k != "sync/ok"])
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
        lines += _md_table(["system", "benchmark", "accuracy", "tokens / problem", "problems"],
                           [[s, b, f"{r['accuracy']:.3f}", f"{r['tokens_per_problem']:.1f}", str(r["problems"])]
                            for s, v in bench.items() for b, r in v.items()])
    lines += ["", "## Stages", ""]
    lines += _md_table(["stage", "seconds", "summary"], [[n, f"{s['seconds']:.0f}", one_line(n, s["summary"])] for n, s in report["stages"].items()])
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in report["plots"]) + "; episodes: [viewer.html](viewer.html).", ""]
    return "\n".join(lines)


def _ci(ci: Any, scale: float = 1.0) -> str:
    if not ci or any(not isinstance(x, (int, float)) or math.isnan(x) for x in ci):
        return ""
    return f"[{scale * ci[0]:.3g}, {scale * ci[1]:.3g}]"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
