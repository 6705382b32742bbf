"""rl.offpolicy_steps 0 against 1 on the demo's RL stage, at equal steps, side by side in one run: the stage's step
time (rollout of step k+1 overlapped with learning on step k) and what it does to the reward.

The stage recipe is bench/rl_demo.py's (recipes/tiny/pipeline.yaml's stage `rl` on the shipped reasoner, fresh LoRA
roles, vLLM with `engine.lora_mode: merged`), with `rl.checkpoint_every` past the last step so that every step but
the first can be overlapped. Writes the "offpolicy" entry of bench/results.json and the "Overlapped rollout and
learning" section of docs/benchmarks.md.

    .venv/bin/python bench/offpolicy.py [--steps 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from common import goal, goal_text, load_avg, load_results, machine, median, save_result, write_section  # noqa: E402
from rl_demo import PIPELINE, run_stage  # noqa: E402

ENGINE = ["engine.kind=vllm", "engine.lora_mode=merged"]


def runs(steps: int) -> dict[str, list[str]]:
    never = f"rl.checkpoint_every={steps + 1}"  # the final step still writes one; no step before it blocks the overlap
    return {"on_policy": [*ENGINE, never, "rl.offpolicy_steps=0"], "off_policy": [*ENGINE, never, "rl.offpolicy_steps=1"]}


def later_steps(r: dict[str, Any]) -> list[float]:
    return r["step_s_per_step"][1:]  # step 1 is on-policy in both runs


def write_doc(res: dict[str, Any]) -> None:
    on, off, c = res["on_policy"], res["off_policy"], res["config"]
    rows = ["| run | steps overlapped | steps s | step 2+ median s | rollout s | learn s | long reward (mean) | "
            "short reward (mean) | accuracy |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in (("offpolicy_steps 0", on), ("offpolicy_steps 1", off)):
        mean = {k: sum(v) / len(v) for k, v in r["reward"].items()}
        rows.append(f"| {name} | {sum(r['offpolicy'])} of {r['steps']} | {r['steps_s']:.1f} | {median(later_steps(r)):.1f} | "
                    f"{r['rollout_s']:.1f} | {r['learn_s']:.1f} | {mean['long']:.3f} | {mean['short']:.3f} | {r['accuracy']:.2f} |")
    g = res["speedup"]
    body = f"""`rl.offpolicy_steps: 1` rolls out step k+1 with the adapters of step k's start while the learner trains on step
k, and takes the PPO ratio against the adapters that sampled (docs/rl.md, "Overlapped rollout and learning"). Both
runs: the demo's RL stage as in "Demo RL stage" ({c['problems_per_step']} problems × group {c['group_size']}, vLLM merged,
fresh LoRA on the shipped reasoner), {c['steps']} steps, one after the other in one run of the script.

```
{res['command']}
```

{chr(10).join(rows)}

`offpolicy.speedup` (median step time of steps 2+, on-policy / off-policy): **{goal_text(g)}**. What bounds it: an
overlapped step lasts max(rollout, learning) plus the sync, not their sum, and on this 2-core machine the rollout
actor and the learner each hold one core, so the bound is (rollout + learn) / max(rollout, learn) =
{res['bound']:.2f}× from the on-policy run's phases; it is not reached because the overlapped learner ran
{off['learn_s'] / on['learn_s']:.2f}× as long as the on-policy one (learn s), sharing the two cores with the rollout's engine.
Accuracy is 0 in both: fresh roles on the reasoner have not learned the Long⊗Short format. The reward columns are means over {c['steps']} steps of
{c['problems_per_step'] * c['group_size']} episodes each: too few steps to tell a difference in learning apart, and
they are shown only so that a collapse would be visible. Measured on {res['machine']}; load average
{res['load_avg_before']} before, {res['load_avg_after']} after.
"""
    write_section("Overlapped rollout and learning", body, before="Weight sync: LoRA vs full")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="3 steps, 2 problems x group 2, short turns")
    p.add_argument("--doc-only", action="store_true")
    a = p.parse_args()
    if a.doc_only:
        write_doc(load_results()["offpolicy"])
        return
    if a.quick:
        a.steps = 3
    res: dict[str, Any] = {"what": "demo RL stage at equal steps: rl.offpolicy_steps 0 vs 1",
                           "command": "python bench/offpolicy.py " + " ".join(sys.argv[1:]), "machine": machine(),
                           "load_avg_before": load_avg()}
    r = runs(a.steps)
    with tempfile.TemporaryDirectory(prefix="bench-offpolicy-") as tmp:
        from rl_demo import stage_recipe

        rl = stage_recipe(Path(tmp), "on_policy", a, r).rl
        res["config"] = {"steps": a.steps, "problems_per_step": rl.problems_per_step, "group_size": rl.group_size,
                         "quick": a.quick, "recipe": str(PIPELINE.relative_to(PIPELINE.parents[2]))}
        a.recipe_steps = a.steps
        for name in r:
            res[name] = run_stage(Path(tmp) / name, name, a, r)
            print(name, res[name], flush=True)
    res["load_avg_after"] = load_avg()
    on, off = res["on_policy"], res["off_policy"]
    res["speedup"] = goal(round(median(later_steps(on)) / median(later_steps(off)), 3), ">=", 1.0)
    res["bound"] = round((on["rollout_s"] + on["learn_s"]) / max(on["rollout_s"], on["learn_s"]), 3)
    print(f"offpolicy.speedup {goal_text(res['speedup'])}")
    save_result("offpolicy", res)
    write_doc(res)


if __name__ == "__main__":
    main()
