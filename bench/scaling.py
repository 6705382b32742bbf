"""How the RL step time grows: problems per step, group size, turns (protocol.max_turns) and max tokens, each
doubled from a base point; a power law t ∝ x^k fitted per knob; and 1 vs 2 rollout actors.

The actors (one learner group, rollout workers with the vLLM engine) are started once and reused for every
point, which keeps the run short: a `TunableRolloutWorker` is longshort's `RolloutWorker` whose protocol and
role settings can be replaced between steps. Each step is `rl.loop`'s step body: rollout -> rewards ->
advantages -> PPO update -> LoRA push -> logprob probe (`timed_step` below calls the same functions in the
same order). Protocol `long_short` (both roles trained), the recipe's defaults otherwise.

    .venv/bin/python bench/scaling.py [--quick] [--repeats 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RECIPE, load_avg, load_results, machine, median, save_result, write_section  # noqa: E402

BASE = {"problems": 2, "group": 4, "turns": 4, "tokens": 32}  # tokens = roles.long.max_tokens; short gets half
KNOBS = ("problems", "group", "turns", "tokens")


def overrides(out: str, model: str, point: dict[str, int]) -> list[str]:
    return [
        f"run.out_dir={out}", f"model.base={model}", "protocol.name=long_short",
        f"protocol.max_turns={point['turns']}", f"roles.long.max_tokens={point['tokens']}",
        f"roles.short.max_tokens={max(1, point['tokens'] // 2)}", f"rl.problems_per_step={point['problems']}",
        f"rl.group_size={point['group']}", "rl.lr=1e-3", "rl.steps=1000", "synthetic.n=200",
    ]  # fmt: skip


def tunable_worker_cls():
    from longshort.rl.actors import RolloutWorker

    class TunableRolloutWorker(RolloutWorker):
        """A RolloutWorker whose protocol and per-role sampling settings can be replaced (adapters are kept)."""

        def configure(self, recipe: Any) -> None:
            adapters = {r: getattr(self.recipe.roles, r).adapter for r in ("long", "short")}
            self.recipe.protocol = recipe.protocol
            self.recipe.roles = recipe.roles
            for r, path in adapters.items():
                getattr(self.recipe.roles, r).adapter = path

    return TunableRolloutWorker


def timed_step(recipe: Any, learner: Any, workers: list[Any], problems: list[dict[str, Any]], step: int) -> dict[str, float]:
    """One RL step exactly as rl/loop.py runs it; its phase times and episode counts."""
    import ray

    from longshort.rl.advantages import assign_advantages
    from longshort.rl.batches import batch_at, build_batches, probes_from, roles_to_train
    from longshort.rl.rewards import assign_rewards
    from longshort.rl.sync import check_sampled, push, resolve_precision, verify
    from longshort.types import ROLES

    cfg = resolve_precision(recipe)[0].rl  # rl.sync_tolerance: null = from the dtypes
    t0 = time.perf_counter()
    batch = batch_at(problems, step * cfg.problems_per_step, cfg.problems_per_step, recipe.run.seed)
    seed = (recipe.run.seed * 1_000_003 + step) & 0x7FFFFFFF
    chunks = [batch[i :: len(workers)] for i in range(len(workers))]
    episodes = [ep for part in ray.get([w.rollout.remote(c, cfg.group_size, step, seed) for w, c in zip(workers, chunks) if c]) for ep in part]
    t1 = time.perf_counter()
    assign_rewards(episodes, cfg.rewards, recipe.roles.short.max_tokens)
    assign_advantages(episodes, cfg.estimator, ROLES)
    batches, norms = build_batches(episodes, roles_to_train(recipe, step), recipe)
    stats = learner.train(batches, norms) if batches else {}
    check_sampled(stats, cfg.sync_tolerance)
    t2 = time.perf_counter()
    push(workers, learner.export(list(batches)) if batches else {})
    verify(learner, workers, probes_from(episodes), cfg.sync_tolerance)
    t3 = time.perf_counter()
    return {"step": t3 - t0, "rollout": t1 - t0, "learn": t2 - t1, "sync": t3 - t2,
            "turns": sum(len(ep.turns) for ep in episodes) / len(episodes),
            "tokens": sum(ep.generated_tokens for ep in episodes) / len(episodes)}  # fmt: skip


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import ray

    from common import build_model
    from longshort.config.recipe import load_recipe
    from longshort.rl.actors import LearnerGroup
    from longshort.rl.batches import load_problems
    from longshort.rl.sync import push
    from longshort.types import ROLES

    model = build_model(tmp / "model")
    factors = [1, 2] if a.quick else [1, 2, 4]
    base = load_recipe(str(RECIPE), overrides(str(tmp), model, BASE))
    problems = load_problems(base)
    # 4 logical CPUs: learner (1) + two rollout actors (1 each) can be placed; the machine has what it has.
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    learner = None
    workers: list[Any] = []
    try:
        learner = LearnerGroup(model, {r: None for r in ROLES}, {r: None for r in ROLES}, base)
        start = learner.export(list(ROLES))
        cls = ray.remote(num_cpus=1)(tunable_worker_cls())
        workers = [cls.remote(model, base, start, i) for i in range(2)]
        ray.get([w.pid.remote() for w in workers])
        step = 0

        def measure(point: dict[str, int], n_workers: int) -> dict[str, float]:
            nonlocal step
            recipe = load_recipe(str(RECIPE), overrides(str(tmp), model, point))
            ray.get([w.configure.remote(recipe) for w in workers])
            rows = []
            for _ in range(a.repeats):
                step += 1
                rows.append(timed_step(recipe, learner, workers[:n_workers], problems, step))
                if workers[n_workers:]:  # the idle actor takes the update too (untimed), ready for its next turn
                    push(workers[n_workers:], learner.export(list(ROLES)))
            return {k: round(median([r[k] for r in rows]), 3) for k in rows[0]}

        for n in (1, 2):  # warm-up: first generate per engine, first learner update
            measure(BASE, n)
        knobs: dict[str, Any] = {}
        at_base = measure(BASE, 1)  # factor 1 of every knob
        for knob in KNOBS:
            pts = []
            for f in factors:
                point = {**BASE, knob: BASE[knob] * f}
                m = at_base if f == 1 else measure(point, 1)
                pts.append({"value": point[knob], **m})
                print(knob, point[knob], m, flush=True)
            knobs[knob] = {"points": pts, "exponent": round(fit_exponent([p["value"] for p in pts], [p["step"] for p in pts]), 3),
                           "rollout_exponent": round(fit_exponent([p["value"] for p in pts], [p["rollout"] for p in pts]), 3)}  # fmt: skip
        actor_point = {**BASE, "problems": BASE["problems"] * 2}
        actors = {str(n): measure(actor_point, n) for n in (1, 2)}
        print("actors", actors, flush=True)
    finally:
        for w in workers:
            try:
                ray.get(w.close.remote(), timeout=60)
            except Exception:  # already dead: killed next anyway
                pass
            ray.kill(w)
        if learner is not None:
            learner.shutdown()
        ray.shutdown()
    return {"base": BASE, "factors": factors, "knobs": knobs, "actors": actors, "actor_point": actor_point}


def write_doc(res: dict[str, Any]) -> None:
    lines = ["| knob | values | step s | rollout s | learn s | sync s | turns/episode | gen tokens/episode | exponent k (step) | k (rollout) |",
             "|---|---|---|---|---|---|---|---|---:|---:|"]  # fmt: skip
    for knob, r in res["knobs"].items():
        col = lambda k: " / ".join(f"{p[k]:.2f}" if isinstance(p[k], float) else str(p[k]) for p in r["points"])  # noqa: E731
        lines.append(f"| {knob} | {col('value')} | {col('step')} | {col('rollout')} | {col('learn')} | {col('sync')} | "
                     f"{col('turns')} | {col('tokens')} | {r['exponent']:.2f} | {r['rollout_exponent']:.2f} |")  # fmt: skip
    base = ", ".join(f"{k} {v}" for k, v in res["base"].items())
    act = res["actors"]
    speed = act["1"]["step"] / act["2"]["step"]
    ap = res["actor_point"]
    body = f"""RL step time (one `rl.loop` step: rollout, rewards, advantages, PPO update of both roles, LoRA push,
logprob probe) with protocol `long_short` on the tiny model, from the base point {base} (tokens =
`roles.long.max_tokens`, short gets half), one knob doubled at a time; {res['repeats']} timed step(s) per point (median),
after one untimed warm-up step per actor count. k is the least-squares slope of log(step time) on log(knob): 1 = linear, 0 = flat.

```
{res['command']}
```

{chr(10).join(lines)}

Rollout actors at {ap['problems']} problems × group {ap['group']}: 1 actor {act['1']['step']:.2f} s/step
(rollout {act['1']['rollout']:.2f} s), 2 actors {act['2']['step']:.2f} s/step (rollout {act['2']['rollout']:.2f} s):
{speed:.2f}× — on {res['machine'].split(';')[0]}, two actors share the same cores as each other and the learner.

Notes: the random tiny model rarely writes a well-formed short turn, and a malformed short turn ends the
episode (docs/protocols.md), so episodes mostly stop after 2 turns whatever `max_turns` is — see the
turns/episode column: the turns knob can only cost time once episodes reach the cap (trained adapters).
The engine batches every episode of a protocol step into one call, which is why k < 1 is possible for
problems and group. No target was set for scaling.

Measured on {res['machine']}; CPU shared with other jobs (load average {res['load_avg_before']} before,
{res['load_avg_after']} after).
"""
    write_section("RL step scaling", body, before="Rollout engines")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="factors 1, 2 only")
    p.add_argument("--doc-only", action="store_true", help="rewrite the doc section from bench/results.json, run nothing")
    p.add_argument("--repeats", type=int, default=1, help="timed steps per point (median)")
    a = p.parse_args()
    if a.doc_only:
        write_doc(load_results()["scaling"])
        return
    res: dict[str, Any] = {"what": "RL step time vs problems, group, turns, tokens (power-law exponent); 1 vs 2 rollout actors",
                           "command": "python bench/scaling.py " + " ".join(sys.argv[1:]), "machine": machine(),
                           "load_avg_before": load_avg(), "repeats": a.repeats}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        res.update(run(a, Path(tmp)))
    res["load_avg_after"] = load_avg()
    res["target"] = "none (report the exponents)"
    res["target_met"] = None
    for knob, r in res["knobs"].items():
        print(f"{knob}: k = {r['exponent']}")
    save_result("scaling", res)
    write_doc(res)


if __name__ == "__main__":
    main()
