"""The learner's update on one real step of the demo's RL stage, four ways, side by side in one run: each sequence
padded to the longest or packed end to end (`rl.pack_sequences`), and π_old scored in its own pass or taken from
the training forward (one epoch, one minibatch, on-policy). Also what training each role in its own masked pass over
the shared transcripts costs: the share of each role's forward positions that carry its loss.

The step: bench/rl_demo.py's stage recipe (recipes/tiny/pipeline.yaml's stage `rl` on the shipped reasoner, fresh
LoRA roles), rolled out once on the HF engine. Each variant trains both roles from the same fresh adapters, in
interleaved repeats. Writes the "learner" entry of bench/results.json and the "Learner update" section of
docs/benchmarks.md.

    .venv/bin/python bench/learner.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import goal, goal_text, load_avg, load_results, machine, median, save_result, write_section  # noqa: E402
from rl_demo import REASONER, stage_recipe  # noqa: E402

VARIANTS = {  # name -> (rl.pack_sequences, π_old in its own scoring pass)
    "padded, π_old scored": (False, True),
    "padded, π_old from the forward": (False, False),
    "packed, π_old scored": (True, True),
    "packed, π_old from the forward": (True, False),
}
BEFORE, AFTER = "padded, π_old scored", "packed, π_old from the forward"


def one_step(tmp: Path, a: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any], float]:
    """The stage recipe, fresh adapter files, and one step's batches with their normalisers, from a real rollout."""
    from longshort.rl.actors import RolloutWorker
    from longshort.rl.advantages import assign_advantages
    from longshort.rl.batches import build_batches, load_problems, step_problems, step_seed
    from longshort.rl.rewards import assign_rewards
    from longshort.rl.sync import resolve_precision
    from longshort.types import ROLES

    recipe = stage_recipe(tmp, "learner", a, {"learner": ["engine.kind=hf", "engine.lora_mode=adapter"]})
    recipe, _ = resolve_precision(recipe)
    fresh = make_learner(recipe, recipe.rl)
    files = {r: fresh.export_adapter(r) for r in ROLES}
    worker = RolloutWorker(str(REASONER), recipe, files, recipe.run.seed)
    try:
        episodes = worker.rollout(step_problems(recipe, load_problems(recipe), 1), recipe.rl.group_size, 1, step_seed(recipe, 1))
    finally:
        worker.close()
    assign_rewards(episodes, recipe.rl.rewards, recipe.roles.short.max_tokens)
    assign_advantages(episodes, recipe.rl.estimator, ROLES)
    batches, norms = build_batches(episodes, list(ROLES), recipe)
    return recipe, files, batches, norms, sum(len(ep.turns) for ep in episodes) / len(episodes)


def make_learner(recipe: Any, cfg: Any) -> Any:
    from longshort.rl.learner import PolicyLearner

    roles = ("long", "short")
    return PolicyLearner(str(REASONER), {r: None for r in roles}, {r: None for r in roles}, cfg,
                         max_tokens={r: getattr(recipe.roles, r).max_tokens for r in roles},
                         temperatures={r: getattr(recipe.roles, r).temperature for r in roles},
                         seed=recipe.run.seed, dtype=recipe.model.dtype)


def write_doc(res: dict[str, Any]) -> None:
    rows = ["| variant | update s (both roles, median) | positions read | of them filler |", "|---|---:|---:|---:|"]
    for name, r in res["variants"].items():
        rows.append(f"| {name} | {r['update_s']:.2f} | {r['positions']} | {100 * r['padding_share']:.0f}% |")
    roles = "; ".join(f"{role}: {v['sequences']} sequences, {v['trainable']} trainable of {v['tokens']} tokens "
                      f"({100 * v['trainable'] / v['tokens']:.0f}%)" for role, v in res["roles"].items())
    c, v = res["config"], res["variants"]
    body = f"""One real step of the demo's RL stage ({c['problems_per_step']} problems × group {c['group_size']}, rolled out on the
HF engine from fresh LoRA roles on the shipped reasoner), then each role's PPO update four ways, from the same fresh
adapters, in {c['repeats']} interleaved repeats (median shown). `rl.pack_sequences` lays the sequences end to end in
rows as long as the longest one (position ids restart per sequence, so attention stays inside each); "π_old from the
forward" is what one epoch and one minibatch on-policy allow: the training forward's own detached logprobs, no
scoring pass. Both variants of each pair give the same update (tests/test_rl_learner.py). The reference pass
(`rl.kl_coef` > 0) runs in every variant.

```
{res['command']}
```

{chr(10).join(rows)}

`learner.speedup` ({BEFORE} / {AFTER}): **{goal_text(res['speedup'])}**; packing alone
{res['packing_speedup']:.2f}×, π_old from the forward alone {res['fused_speedup']:.2f}×. What bounds packing: it saves
at most the positions it removes, {100 * (1 - v[AFTER]['positions'] / v[BEFORE]['positions']):.0f}% of them on this step,
whose episodes are of similar length (fresh roles: {res['episode_turns']:.1f} turns each); π_old from the forward saves one of
the three passes over the step (π_old, π_ref, the training forward with its backward).

Each role trains in its own masked pass over its view of the step's transcripts (PEFT trains one adapter per
forward; the two views differ anyway: each role's chat rendering puts its own turns as the assistant's): {roles}.
The short role's pass reads the whole transcript to train its few answer tokens: that is what the separate passes
cost, and why its share of the update is close to the long role's.

Measured on {res['machine']}; load average {res['load_avg_before']} before, {res['load_avg_after']} after.
"""
    write_section("Learner update", body, before="Weight sync: LoRA vs full")


def main() -> None:
    import copy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 problems x group 2, short turns, 1 repeat")
    p.add_argument("--doc-only", action="store_true")
    a = p.parse_args()
    if a.doc_only:
        write_doc(load_results()["learner"])
        return
    a.steps = 1
    if a.quick:
        a.repeats = 1
    res: dict[str, Any] = {"what": "one demo RL step's learner update: padded vs packed, π_old scored vs from the forward",
                           "command": "python bench/learner.py " + " ".join(sys.argv[1:]), "machine": machine(),
                           "load_avg_before": load_avg()}
    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        recipe, files, batches, norms, turns = one_step(Path(tmp), a)
    res["config"] = {"problems_per_step": recipe.rl.problems_per_step, "group_size": recipe.rl.group_size,
                     "repeats": a.repeats, "micro_batch_size": recipe.rl.micro_batch_size, "dtype": recipe.model.dtype}
    res["episode_turns"] = turns
    res["roles"] = {role: {"sequences": len(seqs), "tokens": sum(len(s.input_ids) for s in seqs),
                           "trainable": sum(sum(s.mask) for s in seqs)} for role, seqs in batches.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    seen: dict[str, dict[str, float]] = {}
    for _ in range(a.repeats):
        for name, (pack, scored) in VARIANTS.items():
            cfg = copy.deepcopy(recipe.rl)
            cfg.pack_sequences = pack
            learner = make_learner(recipe, cfg)
            t0 = time.perf_counter()
            stats = {role: learner.train(role, seqs, norms[role], behaviour=files[role] if scored else None)
                     for role, seqs in batches.items()}
            times[name].append(time.perf_counter() - t0)
            seen[name] = {"positions": sum(s.positions for s in stats.values()), "padding": sum(s.padding for s in stats.values())}
            print(name, round(times[name][-1], 2), seen[name], flush=True)
    res["variants"] = {name: {"update_s": round(median(times[name]), 3), "update_s_all": [round(t, 3) for t in times[name]],
                              "positions": int(seen[name]["positions"]),
                              "padding_share": round(seen[name]["padding"] / seen[name]["positions"], 4)} for name in VARIANTS}
    res["load_avg_after"] = load_avg()
    v = res["variants"]
    res["speedup"] = goal(round(v[BEFORE]["update_s"] / v[AFTER]["update_s"], 3), ">=", 1.0)
    res["packing_speedup"] = round(v["padded, π_old from the forward"]["update_s"] / v[AFTER]["update_s"], 3)
    res["fused_speedup"] = round(v["packed, π_old scored"]["update_s"] / v[AFTER]["update_s"], 3)
    print(f"learner.speedup {goal_text(res['speedup'])}")
    save_result("learner", res)
    write_doc(res)


if __name__ == "__main__":
    main()
