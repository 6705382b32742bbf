"""Evaluation harness: protocols × benchmarks × K samples -> episodes JSONL, summary.json, summary.md, a plot.

Layout of the output folder:

    <out>/<protocol>/<benchmark>.jsonl         every episode (one per problem and sample), rewritten atomically
    <out>/<protocol>/<benchmark>.config.json   what produced them (model, adapters, protocol, roles, seed, ...)
    <out>/summary.json, summary.md             one result row per protocol × benchmark (+ "all" per protocol)
    <out>/accuracy_vs_bseq.png                 accuracy against mean B_seq, one point per result row
    <out>/config.yaml                          the resolved recipe of the latest run

Resumable: episodes are saved after every batch; a rerun with the same configuration (and `run.resume: auto`)
skips the (problem, sample) pairs already done, one with another stops with a one-line error naming the first
changed key (longshort/run/settings.py). Metric definitions: docs/budgets.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from longshort.data.benchmarks import Benchmark, load_benchmark
from longshort.errors import UserError
from longshort.io import atomic_write_bytes, atomic_write_text, write_json
from longshort.metrics import episode_metrics
from longshort.protocols import PROTOCOLS, run_protocol
from longshort.run import open_run
from longshort.run.settings import check, recorded, settings
from longshort.stats import wilson
from longshort.types import Episode, read_episodes, write_episodes

PLOT = "accuracy_vs_bseq.png"


def out_dir(recipe: Any) -> Path:
    return Path(recipe.evaluation.out) if recipe.evaluation.out else recipe.run_dir / "eval"


def load_benchmarks(recipe: Any) -> list[Benchmark]:
    """The configured benchmarks, validated: callers load them before starting an engine, so a bad file or a bad
    row stops the command before the expensive work."""
    cfg = recipe.evaluation
    for name in cfg.protocols or [recipe.protocol.name]:
        if name not in PROTOCOLS:
            raise UserError(f"key 'evaluation.protocols': unknown protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    # `data.fields` maps the columns of your own file (evaluation.path), never those of the known sources
    return [load_benchmark(b, path=cfg.path, split=cfg.split, limit=cfg.limit, fields=recipe.data.fields if cfg.path else None)
            for b in cfg.benchmarks]


def evaluate(engine: Any, recipe: Any, model: str, adapters: dict[str, str], progress: bool = True,
             benches: list[Benchmark] | None = None) -> dict[str, Any]:
    """Run every configured protocol on every configured benchmark (`benches`: already loaded by
    `load_benchmarks`); write and return the summary."""
    cfg = recipe.evaluation
    protocols = cfg.protocols or [recipe.protocol.name]
    benches = benches if benches is not None else load_benchmarks(recipe)
    out = open_run(recipe, (), folder=out_dir(recipe))  # run.resume=never: each benchmark's episodes restart below
    results = []
    for name in protocols:
        everything: list[Episode] = []
        for bench in benches:
            eps = run_benchmark(engine, recipe, name, bench, out, model, adapters, progress)
            results.append(result_row(name, bench.name, eps, origin=bench.origin))
            everything += eps
        if len(benches) > 1:
            results.append(result_row(name, "all", everything))
    summary = merge_summary(out, results, model, adapters, recipe)
    write_json(out / "summary.json", summary)
    if cfg.plot:
        atomic_write_bytes(out / PLOT, plot_png(summary["results"]))
    atomic_write_text(out / "summary.md", summary_markdown(summary, cfg.plot))
    return summary


# the recipe keys an episode depends on (with the model, adapters, protocol name and benchmark): `fingerprint` and
# the sweep's point settings (longshort/sweep.py) record them
EPISODE_KEYS = ("run.seed", "engine.kind", "engine.dtype", "engine.max_model_len", "protocol", "roles")


def fingerprint(recipe: Any, name: str, bench: Benchmark, model: str, adapters: dict[str, str]) -> dict[str, Any]:
    """Everything that changes what an episode would be (flat keys, as longshort.run.settings records them): a
    resume must match it exactly."""
    return {**settings(recipe, EPISODE_KEYS), "protocol.name": name, "model": str(model),
            "adapters": {k: str(v) for k, v in sorted(adapters.items())},
            "benchmark.name": bench.name, "benchmark.origin": bench.origin}


def run_benchmark(
    engine: Any, recipe: Any, name: str, bench: Benchmark, out: Path, model: str, adapters: dict[str, str], progress: bool
) -> list[Episode]:
    """Episodes of protocol `name` on `bench` × K samples, resuming from `<out>/<name>/<bench>.jsonl`."""
    from tqdm import tqdm

    cfg = recipe.evaluation
    path = out / name / f"{bench.name}.jsonl"
    meta_path = path.with_suffix(".config.json")
    fp = fingerprint(recipe, name, bench, model, adapters)
    done: dict[tuple[str, int], Episode] = {}
    if recipe.run.resume == "auto" and path.is_file() and meta_path.is_file():
        check(recorded(meta_path), fp, str(meta_path))  # ConfigError naming the first changed key
        done = {(ep.problem_id, ep.meta.get("sample", 0)): ep for ep in read_episodes(str(path))}
    elif path.is_file():
        path.unlink()
    write_json(meta_path, fp)
    order = [(row["id"], k) for row in bench.rows for k in range(cfg.samples)]
    by_id = {row["id"]: row for row in bench.rows}
    todo = [key for key in order if key not in done]
    rank = {key: i for i, key in enumerate(order)}
    bar = tqdm(total=len(order), initial=len(order) - len(todo), desc=f"{name}/{bench.name}", unit="ep", disable=not progress)
    for at in range(0, len(todo), cfg.batch_size):
        rows = [{**by_id[pid], "sample": k} for pid, k in todo[at : at + cfg.batch_size]]
        for ep in run_protocol(name, engine, rows, recipe):
            done[(ep.problem_id, ep.meta["sample"])] = ep
        # every episode done so far, the benchmark's order first (rows beyond a smaller --limit are kept)
        write_episodes(str(path), sorted(done.values(), key=lambda e: rank.get((e.problem_id, e.meta.get("sample", 0)), len(rank))))
        bar.update(len(rows))
    bar.close()
    return [done[key] for key in order]


# ------------------------------------------------------------------------------------------------ metrics


def result_row(protocol: str, benchmark: str, eps: list[Episode], origin: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"protocol": protocol, "benchmark": benchmark}
    if origin:
        row["origin"] = origin
    row.update(episode_metrics(eps))
    # n and a 95% Wilson interval for the accuracy: the K samples of a problem count as separate trials (exact
    # for K = 1; for K > 1 the interval is too narrow by as much as the samples of a problem agree)
    row["n"] = len(eps)
    row["accuracy_ci"] = list(wilson(sum(bool(ep.correct) for ep in eps), len(eps)))
    return row


def merge_summary(out: Path, results: list[dict[str, Any]], model: str, adapters: dict[str, str], recipe: Any) -> dict[str, Any]:
    """This run's rows, plus rows of other protocol × benchmark pairs an earlier run left in the same folder."""
    fresh = {(r["protocol"], r["benchmark"]) for r in results}
    kept = []
    previous = out / "summary.json"
    if previous.is_file():
        try:
            kept = [r for r in json.loads(previous.read_text()).get("results", []) if (r.get("protocol"), r.get("benchmark")) not in fresh]
        except (json.JSONDecodeError, AttributeError):
            kept = []
    return {
        "model": str(model),
        "adapters": dict(adapters),
        "engine": recipe.engine.kind,
        "samples": recipe.evaluation.samples,
        "limit": recipe.evaluation.limit,
        "seed": recipe.run.seed,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": kept + results,
    }


# ------------------------------------------------------------------------------------------------ reports


def summary_markdown(summary: dict[str, Any], plot: bool) -> str:
    lines = [
        "# Evaluation",
        "",
        f"Model `{summary['model']}`" + (f", adapters {summary['adapters']}" if summary["adapters"] else "")
        + f", engine `{summary['engine']}`, K = {summary['samples']} samples per problem.",
        "",
        "| protocol | benchmark | problems | n | accuracy [95% CI] | ± std over K | lenient | pass@K | maj@K | tokens/problem "
        "| B_seq | B_total | turns | rethink rate | format failures | latency (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["results"]:
        n = r.get("n", r["episodes"])  # rows an earlier version wrote into the folder have no n / interval
        lo, hi = r.get("accuracy_ci") or wilson(r["accuracy"] * n, n)
        acc = f"{r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" if n else "— (no episodes)"
        lines.append(
            f"| {r['protocol']} | {r['benchmark']} | {r['problems']} | {n} | {acc} | {r['accuracy_std']:.3f} "
            f"| {r.get('accuracy_lenient', r['accuracy']):.3f} | {r['pass_at_k']:.3f} | {r['maj_at_k']:.3f} | {r['tokens_per_problem']:.1f} | {r['b_seq']:.1f} "
            f"| {r['b_total']:.1f} | {r['turns']:.2f} | {r['rethink_rate']:.3f} | {r['format_failure_rate']:.3f} "
            f"| {r['latency_s']:.2f} |"
        )
    lines += ["", "Tokens generated per problem, by role:", ""]
    for r in summary["results"]:
        roles = ", ".join(f"{k} {v:.1f}" for k, v in r["tokens_by_role"].items())
        lines.append(f"- {r['protocol']} / {r['benchmark']}: {roles}")
    lines += [
        "",
        "Accuracy is the mean over all n = problems × K samples episodes, with its 95% Wilson interval (the K samples "
        "of a problem counted as separate trials) and the standard deviation across the K sample indices, graded by the one rule of every protocol: the answer in the last \\boxed{} (docs/grading.md); "
        "`lenient` also accepts a last number and is reported only; B_seq / B_total are mean generated tokens per episode along the critical path "
        "(each step's longest call) / over all calls (docs/budgets.md).",
    ]
    if plot:
        lines += ["", f"![accuracy against B_seq]({PLOT})"]
    return "\n".join(lines) + "\n"


def new_figure(size: tuple[float, float] = (6.4, 4.4), dpi: int = 120) -> tuple[Any, Any]:
    """A figure and its axes on the Agg backend (no display), laid out by matplotlib's constrained layout so that
    axis labels, title and legend never overlap (the report card's and the sweep's plots use it too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=dpi, layout="constrained")


def to_png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def annotate_apart(ax: Any, points: list[tuple[float, float, str]], fontsize: int = 7) -> None:
    """Label each point beside it, right or left of it and a line up or down at a time, at the first place that
    overlaps no label placed before and stays inside the axes (systems with the same accuracy, 0 and 1 are common
    on small n, sit on one spot). The layout is fixed first (a draw) and the labels are kept out of it, so the
    boxes measured here are where the labels are saved."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    places = [(dx, 4 + 10 * dy) for j in range(len(points) + 1) for dy in ((0,) if j == 0 else (j, -j)) for dx in (5, -5)]
    for x, y, label in points:
        chosen = first = None
        for dx, dy in places:
            text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                               ha="left" if dx > 0 else "right")
            box = text.get_window_extent(renderer)
            text.remove()
            first = first or (dx, dy, box)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if not any(box.overlaps(b) for b in placed) and (inside or chosen is None):
                chosen = (dx, dy, box)  # free; outside the axes only until a free place inside turns up
                if inside:
                    break
        dx, dy, box = chosen or first  # no free place at all: the first one
        text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                           ha="left" if dx > 0 else "right")
        text.set_in_layout(False)
        placed.append(box)


def plot_figure(results: list[dict[str, Any]]) -> Any:
    """Accuracy against mean B_seq: one marker per protocol, one point per benchmark, labelled."""
    fig, ax = new_figure()
    markers = "osD^vP*X"
    protocols = sorted({r["protocol"] for r in results})
    labels = []
    for i, name in enumerate(protocols):
        rows = [r for r in results if r["protocol"] == name and (r["benchmark"] != "all" or len(results) == 1)]
        if not rows:
            continue
        ax.scatter([r["b_seq"] for r in rows], [r["accuracy"] for r in rows], marker=markers[i % len(markers)], s=48, label=name)
        labels += [(r["b_seq"], r["accuracy"], r["benchmark"]) for r in rows]
    ax.set_xlabel("B_seq: mean tokens on the sequential path per episode")
    ax.set_ylabel("accuracy (mean over K samples)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy against sequential budget")
    annotate_apart(ax, labels)
    return fig


def plot_png(results: list[dict[str, Any]]) -> bytes:
    return to_png(plot_figure(results))
