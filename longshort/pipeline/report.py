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
from longshort.pipeline.plan import Plan
from longshort.pipeline.runner import one_line
from longshort.pipeline.viewer import write_viewer

TOKEN_REDUCTION_TARGET = 0.80  # Long⊗Short: ≥ 80% fewer tokens than the long-CoT reasoner
ACCURACY_DELTA_TARGET = -2.0  # ... while losing at most 2 accuracy points
BSEQ_MATCH = 1.10  # PDR's B_seq counts as matched when it is at most 10% above long CoT's


def headline(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Token reduction and accuracy delta of Long⊗Short vs long CoT; PDR vs long CoT at matched B_seq."""
    base = systems["long_cot"]
    ls_name = "long_short_rl" if "long_short_rl" in systems else "long_short_sft" if "long_short_sft" in systems else None
    out: dict[str, Any] = {"long_cot": {k: base[k] for k in ("accuracy", "tokens_per_problem", "b_seq")}, "targets": []}
    if ls_name:
        ls = systems[ls_name]
        red = 1 - ls["tokens_per_problem"] / base["tokens_per_problem"] if base["tokens_per_problem"] else float("nan")
        delta = 100 * (ls["accuracy"] - base["accuracy"])
        out.update(long_short_system=ls_name, token_reduction=red, accuracy_delta_points=delta)
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
        out["targets"].append({"name": "pdr beats long_cot at matched B_seq", "value": gain, "target": 0.0,
                               "met": matched and gain > 0, "missed_by": max(0.0, -gain) if matched else None,
                               "note": "" if matched else f"B_seq not matched ({pdr['b_seq']:.0f} vs {base['b_seq']:.0f})"})
    return out


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
    systems: dict[str, dict[str, Any]] = records["eval"]["summary"]
    rl_rows = _rows(plan.stages["rl"].dir / "metrics.jsonl")
    scores = [r["M"] for r in _rows(plan.stages["analyze"].dir / "thoughts.jsonl") if isinstance(r.get("M"), (int, float))]
    head = headline(systems)
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
    lines += _md_table(["system", "accuracy", "tokens / problem", "B_seq", "B_total", "turns"], [
        [n, f"{r['accuracy']:.3f}", f"{r['tokens_per_problem']:.1f}", f"{r['b_seq']:.1f}", f"{r['b_total']:.1f}", f"{r['turns']:.2f}"]
        for n, r in report["systems"].items()])
    lines += ["", "## Headline (measured)", ""]
    if "token_reduction" in head:
        lines.append(f"- {head['long_short_system']} vs long_cot: **{100 * head['token_reduction']:.1f}% fewer tokens**, "
                     f"accuracy **{head['accuracy_delta_points']:+.1f} points**.")
    if "pdr_vs_long_cot" in head:
        p = head["pdr_vs_long_cot"]
        lines.append(f"- pdr vs long_cot: accuracy {p['accuracy_delta_points']:+.1f} points at B_seq {p['b_seq_pdr']:.0f} vs "
                     f"{p['b_seq_long_cot']:.0f} ({'matched' if p['b_seq_matched'] else 'not matched'}).")
    for t in head["targets"]:
        status = "met" if t["met"] else f"**missed** (by {t['missed_by']:.3g})" if t.get("missed_by") is not None else "**missed**"
        lines.append(f"- target: {t['name']}: measured {t['value']:.3g} (target {t['target']:g}): {status} {t.get('note', '')}".rstrip())
    if report["rl"]:
        f, last = report["rl"]["first"], report["rl"]["last"]
        lines += ["", "## RL", "", f"{report['rl']['steps']} steps; sync check passed every step: {report['rl']['sync_ok_every_step']}.", ""]
        lines += _md_table(["metric", "first step", "last step"],
                           [[k, _fmt(f.get(k)), _fmt(last.get(k))] for k in f if k != "sync/ok"])
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


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
