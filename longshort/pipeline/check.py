"""`longshort pipeline --check`: does the recipe fit its cluster? Arithmetic only: no GPU, no model, no Ray.

A recipe declares its cluster, its base model's shape and its prompt budget in comment lines
(`# cluster: k=v ...`, `# model: ...`, `# budget: ...`, see recipes/qwen2.5-7b/pipeline.yaml). The plan is resolved
exactly as `longshort pipeline` resolves it (`--quick` and overrides too), and each check compares it with the
declarations: the driver's and the Ray actors' GPUs and CPUs fit the nodes, the RL batch splits evenly over
rollout actors and learner ranks, every stage's context holds its longest episode and its real prompts, the
weights, KV cache and activations fit the GPUs in the dtypes the stages will run (`auto` resolved for the cluster's
device), the LoRA ranks fit the engine. A check whose declaration is missing is skipped and said so.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from longshort.pipeline.plan import Plan
from longshort.precision import resolve_bf16, resolve_dtype

# Prompt tokens from characters: with SmolLM2's tokenizer (49k vocabulary, digits split one by one) every problem
# of the five benchmark files has tokens <= chars / 1.5 + 8 (measured); larger vocabularies (Qwen2.5 152k,
# Llama-3.1 128k) compress at least as well. Chat template: system/user/assistant headers (Llama-3.1 adds its
# date lines) within 48 tokens.
CHARS_PER_TOKEN, TOKEN_SLACK, TEMPLATE_TOKENS = 1.5, 8, 48
GIB = 2**30
HEADROOM_GIB = 4  # CUDA context, allocator fragmentation
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DECLARATIONS = ("cluster", "model", "budget")

Decl = dict[str, dict[str, float]]


def declarations(path: str | Path) -> Decl:
    """The `# cluster:`, `# model:` and `# budget:` comment lines of a recipe file as numbers (those present)."""
    out: Decl = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.match(r"#\s*(cluster|model|budget):\s+(\w+=\S+(?:\s+\w+=\S+)*)\s*$", line)
        if m:
            out[m.group(1)] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return out


def device(decl: Decl) -> str:
    """The device the stages run on: `cuda` on a cluster with GPUs (its `auto` dtypes are bf16), else `cpu`."""
    return "cuda" if decl["cluster"]["gpus_per_node"] > 0 else "cpu"


# ----------------------------------------------------------------------------------------------- problem lengths
def _problems(path: Path, limit: int | None = None) -> list[str]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            rows.append(obj.get("problem") or obj.get("question"))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def prompt_bound(plan: Plan, stage: str, problems: list[str]) -> int:
    """Upper bound on the tokens of the longest prompt (longest system prompt of the stage + problem + template)."""
    r = plan.stages[stage].recipe
    system = max(len(r.roles.long.system_prompt), len(r.roles.short.system_prompt), len(r.protocol.system_prompt))
    return math.ceil((system + max(map(len, problems))) / CHARS_PER_TOKEN) + TOKEN_SLACK + TEMPLATE_TOKENS


def problem_sources(plan: Plan) -> dict[str, list[Path]]:
    """The problem files each stage reads that exist here (relative paths from the working directory, as the
    pipeline reads them); a file not prepared yet is left out (and reported by `run_checks`)."""
    data = plan.pipeline.data
    found = lambda p: [Path(p)] if p and Path(p).is_file() else []  # noqa: E731
    bench = [f for p in plan.pipeline.pipeline.benchmarks.values() for f in found(p)]
    return {"rl": found(data.train), "analyze": found(data.train), "eval": found(data.test), "benchmarks": bench}


# ----------------------------------------------------------------------------------------------- the checks
def gpu_cpu_problems(plan: Plan, decl: Decl) -> list[str]:
    """Driver + rollout actors + learner ranks fit the declared nodes (first-fit-decreasing, GPUs then CPUs)."""
    c = decl["cluster"]
    rl_stage = plan.stages["rl"].recipe
    rl = rl_stage.rl
    bad = []
    for kind, per_node, driver in (("gpus", c["gpus_per_node"], c["driver_gpus"]), ("cpus", c["cpus_per_node"], c["driver_cpus"])):
        items = [driver] + [getattr(rl, f"rollout_{kind}")] * rl.rollout_actors + [getattr(rl, f"learner_{kind}")] * rl.learner_workers
        free = [per_node] * int(c["nodes"])
        for need in sorted(items, reverse=True):
            slot = next((i for i, f in enumerate(free) if f + 1e-9 >= need), None)
            if slot is None:
                bad.append(f"{kind}: {items} (driver, {rl.rollout_actors} rollout actors, {rl.learner_workers} learner ranks) "
                           f"do not fit {int(c['nodes'])} nodes x {per_node:g}")
                break
            free[slot] -= need
    tp = rl_stage.engine.tensor_parallel_size
    if c["gpus_per_node"] > 0:
        if rl.rollout_gpus != tp:
            bad.append(f"rl.rollout_gpus {rl.rollout_gpus:g} != engine.tensor_parallel_size {tp} of stage rl")
        if rl.learner_gpus < 1:
            bad.append(f"rl.learner_gpus {rl.learner_gpus:g}: a learner rank needs a whole GPU")
        for name in ("analyze", "eval", "benchmarks"):
            stp = plan.stages[name].recipe.engine.tensor_parallel_size
            if stp > c["driver_gpus"]:
                bad.append(f"stage {name}: engine.tensor_parallel_size {stp} > the driver's {c['driver_gpus']:g} GPUs")
    else:
        if rl.rollout_gpus or rl.learner_gpus or c["driver_gpus"]:
            bad.append("a CPU-only machine: every GPU reservation must be 0")
        if rl.ray_num_cpus is None or rl.ray_num_cpus > c["cpus_per_node"]:
            bad.append(f"rl.ray_num_cpus {rl.ray_num_cpus} must be set and <= the machine's {c['cpus_per_node']:g} CPUs")
        elif rl.rollout_actors * rl.rollout_cpus + rl.learner_workers * rl.learner_cpus > rl.ray_num_cpus:
            bad.append(f"the actors reserve more CPUs than rl.ray_num_cpus {rl.ray_num_cpus}")
    return bad


def batch_problems(plan: Plan) -> list[str]:
    """One step's episodes split evenly: problems over rollout actors, sequences over minibatches x learner ranks."""
    rl = plan.stages["rl"].recipe.rl
    episodes = rl.problems_per_step * rl.group_size  # one training sequence per role per episode
    bad = []
    if rl.problems_per_step % rl.rollout_actors:
        bad.append(f"rl.problems_per_step {rl.problems_per_step} is not a multiple of rl.rollout_actors {rl.rollout_actors}")
    if episodes % (rl.minibatches * rl.learner_workers):
        bad.append(f"{episodes} episodes per step (problems_per_step x group_size) do not split into "
                   f"rl.minibatches {rl.minibatches} x rl.learner_workers {rl.learner_workers}")
    if rl.schedule == "alternate" and rl.steps < 2 * rl.alternate_k:
        bad.append(f"rl.steps {rl.steps} < 2 x rl.alternate_k {rl.alternate_k}: the short role would never train")
    return bad


def context_problems(plan: Plan, decl: Decl, sources: dict[str, list[Path]]) -> list[str]:
    """Every stage's engine context holds its longest episode; the declared prompt budget covers the real problems
    of `sources` (stage -> problem files)."""
    budget = decl["budget"]
    prompt, per_turn = int(budget["prompt_tokens"]), int(budget["turn_overhead"])
    bad = []
    for stage, files in sources.items():
        r = plan.stages[stage].recipe
        limit = r.evaluation.limit if stage in ("eval", "benchmarks") else None
        for f in files:
            need = prompt_bound(plan, stage, _problems(f, limit))
            if need > prompt:
                bad.append(f"stage {stage}: prompts of {f.name} need up to {need} tokens > budget prompt_tokens {prompt}")
    max_position = decl["model"]["max_position"]
    for stage in ("analyze", "rl", "eval", "benchmarks"):
        r = plan.stages[stage].recipe
        mml = r.engine.max_model_len
        if mml > max_position:
            bad.append(f"stage {stage}: engine.max_model_len {mml} > the model's {max_position:g} positions")
        if stage == "analyze":
            if prompt + r.analysis.max_tokens > mml:
                bad.append(f"stage analyze: prompt {prompt} + analysis.max_tokens {r.analysis.max_tokens} > max_model_len {mml}")
            continue
        turns = r.protocol.max_turns
        episode = prompt + math.ceil(turns / 2) * r.roles.long.max_tokens + turns // 2 * r.roles.short.max_tokens + turns * per_turn
        if episode > mml:
            bad.append(f"stage {stage}: prompt {prompt} + {math.ceil(turns / 2)} x long {r.roles.long.max_tokens} + {turns // 2} x short "
                       f"{r.roles.short.max_tokens} + {turns} x {per_turn} = {episode} > engine.max_model_len {mml}")
        if stage in ("eval", "benchmarks"):
            if prompt + r.protocol.max_tokens > mml:
                bad.append(f"stage {stage}: long_cot prompt {prompt} + protocol.max_tokens {r.protocol.max_tokens} > {mml}")
            if "pdr" in plan.pipeline.pipeline.systems and prompt + r.protocol.pdr_kappa + r.protocol.max_tokens > mml:
                bad.append(f"stage {stage}: pdr prompt + kappa {r.protocol.pdr_kappa} + max_tokens {r.protocol.max_tokens} > {mml}")
    return bad


def _activations(tokens: int, m: dict[str, float], nbytes: int, checkpointed: bool) -> float:
    """Bytes kept for backward: per token and layer ~8 x hidden + 4 x intermediate values (norm in/out, q/k/v,
    attention out, residuals; MLP gate, up, act, act*up), or only the layer input when checkpointed (+ one layer
    recomputed); plus ~3 x vocab float32 values for the logits, log-softmax and entropy."""
    per_layer = 8 * m["hidden"] + 4 * m["intermediate"]
    body = tokens * m["layers"] * (m["hidden"] if checkpointed else per_layer) * nbytes
    recompute = tokens * per_layer * nbytes if checkpointed else 0
    return body + recompute + 3 * tokens * m["vocab"] * 4


def learner_bytes(plan: Plan, decl: Decl, tokens: int) -> float:
    """The RL learner on one GPU: base weights in the resolved model.dtype (LoRA and AdamW state are megabytes)
    + activations of one micro-batch of `tokens`-token sequences (checkpointed with rl.gradient_checkpointing)."""
    r = plan.stages["rl"].recipe
    nbytes = DTYPE_BYTES[resolve_dtype(r.model.dtype, device(decl))]
    m = decl["model"]
    return m["params"] * nbytes + r.rl.micro_batch_size * _activations(tokens, m, nbytes, r.rl.gradient_checkpointing)


def rl_context_cap(plan: Plan, decl: Decl) -> int:
    """The longest sequence the RL learner holds on one GPU (capped by the model's positions): the bound on the RL
    stage's engine.max_model_len, recomputed from the resolved dtype and gradient checkpointing."""
    room = decl["cluster"]["gpu_memory_gib"] * GIB - HEADROOM_GIB * GIB
    lo, hi = 0, int(decl["model"]["max_position"])
    if learner_bytes(plan, decl, hi) <= room:
        return hi
    while hi - lo > 1:  # learner_bytes grows with tokens: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if learner_bytes(plan, decl, mid) <= room else (lo, mid)
    return lo


def memory_problems(plan: Plan, decl: Decl) -> list[str]:
    """Engine weights + one full-length sequence of KV cache fit its share; the RL learner and the SFT stages (on
    the driver's GPU) fit one GPU — every dtype as the stage resolves it on the cluster's device."""
    c, m = decl["cluster"], decl["model"]
    if c["gpus_per_node"] == 0:
        return []
    dev = device(decl)
    gpu = c["gpu_memory_gib"] * GIB
    bad = []
    for stage in ("analyze", "rl", "eval", "benchmarks"):
        e = plan.stages[stage].recipe.engine
        b = DTYPE_BYTES[resolve_dtype(e.dtype, dev)]
        weights = m["params"] * b / e.tensor_parallel_size
        kv = 2 * m["layers"] * m["kv_dim"] * b * e.max_model_len / e.tensor_parallel_size
        if e.gpu_memory_utilization * gpu - weights - HEADROOM_GIB * GIB < kv:
            bad.append(f"stage {stage}: engine.gpu_memory_utilization {e.gpu_memory_utilization} x {c['gpu_memory_gib']:g} GiB "
                       f"leaves no KV cache for one {e.max_model_len}-token sequence after {weights / GIB:.1f} GiB of weights")
    r = plan.stages["rl"].recipe
    tokens = r.engine.max_model_len
    if tokens > rl_context_cap(plan, decl):
        dtype = resolve_dtype(r.model.dtype, dev)
        ckpt = "with" if r.rl.gradient_checkpointing else "without"
        bad.append(f"RL learner: {dtype} base {ckpt} gradient checkpointing + activations of {r.rl.micro_batch_size} x {tokens} "
                   f"tokens ~ {learner_bytes(plan, decl, tokens) / GIB:.0f} GiB > {c['gpu_memory_gib']:g} GiB - {HEADROOM_GIB}; "
                   f"the longest sequence that fits is {rl_context_cap(plan, decl)} tokens")
    for stage in ("reasoner", "sft_long", "sft_short"):
        if stage == "reasoner" and not plan.pipeline.pipeline.train_reasoner:
            continue
        s = plan.stages[stage].recipe
        wb = DTYPE_BYTES[resolve_dtype(s.model.dtype, dev)]
        # full: weights + grads + two AdamW states in the weights' dtype; lora: the frozen weights only
        state = m["params"] * wb * (4 if s.sft.mode == "full" else 1)
        ab = 2 if (resolve_bf16(s.sft.bf16, dev) or wb == 2) else 4
        need = state + s.sft.batch_size * _activations(s.sft.max_length, m, ab, s.sft.gradient_checkpointing)
        if need > gpu - HEADROOM_GIB * GIB:
            bad.append(f"stage {stage}: {s.sft.mode} SFT ~ {need / GIB:.0f} GiB > {c['gpu_memory_gib']:g} GiB - {HEADROOM_GIB} "
                       f"(batch {s.sft.batch_size} x {s.sft.max_length} tokens)")
    return bad


def lora_problems(plan: Plan) -> list[str]:
    bad = []
    for stage in ("rl", "eval", "benchmarks"):
        e = plan.stages[stage].recipe.engine
        ranks = [plan.stages[s].recipe.sft.lora.r for s in ("sft_long", "sft_short")] + [plan.stages["rl"].recipe.rl.lora.r]
        if max(ranks) > e.max_lora_rank:
            bad.append(f"stage {stage}: engine.max_lora_rank {e.max_lora_rank} < LoRA rank {max(ranks)}")
        if e.max_loras < 2:
            bad.append(f"stage {stage}: engine.max_loras {e.max_loras} < 2 (both roles resident)")
    return bad


# ----------------------------------------------------------------------------------------------- all of them
def run_checks(plan: Plan, recipe_path: str | Path, sources: dict[str, list[Path]] | None = None) -> dict[str, Any]:
    """Every check the declarations allow: {"problems": [...], "skipped": [...], "estimates": {...}}."""
    decl = declarations(recipe_path)
    problems, skipped = batch_problems(plan) + lora_problems(plan), []
    missing = [d for d in DECLARATIONS if d not in decl]
    for name, needs, fn in (
        ("cluster fit", ("cluster",), lambda: gpu_cpu_problems(plan, decl)),
        ("context", ("model", "budget"), lambda: context_problems(plan, decl, sources if sources is not None else problem_sources(plan))),
        ("memory", ("cluster", "model"), lambda: memory_problems(plan, decl)),
    ):
        lacking = [d for d in needs if d not in decl]
        if lacking:
            skipped.append(f"{name}: the recipe has no '# {lacking[0]}: key=value ...' line")
        else:
            problems += fn()
    if sources is None:
        have = {str(f) for files in problem_sources(plan).values() for f in files}
        data = plan.pipeline.data
        wanted = [data.train, data.test, *plan.pipeline.pipeline.benchmarks.values()]
        skipped += [f"prompt lengths of {p}: not prepared yet" for p in dict.fromkeys(w for w in wanted if w and w not in have)]
    estimates: dict[str, Any] = {}
    if not missing and decl["cluster"]["gpus_per_node"] > 0:
        r = plan.stages["rl"].recipe
        dev = device(decl)
        estimates = {
            "device": dev,
            "rl_learner_dtype": resolve_dtype(r.model.dtype, dev),
            "rl_gradient_checkpointing": r.rl.gradient_checkpointing,
            "rl_max_model_len": r.engine.max_model_len,
            "rl_learner_gib": round(learner_bytes(plan, decl, r.engine.max_model_len) / GIB, 1),
            "rl_context_cap": rl_context_cap(plan, decl),
            "gpu_gib": decl["cluster"]["gpu_memory_gib"],
        }
    return {"problems": problems, "skipped": skipped, "estimates": estimates}
