"""The Pareto plane: `longshort eval --sweep 'KEY=V1;V2;...'` runs every protocol of `evaluation.protocols` at every
sweep point, on the same problems (benchmarks, limit, samples, seed) with one engine, and plots accuracy against
B_seq and B_total.

Layout of the output folder (`evaluation.out`, default `<run dir>/eval`):

    <out>/pareto.json                              per point × protocol: the override, accuracy (95% Wilson, n), mean
                                                   B_seq and B_total (95% intervals), tokens; which rows are on the frontier
    <out>/pareto_bseq.png, pareto_btotal.png       accuracy against B_seq / B_total, one series per protocol
    <out>/points/<point>.json                      one finished point: its settings and rows, written as it finishes
    <out>/runs/<run>/<protocol>/<benchmark>.jsonl  the episodes (`longshort.eval.run_benchmark`, resumed per batch)
    <out>/config.yaml                              the resolved recipe, without the sweep's overrides

A point sets one value of each `--sweep` flag (several flags: their grid). A protocol that a swept key does not
concern (`OWN`: `long_cot` under `protocol.pdr_*`) runs once for all the points that differ only in that key, with
just the keys that concern it applied, and its row is repeated at each of them (`shared: true`, one `run`).
Resumable: a rerun skips a point whose file records the same settings (other settings stop with the first changed
key, as `longshort eval` does) and starts no engine when every point is done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from longshort.config.loader import apply_overrides, build, to_dict
from longshort.config.recipe import Recipe
from longshort.data.benchmarks import Benchmark
from longshort.errors import UserError
from longshort.eval import (
    EPISODE_KEYS,
    annotate_apart,
    new_figure,
    out_dir,
    run_benchmark,
    to_png,
)
from longshort.io import atomic_write_bytes, write_json
from longshort.metrics import episode_metrics
from longshort.run import open_run
from longshort.run.settings import check, recorded, settings
from longshort.stats import mean_ci, wilson
from longshort.types import Episode

PLOTS = {"b_seq": "pareto_bseq.png", "b_total": "pareto_btotal.png"}
# protocol.* settings that only one protocol reads (longshort/protocols/): sweeping them cannot change another
# protocol's episodes. Every other swept key (max_tokens, temperature, system_prompt, roles.*) concerns them all.
OWN = {"sr_": "sr", "pdr_": "pdr", "max_turns": "long_short"}


@dataclass(frozen=True)
class Point:
    """One sweep point: (key, value as typed) per swept key; `values` the resolved values, `name` its file name."""

    overrides: tuple[tuple[str, str], ...]
    values: dict[str, Any]
    name: str


def concerns(key: str, protocol: str) -> bool:
    """Whether sweeping recipe `key` can change the episodes of `protocol`."""
    if key.startswith("protocol."):
        field = key.split(".", 1)[1]
        for prefix, owner in OWN.items():
            if field.startswith(prefix):
                return owner == protocol
    return True


def _sweepable(key: str) -> None:
    if key == "protocol.name":
        raise UserError("--sweep: key 'protocol.name' cannot be swept: --protocol (evaluation.protocols) names the protocols every point runs")
    if key.startswith("roles.") and key.rsplit(".", 1)[-1] == "adapter":
        raise UserError(f"--sweep: key '{key}' cannot be swept: the engine serves the adapters and starts once")
    if not key.startswith(("protocol.", "roles.")):
        raise UserError(f"--sweep: key '{key}' cannot be swept: the points share the problems, seed and engine "
                        "(sweep protocol.* or roles.* keys)")


def axes(flags: list[str]) -> list[tuple[str, list[str]]]:
    """[(key, [value, ...])] of `--sweep KEY=V1;V2;...` flags (values as typed, parsed later as overrides are)."""
    out: list[tuple[str, list[str]]] = []
    for flag in flags:
        key, sep, raw = flag.partition("=")
        key = key.strip()
        values = [v.strip() for v in raw.split(";")]
        if not sep or not key:
            raise UserError(f"--sweep {flag!r}: expected KEY=V1;V2;... (e.g. 'protocol.sr_rounds=1;2;4')")
        if not all(values):
            raise UserError(f"--sweep: key '{key}': an empty value in {raw!r} (values are separated by ';')")
        _sweepable(key)
        if key in (k for k, _ in out):
            raise UserError(f"--sweep: key '{key}' is given twice (one flag per key; several flags make a grid)")
        out.append((key, values))
    return out


def _with(base: dict[str, Any], overrides: tuple[tuple[str, str], ...]) -> Recipe:
    """The recipe `base` (a resolved recipe as a dict) with sweep `overrides`, parsed and checked as the command
    line's `key=value` overrides are: a bad key or value is a ConfigError naming it."""
    return build(Recipe, apply_overrides(base, [f"{k}={v}" for k, v in overrides]), "--sweep")


def _name(values: dict[str, Any]) -> str:
    """A file name for a set of resolved values: readable, plus a hash of them (sanitising may merge two)."""
    if not values:
        return "base"
    canon = json.dumps(values, sort_keys=True, separators=(",", ":"))
    text = "+".join(f"{k.removeprefix('protocol.')}={json.dumps(v, separators=(',', ':'))}" for k, v in values.items())
    readable = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text.replace("[", "").replace("]", "").replace(",", "-")).strip("-")
    return f"{readable[:60]}_{hashlib.sha1(canon.encode()).hexdigest()[:6]}"


def _resolved(recipe: Recipe, overrides: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return settings(recipe, [k for k, _ in overrides])


def plan(recipe: Recipe, flags: list[str]) -> list[Point]:
    """Every sweep point, each checked as a recipe: called before the engine starts, so a bad key or value stops
    the command at once."""
    grid = axes(flags)
    base = to_dict(recipe)
    points: list[Point] = []
    seen: dict[str, Point] = {}
    for combo in itertools.product(*[[(k, v) for v in values] for k, values in grid]):
        overrides = tuple(combo)
        values = _resolved(_with(base, overrides), overrides)
        point = Point(overrides, values, _name(values))
        if point.name in seen:
            raise UserError(f"--sweep: points {dict(seen[point.name].overrides)} and {dict(overrides)} are the same settings")
        seen[point.name] = point
        points.append(point)
    return points


def point_settings(recipe: Recipe, benches: list[Benchmark], model: str, adapters: dict[str, str]) -> dict[str, Any]:
    """What a finished point's rows depend on: a rerun skips the point only when these match."""
    cfg = recipe.evaluation
    return {**settings(recipe, EPISODE_KEYS), "model": str(model), "adapters": {k: str(v) for k, v in sorted(adapters.items())},
            "evaluation.protocols": list(cfg.protocols or [recipe.protocol.name]), "evaluation.limit": cfg.limit,
            "evaluation.samples": cfg.samples, "benchmarks": [[b.name, b.origin] for b in benches]}


def row(protocol: str, point: Point, run: str, ignored: list[str], eps: list[Episode]) -> dict[str, Any]:
    """One point × protocol: its metrics (as `longshort eval`'s summary rows) with n and intervals."""
    n = len(eps)
    m = episode_metrics(eps)
    return {
        "point": point.name, "override": point.values, "protocol": protocol, "run": f"runs/{run}/{protocol}",
        "shared": bool(ignored), "ignores": ignored, "n": n,
        "accuracy_ci": list(wilson(sum(bool(ep.correct) for ep in eps), n)),
        "b_seq_ci": list(mean_ci([float(ep.b_seq) for ep in eps])), "b_total_ci": list(mean_ci([float(ep.b_total) for ep in eps])),
        **m,
    }


def run_sweep(recipe: Recipe, points: list[Point], model: str, adapters: dict[str, str], benches: list[Benchmark],
              engine: Any = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate every protocol at every point (`plan`), resuming finished points; write and return pareto.json.
    Without `engine`, one is started (`start_engine`) when the first point needs it, and closed at the end."""
    protocols = list(recipe.evaluation.protocols or [recipe.protocol.name])
    folder, base = out_dir(recipe), to_dict(recipe)
    # every finished point checked before anything is written: a changed setting stops with its key, files untouched
    finished: dict[str, list[dict[str, Any]]] = {}
    settings_of = {p.name: point_settings(_with(base, p.overrides), benches, model, adapters) for p in points}
    for point in points:
        path = folder / "points" / f"{point.name}.json"
        if recipe.run.resume == "auto" and path.is_file():
            saved = recorded(path)
            check(saved.get("settings") if isinstance(saved, dict) else None, settings_of[point.name], str(path))
            finished[point.name] = saved["rows"]
    out = open_run(recipe, ("points", "runs", "pareto.json", *PLOTS.values()), folder=folder)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    own_engine = engine is None
    runs: dict[tuple[str, str], list[Episode]] = {}  # (protocol, run) -> its episodes: a shared run is evaluated once
    rows: list[dict[str, Any]] = []
    try:
        for i, point in enumerate(points, 1):
            if point.name in finished:
                rows += finished[point.name]
                say(f"point {i}/{len(points)} {point.name}: finished earlier, skipped")
                continue
            say(f"point {i}/{len(points)} {point.name}")
            if engine is None:
                from longshort.engines import start_engine

                engine = start_engine(recipe, model, adapters)
            done = []
            for name in protocols:
                mine = tuple((k, v) for k, v in point.overrides if concerns(k, name))
                run_recipe = _with(base, mine)
                run = _name(_resolved(run_recipe, mine))
                if (name, run) not in runs:
                    eps = [ep for bench in benches
                           for ep in run_benchmark(engine, run_recipe, name, bench, out / "runs" / run, model, adapters, progress)]
                    runs[(name, run)] = eps
                ignored = [k for k, _ in point.overrides if not concerns(k, name)]
                done.append(row(name, point, run, ignored, runs[(name, run)]))
            write_json(out / "points" / f"{point.name}.json", {"override": point.values, "settings": settings_of[point.name], "rows": done})
            rows += done
    finally:
        if own_engine and engine is not None:
            engine.close()
    for cost in PLOTS:
        on = frontier(rows, cost)
        for r in rows:
            r.setdefault("frontier", {})[cost] = (r["protocol"], r["run"]) in on
    cfg = recipe.evaluation
    summary = {
        "model": str(model), "adapters": dict(adapters), "engine": recipe.engine.kind,
        "benchmarks": [b.name for b in benches], "limit": cfg.limit, "samples": cfg.samples, "seed": recipe.run.seed,
        "protocols": protocols, "points": [{"point": p.name, "override": p.values} for p in points],
        "shared": "a protocol that a swept key does not concern (a protocol.sr_* / pdr_* / max_turns key of another "
                  "protocol) is evaluated once; its row is repeated at every point that differs only in that key, "
                  "with shared: true, the keys it ignores and the same run",
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rows": rows,
    }
    write_json(out / "pareto.json", summary)
    if cfg.plot:
        for cost, file in PLOTS.items():
            atomic_write_bytes(out / file, plot_png(rows, cost))
    return json.loads((out / "pareto.json").read_text())  # as written: NaN as null, whether a point ran now or before


def frontier(rows: list[dict[str, Any]], cost: str) -> set[tuple[str, str]]:
    """(protocol, run) of the rows no other row beats: none has at most their cost and at least their accuracy,
    one of them strictly. A shared run counts once."""
    unique = list({(r["protocol"], r["run"]): r for r in rows}.values())

    def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a[cost] <= b[cost] and a["accuracy"] >= b["accuracy"] and (a[cost] < b[cost] or a["accuracy"] > b["accuracy"])

    return {(r["protocol"], r["run"]) for r in unique if not any(beats(o, r) for o in unique)}


def _label(r: dict[str, Any], whole: bool = False) -> str:
    """The row's override; unless `whole`, only the keys that concern its protocol (a shared row stands for
    several points)."""
    mine = {k.removeprefix("protocol."): v for k, v in r["override"].items()
            if whole or not any(k == i or k.startswith(i + ".") for i in r["ignores"])}
    return ", ".join(f"{k}={v}" for k, v in mine.items()) or "every point"


def plot_png(rows: list[dict[str, Any]], cost: str) -> bytes:
    return to_png(plot_figure(rows, cost))


def plot_figure(rows: list[dict[str, Any]], cost: str) -> Any:
    """Accuracy (95% Wilson) against mean `cost` (95% interval): one series per protocol, frontier marked."""
    def bars(values: list[float], cis: list[list[float | None]]) -> list[list[float]]:
        # an interval written as null (n < 2) draws no bar
        return [[0.0 if lo is None or not math.isfinite(lo) else v - lo for v, (lo, _) in zip(values, cis)],
                [0.0 if hi is None or not math.isfinite(hi) else hi - v for v, (_, hi) in zip(values, cis)]]

    fig, ax = new_figure((6.8, 4.6))
    markers = "osD^vP*X"
    unique = list({(r["protocol"], r["run"]): r for r in rows}.values())
    labels = []
    for i, name in enumerate(dict.fromkeys(r["protocol"] for r in unique)):
        mine = sorted((r for r in unique if r["protocol"] == name), key=lambda r: r[cost])
        xs, ys = [r[cost] for r in mine], [r["accuracy"] for r in mine]
        ax.errorbar(xs, ys, xerr=bars(xs, [r[f"{cost}_ci"] for r in mine]), yerr=bars(ys, [r["accuracy_ci"] for r in mine]),
                    fmt=markers[i % len(markers)] + "-", capsize=3, markersize=5, linewidth=1, label=name)
        labels += [(r[cost], r["accuracy"], _label(r)) for r in mine]
    best = sorted((r for r in unique if r.get("frontier", {}).get(cost)), key=lambda r: (r[cost], r["accuracy"]))
    if best:
        ax.step([r[cost] for r in best], [r["accuracy"] for r in best], where="post", color="0.3", linestyle="--", linewidth=1,
                label="Pareto frontier")
        ax.scatter([r[cost] for r in best], [r["accuracy"] for r in best], s=160, facecolors="none", edgecolors="0.2",
                   linewidths=1.2, label="on the frontier", zorder=3)
    what = {"b_seq": "B_seq: mean tokens on the sequential path per episode", "b_total": "B_total: mean tokens generated per episode"}
    ax.set_xlabel(what[cost])
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Accuracy against {cost.replace('b_', 'B_')}, every protocol at every sweep point")
    annotate_apart(ax, labels, fontsize=6)
    return fig


def pareto_markdown(summary: dict[str, Any]) -> str:
    """The rows of pareto.json as a table (printed by `longshort eval --sweep`)."""
    lines = ["| point | protocol | accuracy [95%] | n | B_seq | B_total | tokens/problem | frontier |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in summary["rows"]:
        lo, hi = r["accuracy_ci"]
        marks = ", ".join(c.replace("b_", "B_") for c, on in r["frontier"].items() if on)
        lines.append(f"| {_label(r, whole=True)} | {r['protocol']}{' (shared)' if r['shared'] else ''} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
                     f"| {r['n']} | {r['b_seq']:.1f} | {r['b_total']:.1f} | {r['tokens_per_problem']:.1f} | {marks} |")
    return "\n".join(lines) + "\n"
