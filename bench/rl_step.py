"""RL throughput: longshort's RL loop (`run_rl`) vs TRL's GRPOTrainer on the same GRPO job, side by side.

Both train a fresh LoRA (r 8, alpha 16, all seven projections) on the embedded tiny model with the same
prompts (the synthetic task, rendered by longshort's chat template), group size, max new tokens, steps,
learning rate, KL weight (k3 to the bare base), clip 0.2, token-mean loss, one optimizer step per RL step,
reward = correctness of the boxed answer. longshort runs its real loop: Ray actors, the vLLM engine for
rollouts in the mode `engine.lora_mode: auto` picks (merged on CPU: the sync then merges each push into the role's
engine), a separate learner, verified LoRA sync; `long_cot` with role `long` is the one-role, one-turn
protocol, i.e. exactly GRPO. TRL runs in this process with its default transformers generation.

Step 1 of each is a warm-up and is not timed. Reported: samples (episodes) per second, generated tokens per
second, and the step time split into rollout / learn / sync (TRL: rollout = `_generate_and_score_completions`,
which also computes the reference logprobs; learn = the rest of the step; no sync, the policy generates itself).

    .venv/bin/python bench/rl_step.py [--quick] [--steps 5] [--problems 4] [--group 4] [--max-tokens 48]
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
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RECIPE, goal, goal_text, load_avg, load_results, machine, median, rl_overrides, save_result, write_section  # noqa: E402

GOAL = 3.0  # longshort samples/s >= 3x TRL's
RAY_NICENESS = int(os.environ.get("RAY_worker_niceness", "15"))  # Ray's default priority of worker processes


def run_longshort(out: Path, model: str, a: argparse.Namespace, extra: list[str] | None = None) -> dict[str, Any]:
    """`run_rl` on the GRPO-equivalent recipe; per-step times from its metrics.jsonl."""
    from longshort.config.recipe import load_recipe
    from longshort.rl.loop import run_rl

    over = rl_overrides(str(out), model, steps=a.steps, problems=a.problems, group=a.group, max_tokens=a.max_tokens, lr=a.lr)
    recipe = load_recipe(str(RECIPE), over + ["run.name=longshort", f"rl.ray_num_cpus={os.cpu_count()}", "engine.lora_mode=auto",
                                              *(extra or [])])  # fmt: skip
    t0 = time.perf_counter()
    run_rl(recipe, progress=False)
    total = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "longshort" / "metrics.jsonl").read_text().splitlines()][1:]
    precision = json.loads((out / "longshort" / "precision.json").read_text())
    n = a.problems * a.group
    step = median([r["time/step"] for r in rows])
    return {
        "engine": recipe.engine.kind,
        "lora_mode": precision["engine_lora_mode"]["resolved"],
        "timed_steps": len(rows),
        "step_s": round(step, 3),
        "rollout_s": round(median([r["time/rollout"] for r in rows]), 3),
        "learn_s": round(median([r["time/learn"] for r in rows]), 3),
        "sync_s": round(median([r["time/sync"] for r in rows]), 3),
        "samples_per_s": round(n / step, 3),
        "gen_tokens_per_sample": round(sum(r["tokens_per_problem"] for r in rows) / len(rows), 1),
        "gen_tokens_per_s": round(median([r["tokens_per_problem"] * n / r["time/step"] for r in rows]), 1),
        "wall_s_incl_startup": round(total, 1),
    }


def run_trl(out: Path, model: str, a: argparse.Namespace) -> dict[str, Any]:
    """TRL GRPOTrainer, same job; its step times from a callback, its rollout time from a thin subclass."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from common import LORA_TARGETS
    from longshort.chat import prompt_text
    from longshort.config.recipe import load_recipe
    from longshort.grading import compare_many, extract_answer, gold_answer
    from longshort.models import load_tokenizer
    from longshort.rl.batches import batch_at, load_problems

    recipe = load_recipe(str(RECIPE), rl_overrides(str(out), model, steps=a.steps, problems=a.problems, group=a.group, max_tokens=a.max_tokens))
    tok = load_tokenizer(model)
    system = recipe.protocol.system_prompt
    rows = batch_at(load_problems(recipe), 0, a.steps * a.problems, recipe.run.seed)
    data = Dataset.from_list([{"prompt": prompt_text(tok, system, r["problem"], [], "long"), "answer": r["answer"]} for r in rows])

    def correct(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [float(v.correct) for v in compare_many([extract_answer(c) for c in completions], [gold_answer(x) for x in answer])]

    times: dict[str, list[float]] = {"step": [], "rollout": [], "tokens": []}

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):  # noqa: ANN001
            t = time.perf_counter()
            res = super()._generate_and_score_completions(inputs)
            times["rollout"].append(time.perf_counter() - t)
            times["tokens"].append(float(res["completion_mask"].sum()))
            return res

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times["step"].append(time.perf_counter() - self.t)

    cfg = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=a.steps, per_device_train_batch_size=a.problems * a.group,
        num_generations=a.group, steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=a.max_tokens, temperature=1.0, top_p=1.0, top_k=0, learning_rate=a.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.01, epsilon=0.2,
        loss_type="dapo", scale_rewards="group", use_cpu=True, bf16=False, fp16=False, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    t0 = time.perf_counter()
    trainer = Timed(model=policy, reward_funcs=correct, args=cfg, train_dataset=data, processing_class=tok,
                    peft_config=lora, callbacks=[StepClock()])  # fmt: skip
    trainer.train()
    total = time.perf_counter() - t0
    n = a.problems * a.group
    steps, rolls, toks = times["step"][1:], times["rollout"][1:], times["tokens"][1:]
    step = median(steps)
    return {
        "timed_steps": len(steps),
        "step_s": round(step, 3),
        "rollout_s": round(median(rolls), 3),
        "learn_s": round(median([s - r for s, r in zip(steps, rolls)]), 3),
        "sync_s": 0.0,
        "samples_per_s": round(n / step, 3),
        "gen_tokens_per_sample": round(sum(toks) / len(toks) / n, 1),
        "gen_tokens_per_s": round(median([t / s for t, s in zip(toks, steps)]), 1),
        "wall_s_incl_startup": round(total, 1),
    }


def table(res: dict[str, Any]) -> str:
    lines = ["| run | step s | rollout s | learn s | sync s | samples/s | gen tok/sample | gen tok/s | wall s (with start-up) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in ("longshort", "longshort_hf", "trl"):
        r = res.get(name)
        if r:
            mode = f" ({r['engine']}, {r['lora_mode']})" if "engine" in r else ""
            lines.append(f"| {name}{mode} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['learn_s']:.2f} | {r['sync_s']:.2f} | "
                         f"{r['samples_per_s']:.2f} | {r['gen_tokens_per_sample']:.0f} | {r['gen_tokens_per_s']:.0f} | {r['wall_s_incl_startup']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def write_doc(res: dict[str, Any]) -> None:
    c = res["config"]
    ls, trl = res["longshort"], res["trl"]

    def share(key: str) -> str:
        return f"{100 * ls[key] / ls['step_s']:.0f}%"

    hf = ""
    if "longshort_hf" in res:
        hf = (f" `longshort_hf` is the same longshort loop with `engine.kind=hf` (transformers generation, as TRL): "
              f"{res['ratio_hf_vs_trl']:.2f}× TRL, which separates the loop from the engine.")  # fmt: skip
    g = res["ratio_vs_trl"]
    bound = ""
    if not g["met"]:
        need = trl["step_s"] / GOAL
        over = [f"{k} {ls[k + '_s']:.2f} s ({ls[k + '_s'] / need:.1f}× that budget)" for k in ("rollout", "learn", "sync")
                if ls[k + "_s"] > need]  # fmt: skip
        bound = (f" What bounds it: {GOAL:g}× TRL needs a longshort step of ≤ {need:.2f} s (TRL's {trl['step_s']:.2f} s / "
                 f"{GOAL:g}); alone over that budget: {'; '.join(over) or 'no single phase (their sum is)'} (TRL: rollout "
                 f"{trl['rollout_s']:.2f} s, learn {trl['learn_s']:.2f} s).")  # fmt: skip
    body = f"""Samples (episodes) per second of one GRPO job run by longshort's RL loop (`run_rl`: Ray actors, vLLM
rollouts in `engine.lora_mode: auto` (here: {ls['lora_mode']}), a separate learner, verified LoRA sync; protocol
`long_cot`, role `long`) and by TRL {res['trl_version']} `GRPOTrainer` (default transformers generation, in the
script's own process), one after the other in one run of the script. Identical job: tiny model
({c['params'] / 1e6:.1f}M params), fresh LoRA r 8 / alpha 16 on all seven projections, {c['problems']} problems ×
group {c['group']} per step, ≤ {c['max_tokens']} new tokens, temperature 1, lr {c['lr']:g}, KL β 0.01 (k3 to the
base), clip 0.2, token-mean loss, one optimizer step per RL step, reward = correctness; float32 on CPU.
{c['steps']} steps each, step 1 (warm-up) not timed, medians of the rest. TRL's rollout column includes its
reference-logprob pass (longshort computes old and reference logprobs in learn).

```
{res['command']}
```

{table(res)}

`rl_step.ratio_vs_trl` (longshort / TRL samples/s): **{goal_text(g)}**. Where longshort's step goes: rollout
{share('rollout_s')}, learn {share('learn_s')}, sync {share('sync_s')} (the rest: rewards, batching, logging).{bound}{hf}

Ray starts its actors (and so the vLLM engine) at nice {RAY_NICENESS} (`RAY_worker_niceness`); the TRL phase ran at
the same niceness so both compete equally with the machine's other jobs. Measured on {res['machine']}; CPU shared
with other jobs (load average {res['load_avg_before']} before, {res['load_avg_after']} after), so absolute numbers are
noisy; all runs in the same run of the script.
"""
    write_section("RL step: longshort vs TRL", body, before="Rollout engines")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 steps, 2 problems x group 4, 32 tokens")
    p.add_argument("--doc-only", action="store_true", help="rewrite the doc section from bench/results.json, run nothing")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--problems", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the TRL process (each longshort actor gets 1 CPU)")
    p.add_argument("--with-hf", action="store_true", help="also run longshort with engine.kind=hf (LoRA adapters, as TRL's peft model)")
    a = p.parse_args()
    if a.doc_only:
        write_doc(load_results()["rl_step"])
        return
    if a.quick:
        a.steps, a.problems, a.group, a.max_tokens = 3, 2, 4, 32
    import torch
    import trl

    from common import build_model, count_params

    torch.set_num_threads(a.threads)
    res: dict[str, Any] = {"what": "RL samples/s, longshort run_rl (vLLM, lora_mode auto) vs TRL GRPOTrainer, identical GRPO job",
                           "command": "python bench/rl_step.py " + " ".join(sys.argv[1:]), "machine": machine(),
                           "load_avg_before": load_avg(), "trl_version": trl.__version__}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-rl-step-") as tmp:
        model = build_model(Path(tmp) / "model")
        res["config"] = {"steps": a.steps, "problems": a.problems, "group": a.group, "max_tokens": a.max_tokens,
                         "lr": a.lr, "params": count_params(model)["total"], "trl_threads": a.threads}  # fmt: skip
        res["longshort"] = run_longshort(Path(tmp) / "ls", model, a)
        print("longshort", res["longshort"], flush=True)
        if a.with_hf:
            res["longshort_hf"] = run_longshort(Path(tmp) / "lshf", model, a, ["engine.kind=hf", "engine.lora_mode=adapter"])
            print("longshort_hf", res["longshort_hf"], flush=True)
        # Ray runs actors at nice 15 (RAY_worker_niceness); TRL gets the same priority against the machine's other jobs.
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), RAY_NICENESS))
        res["trl"] = run_trl(Path(tmp) / "trl", model, a)
        print("trl", res["trl"], flush=True)
    res["load_avg_after"] = load_avg()
    res["ratio_vs_trl"] = goal(round(res["longshort"]["samples_per_s"] / res["trl"]["samples_per_s"], 3), ">=", GOAL)
    if "longshort_hf" in res:
        res["ratio_hf_vs_trl"] = round(res["longshort_hf"]["samples_per_s"] / res["trl"]["samples_per_s"], 3)
    print(table(res))
    print(f"rl_step.ratio_vs_trl {goal_text(res['ratio_vs_trl'])}")
    save_result("rl_step", res)
    write_doc(res)


if __name__ == "__main__":
    main()
