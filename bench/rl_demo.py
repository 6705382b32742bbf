"""The demo's RL stage before/after: recipes/tiny/pipeline.yaml's stage `rl` on the HF engine with LoRA adapters (what
`pipeline.rl` ran with `engine: {kind: hf}`) and on vLLM with `engine.lora_mode: merged` (what `lora_mode: auto` picks
on CPU), at equal steps, side by side in one run.

The stage's recipe is the one `longshort pipeline` builds (shared sections + `pipeline.rl`: protocol long_short, both
roles, the recipe's problems_per_step, group_size, temperatures, max_tokens, max_turns, lr, KL), with four changes
that keep it runnable alone and equal for both engines: the base is the shipped reasoner (data/reasoner/tiny, what
stage `reasoner` installs), both roles start from a fresh LoRA on rl.lora.target_modules instead of the SFT adapters
(stages sft_long/sft_short are not run; a fresh LoRA also has no lm_head LoRA, which adapter-mode vLLM refuses),
the problems come from the recipe's synthetic generator (`synthetic.n` smaller, same settings) instead of stage
data's file, and `rl.steps` is `--steps`. Timed: the stage's wall time (`run_rl`, Ray and engine start-up included)
and each step's rollout / learn / sync from its metrics.jsonl. Writes the "rl_demo" entry of bench/results.json and
the "Demo RL stage: HF engine vs vLLM merged" section of docs/benchmarks.md.

    .venv/bin/python bench/rl_demo.py [--steps 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from common import ROOT, goal, goal_text, load_avg, load_results, machine, median, save_result, write_section  # noqa: E402

PIPELINE = ROOT / "recipes" / "tiny" / "pipeline.yaml"
REASONER = ROOT / "data" / "reasoner" / "tiny"
GOAL = 1.0  # no number in issue #17: the bar for switching the stage is "not slower" (speedup >= 1)
RUNS = {  # name -> engine overrides of the stage recipe, explicit whatever the recipe's engine section says now
    "before": ["engine.kind=hf", "engine.lora_mode=adapter"],  # pipeline.rl's `engine: {kind: hf}`, lora_mode's default
    "after": ["engine.kind=vllm", "engine.lora_mode=merged"],
}
QUICK = ["rl.problems_per_step=2", "rl.group_size=2", "protocol.max_turns=4", "roles.long.max_tokens=24", "roles.short.max_tokens=16"]


def stage_recipe(out: Path, name: str, a: argparse.Namespace, runs: dict[str, list[str]] = RUNS):
    """Stage `rl` of the pipeline recipe as `longshort pipeline` builds it, with this bench's changes (module doc)."""
    from longshort.config import load_recipe
    from longshort.config.loader import apply_overrides, build, to_dict
    from longshort.config.recipe import Recipe
    from longshort.pipeline.plan import make_plan

    # Planned on the HF engine: make_plan refuses vLLM for stages whose SFT adapters carry an lm_head LoRA, and this
    # bench replaces those adapters with fresh ones (no lm_head) before choosing each run's engine.
    plan = make_plan(load_recipe(str(PIPELINE), [f"run.out_dir={out}", "engine.kind=hf", "pipeline.rl.engine.kind=hf"]), str(PIPELINE))
    data = to_dict(plan.stages["rl"].recipe)
    over = [f"model.base={REASONER}", "roles.long.adapter=null", "roles.short.adapter=null", "data.train=null",
            "synthetic.n=2000", f"rl.steps={a.steps}", f"run.out_dir={out}", f"run.name={name}", *runs[name],
            *(QUICK if a.quick else [])]  # fmt: skip
    return build(Recipe, apply_overrides(data, over), f"{PIPELINE}: pipeline.rl + bench/rl_demo.py")


def run_stage(out: Path, name: str, a: argparse.Namespace, runs: dict[str, list[str]] = RUNS) -> dict[str, Any]:
    from longshort.rl.loop import run_rl

    recipe = stage_recipe(out, name, a, runs)
    t0 = time.perf_counter()
    run_rl(recipe, progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    precision = json.loads((out / name / "precision.json").read_text())
    steps_s = sum(r["time/step"] for r in rows)

    def total(key: str) -> float:
        return round(sum(r[key] for r in rows), 2)

    # the recipe's own step count, projected: the measured start-up and first step, then the later steps' median
    later = median([r["time/step"] for r in rows[1:]]) if len(rows) > 1 else rows[0]["time/step"]
    startup = wall - steps_s
    return {
        "engine": recipe.engine.kind,
        "lora_mode": precision["engine_lora_mode"]["resolved"],
        "steps": len(rows),
        "wall_s": round(wall, 1),
        "startup_s": round(startup, 1),
        "steps_s": round(steps_s, 2),
        "rollout_s": total("time/rollout"),
        "learn_s": total("time/learn"),
        "sync_s": total("time/sync"),
        "step_s_per_step": [round(r["time/step"], 2) for r in rows],
        "gen_tokens_per_episode": round(sum(r["tokens_per_problem"] for r in rows) / len(rows), 1),
        "turns_per_episode": round(sum(r["turns"] for r in rows) / len(rows), 2),
        "accuracy": round(sum(r["accuracy"] for r in rows) / len(rows), 3),
        "reward": {role: [round(r[f"{role}/reward"], 4) for r in rows] for role in ("long", "short")},
        "offpolicy": [r["offpolicy"] for r in rows],
        "projected_recipe_stage_s": round(startup + rows[0]["time/step"] + (a.recipe_steps - 1) * later, 1),
    }


def table(res: dict[str, Any]) -> str:
    lines = [("| run | engine | lora_mode | stage wall s | start-up s | steps s | rollout s | learn s | sync s | gen tok/episode "
              f"| turns/episode | accuracy | projected {res['config']['recipe_steps']}-step stage s |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in RUNS:
        r = res[name]
        lines.append(f"| {name} | {r['engine']} | {r['lora_mode']} | {r['wall_s']:.0f} | {r['startup_s']:.0f} | {r['steps_s']:.1f} | "
                     f"{r['rollout_s']:.1f} | {r['learn_s']:.1f} | {r['sync_s']:.1f} | {r['gen_tokens_per_episode']:.0f} | "
                     f"{r['turns_per_episode']:.2f} | {r['accuracy']:.2f} | {r['projected_recipe_stage_s']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def write_doc(res: dict[str, Any]) -> None:
    c, b, f = res["config"], res["before"], res["after"]
    g = res["speedup"]
    # what bounds the speedup, met or not: the engine only changes the rollout phase
    phases = "; ".join(f"{k} {b[k + '_s']:.1f} s → {f[k + '_s']:.1f} s ({b[k + '_s'] / f[k + '_s']:.2f}×, "
                       f"{100 * f[k + '_s'] / f['steps_s']:.0f}% of the steps after)" for k in ("rollout", "learn", "sync"))  # fmt: skip
    bound = (f" Per phase, summed over the steps, before → after: {phases}. The engine changes only the rollout; the "
             f"start-up grows by {f['startup_s'] - b['startup_s']:.0f} s (vLLM starts one engine per role in merged mode).")  # fmt: skip
    body = f"""The RL stage of the demo pipeline (recipes/tiny/pipeline.yaml, stage `rl`: protocol long_short, both roles,
{c['problems_per_step']} problems × group {c['group_size']} per step, its temperatures, `max_tokens` and `max_turns`)
at {c['steps']} equal steps, before — the HF engine with LoRA adapters on one base (`pipeline.rl`'s `engine: {{kind: hf}}`
until the recipe moved to `lora_mode: auto`) — and after — vLLM with `engine.lora_mode: merged` (what `auto` picks on
CPU) — one after the other in one run. Both roles start
from a **fresh LoRA** (not the SFT adapters: stages sft_long / sft_short are not run here) on the shipped reasoner,
problems from the recipe's synthetic generator. "steps s" sums every step (step 1 included); "start-up" is the rest
of the stage's wall time (Ray, engines, the first sync check, shutdown); the last column projects the recipe's own
{c['recipe_steps']} steps (start-up + step 1 + the later steps' median).

```
{res['command']}
```

{table(res)}

`rl_demo.speedup` (before / after, steps s at equal steps): **{goal_text(g)}** — the issue gives no number; ≥ 1
(vLLM merged no slower) is the bar for switching the stage's engine. Stage wall time at {c['steps']} steps, start-up
included: {res['speedup_wall']:.2f}×; projected over {c['recipe_steps']} steps: {res['speedup_projected']:.2f}×.{bound}
The two runs sample different episodes (different engines' random streams), so their token counts differ a little:
see the tokens and turns columns.

Measured on {res['machine']}; load average {res['load_avg_before']} before, {res['load_avg_after']} after (a shared
machine: absolute numbers are noisy; both runs in the same run of the script).
"""
    write_section("Demo RL stage: HF engine vs vLLM merged", body, before="Weight sync: LoRA vs full")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 steps, 2 problems x group 2, 4 turns, short turns")
    p.add_argument("--doc-only", action="store_true", help="rewrite the doc section from bench/results.json, run nothing")
    a = p.parse_args()
    if a.doc_only:
        write_doc(load_results()["rl_demo"])
        return
    if a.quick:
        a.steps = 2
    res: dict[str, Any] = {"what": "demo pipeline's RL stage time at equal steps: HF engine (today) vs vLLM lora_mode merged",
                           "command": "python bench/rl_demo.py " + " ".join(sys.argv[1:]), "machine": machine(),
                           "load_avg_before": load_avg()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-rl-demo-") as tmp:
        from longshort.config import load_recipe

        rl = stage_recipe(Path(tmp), "before", a).rl
        a.recipe_steps = load_recipe(str(PIPELINE)).pipeline.rl["rl"]["steps"]  # the stage's own length, for the projection
        res["config"] = {"steps": a.steps, "recipe_steps": a.recipe_steps, "problems_per_step": rl.problems_per_step,
                         "group_size": rl.group_size, "quick": a.quick, "adapters": "fresh LoRA (no SFT adapters)"}  # fmt: skip
        for name in RUNS:
            res[name] = run_stage(Path(tmp) / name, name, a)
            print(name, res[name], flush=True)
    res["load_avg_after"] = load_avg()
    b, f = res["before"], res["after"]
    res["speedup"] = goal(round(b["steps_s"] / f["steps_s"], 3), ">=", GOAL)
    res["speedup_wall"] = round(b["wall_s"] / f["wall_s"], 3)
    res["speedup_projected"] = round(b["projected_recipe_stage_s"] / f["projected_recipe_stage_s"], 3)
    print(table(res))
    print(f"rl_demo.speedup {goal_text(res['speedup'])}")
    save_result("rl_demo", res)
    write_doc(res)


if __name__ == "__main__":
    main()
