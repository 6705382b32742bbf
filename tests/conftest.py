"""Session fixtures shared by the whole suite: one tiny model, one vLLM engine, one HF engine."""

from __future__ import annotations

import os
import subprocess
import types

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download from a hub in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(os.path.dirname(REPO), "shared", "benchmarks")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The embedded tiny Qwen2 model + tokenizer, built once for the session (random weights)."""
    from longshort.models import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from longshort.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="session")
def benchmarks_dir() -> str:
    if not os.path.isdir(BENCHMARKS):
        pytest.fail(f"real benchmark files expected at {BENCHMARKS} (shared/benchmarks beside the repo)")
    return BENCHMARKS


# --- engines: one vLLM engine and one HF engine for the whole session (a vLLM start costs ~20 s) -------------

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_lora_adapter(base: str, out, seed: int, scale: float = 0.05, r: int = 8) -> str:
    """A PEFT LoRA adapter on `base` with random non-zero B (so it changes the model), saved to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:  # B is zero at init, which would make the adapter a no-op
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def make_adapter():
    """`make_adapter(base, out_dir, seed)`: build a random LoRA adapter (see `make_lora_adapter`)."""
    return make_lora_adapter


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory) -> dict[str, str]:
    """Two different LoRA adapters (r=8, all projections) on the tiny model, for the roles "long" and "short"."""
    root = tmp_path_factory.mktemp("adapters")
    return {role: make_lora_adapter(tiny_model, root / role, seed) for seed, role in enumerate(("long", "short"), 1)}


def engine_config(**kw):
    """The engine settings of the test suite: float32 (engines agree to ~1e-6), small RAM share, no compilation."""
    from longshort.config.core import EngineConfig

    return EngineConfig(**{"dtype": "float32", "gpu_memory_utilization": 0.1, "enforce_eager": True, "max_model_len": 1024, **kw})


@pytest.fixture(scope="session")
def vllm_engine(tiny_model, tiny_adapters):
    """THE vLLM engine of the session (tiny model, roles long/short). Tests that swap an adapter must swap it back."""
    from longshort.engines import make_engine

    engine = make_engine("vllm", tiny_model, engine_config(), dict(tiny_adapters), seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(tiny_model, tiny_adapters):
    """The transformers+peft engine on the same model and adapters as `vllm_engine`."""
    from longshort.engines import make_engine

    engine = make_engine("hf", tiny_model, engine_config(batch_size=16), dict(tiny_adapters), seed=0)
    yield engine
    engine.close()


# --- Ray: one local cluster for the whole session (RL, reliability) ----------------------------------------


@pytest.fixture(scope="session")
def ray_cluster():
    """THE Ray cluster of the session: local, 2 CPUs, no dashboard, bound to 127.0.0.1."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def rl_overrides(out, tiny_model: str, tiny_adapters: dict[str, str], *extra: str) -> list[str]:
    """`longshort rl` on the tiny model with the HF engine (deterministic) and the session's two adapters."""
    return [
        f"run.out_dir={out}",
        f"model.base={tiny_model}",
        "engine.kind=hf",
        f"roles.long.adapter={tiny_adapters['long']}",
        f"roles.short.adapter={tiny_adapters['short']}",
        "roles.long.max_tokens=24",
        "roles.short.max_tokens=12",
        "synthetic.n=60",
        # the random tiny model earns equal rewards in a group (zero advantages): the entropy bonus makes every
        # step a real, non-zero update of both adapters
        "rl.entropy_coef=0.05",
        "rl.lr=1e-3",
        *extra,
    ]


RL_RECIPE = os.path.join(REPO, "recipes", "tiny", "rl.yaml")


@pytest.fixture(scope="session")
def rl_straight_run(ray_cluster, tmp_path_factory, tiny_model, tiny_adapters):
    """`longshort rl` for 4 steps without interruption (checkpoints every 2): the reference run that resumed and
    faulted runs must reproduce (tests/test_rl_ray.py, tests/reliability/)."""
    from longshort.cli import main

    out = tmp_path_factory.mktemp("rl_straight")
    args = rl_overrides(out, tiny_model, tiny_adapters, "rl.steps=4", "rl.checkpoint_every=2", "run.name=a")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 0
    return out / "a"


# --- the pipeline: one uninterrupted `longshort pipeline --quick` run for the session ------------------------

PIPELINE_RECIPE = os.path.join(REPO, "recipes", "tiny", "pipeline.yaml")
PIPELINE_STAGES = ("base", "data", "reasoner", "analyze", "coldstart", "sft_long", "sft_short", "rl", "rl_length", "rl_operator", "eval", "benchmarks",
                   "export")
# Spelled out (not imported from longshort.pipeline.plan): the tests pin the stage order the console reports.


def run_pipeline_quick(*overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`longshort pipeline --recipe recipes/tiny/pipeline.yaml --quick --no-progress OVERRIDES` (tiny model, HF engine)."""
    cli = os.path.join(REPO, ".venv", "bin", "longshort")
    return subprocess.run([cli, "pipeline", "--recipe", PIPELINE_RECIPE, "--quick", "--no-progress", *overrides],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.fixture(scope="session")
def pipeline_quick(tmp_path_factory, benchmarks_dir):
    """The uninterrupted `longshort pipeline --quick` run (~50 s on 2 cores): (run dir, the overrides it ran with).
    tests/test_pipeline.py checks and reruns it (its eval and rl stages stay as written here); the kill trial in
    tests/reliability/test_kill_resume.py compares a killed-and-resumed run to it."""
    out = tmp_path_factory.mktemp("pipeline")
    args = [f"run.out_dir={out}", f"pipeline.benchmarks={{math500: {benchmarks_dir}/math500.jsonl}}"]
    res = run_pipeline_quick(*args)
    assert res.returncode == 0, res.stderr[-4000:]
    return out / "tiny-quick", args



@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the suite shares 2 cores, and training tests stall when each oversubscribes
    them (results do not depend on the thread count). Modules opt in with `pytestmark = usefixtures(...)`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# --- test tiers: unit / integration / slow, derived from what each test uses (docs: README "Test tiers") ------
# `make test-fast` runs `-m unit`, `make test-integration` `-m "unit or integration"`, `make test` everything.
# A test gets exactly one tier. An explicit `@pytest.mark.unit|integration|slow` (or a module `pytestmark`) wins;
# otherwise the tier follows the fixtures in its closure, so a new test needs no table entry:
#   slow         uses a fixture of SLOW_FIXTURES (the quick pipeline, the reference RL run, SmolLM2, a two-node Ray
#                cluster), lives in tests/reliability/ (crash/fault/bad-input trials on the real CLI), or allows
#                itself a timeout of >= SLOW_TIMEOUT_S (`@pytest.mark.timeout(300)`: its author expects minutes);
#   integration  uses a real engine or Ray (ENGINE_FIXTURES, also through `request.getfixturevalue(f"{kind}_engine")`
#                with a parametrized `kind`), or hands the tiny model's weights to something other than its
#                tokenizer (MODEL_FIXTURES requested by the test or by a fixture other than `tiny_tokenizer`:
#                generation, SFT/RL training, export), or imports vllm/ray at module level;
#   unit         everything else: pure Python/torch on small inputs, the tokenizer, CLI argument checks.
TIERS = ("unit", "integration", "slow")
SLOW_FIXTURES = {"pipeline_quick", "rl_straight_run", "smollm2", "two_nodes"}
ENGINE_FIXTURES = {"vllm_engine", "hf_engine", "ray_cluster"}
MODEL_FIXTURES = {"tiny_model", "tiny_adapters", "make_adapter"}
TOKENIZER_ONLY = {"tiny_tokenizer"}  # requests tiny_model, reads only its tokenizer files
ENGINE_MODULES = {"vllm", "ray"}
SLOW_TIMEOUT_S = 120
RELIABILITY = os.path.join(REPO, "tests", "reliability")


def _requesters(item) -> dict[str, set[str]]:
    """fixture name -> what requests it in this test's closure ("<test>" for the test function itself)."""
    info = getattr(item, "_fixtureinfo", None)  # a pytest Function's; other items request no fixtures
    if info is None:
        return {}
    by: dict[str, set[str]] = {name: {"<test>"} for name in info.argnames}
    for name, defs in info.name2fixturedefs.items():
        for arg in defs[-1].argnames:
            by.setdefault(arg, set()).add(name)
    return by


def derive_tier(item) -> tuple[str, str]:
    """(tier, reason) from what the test uses; see the comment above."""
    used = set(getattr(item, "fixturenames", ()))
    if used & SLOW_FIXTURES:
        return "slow", "fixture " + ", ".join(sorted(used & SLOW_FIXTURES))
    if str(item.path).startswith(RELIABILITY + os.sep):
        return "slow", "tests/reliability/"
    timeout = item.get_closest_marker("timeout")
    if timeout and timeout.args and isinstance(timeout.args[0], (int, float)) and timeout.args[0] >= SLOW_TIMEOUT_S:
        return "slow", f"timeout({timeout.args[0]})"
    if used & ENGINE_FIXTURES:
        return "integration", "fixture " + ", ".join(sorted(used & ENGINE_FIXTURES))
    callspec = getattr(item, "callspec", None)
    for value in (callspec.params.values() if callspec else ()):
        if isinstance(value, str) and f"{value}_engine" in ENGINE_FIXTURES:
            return "integration", f"parametrized engine {value}_engine"
    requesters = _requesters(item)
    for name in sorted(MODEL_FIXTURES & used):
        if requesters.get(name, set()) - TOKENIZER_ONLY:
            return "integration", f"fixture {name} (model weights)"
    module = getattr(item, "module", None)
    imported = {v.__name__.split(".")[0] for v in vars(module).values() if isinstance(v, types.ModuleType)} if module else set()
    if imported & ENGINE_MODULES:
        return "integration", "imports " + ", ".join(sorted(imported & ENGINE_MODULES))
    return "unit", "no engine, training or model weights"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(explicit) > 1:
            raise pytest.UsageError(f"{item.nodeid}: more than one test tier marker: {sorted(explicit)}")
        if not explicit:
            tier, _ = derive_tier(item)
            item.add_marker(tier)
