"""The whole pipeline (`longshort pipeline`): which stages run and the recipe sections each stage adds.

A pipeline recipe holds the shared sections (run, model, roles, engine, protocol, synthetic, data, evaluation)
plus, under `pipeline.<stage>`, recipe sections merged over the shared ones for that stage only. Each stage's
recipe is built and validated before anything runs, so a typo in `pipeline.rl.rl.lrr` fails at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longshort.config.loader import doc
from longshort.errors import ConfigError

SYSTEMS = ("long_cot", "long_short_sft", "long_short_rl", "length_penalty_rl", "sr", "pdr", "pdr_rl")


@dataclass
class GenerateConfig:
    """`pipeline.task: generate`: the teacher whose sampled traces the analysis reads (`longshort data generate`)."""

    model: str | None = doc(
        "The teacher: a local HF model directory, served by the `engine` section and sampled on `data.train`'s "
        "problems {id, problem, answer}; its correct traces become the analysis traces, so the model that wrote them "
        "and the roles' base (`model.base`) may differ.",
        None,
        path=True,
    )
    samples: int = doc("Samples per problem (K); every correct one is kept.", 4)
    temperature: float = doc("Sampling temperature of the teacher.", 0.6)
    max_tokens: int = doc("Token cap of one sample; a sample cut there is counted as truncated, never kept.", 1024)

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_tokens < 1 or not self.temperature >= 0:
            raise ConfigError("keys 'pipeline.generate.samples', 'max_tokens' (>= 1), 'temperature' (>= 0) out of range")


@dataclass
class PipelineConfig:
    task: Literal["synthetic", "files", "generate"] = doc(
        "`synthetic`: generate the synthetic long-CoT task (section `synthetic`) into `<run>/data`; `files`: "
        "traces {id, problem, answer, response} from `data.train` and held-out problems from `data.test`; "
        "`generate`: as `files`, but the traces are sampled from `pipeline.generate.model` on `data.train`'s problems.",
        "synthetic",
    )
    generate: GenerateConfig = doc("`pipeline.task: generate`: the teacher and its sampling.", factory=GenerateConfig)
    train_reasoner: bool = doc(
        "Stage `reasoner`: full SFT of the base on the long traces (the long-CoT reasoner, the paper's R1-distilled "
        "model). false = the base itself is the reasoner (an instruct/reasoning model).",
        True,
    )
    reasoner_source: Literal["train", "shipped"] = doc(
        "Stage `reasoner` (with train_reasoner): `train` runs its SFT; `shipped` uses the reasoner the repository "
        "ships (data/reasoner/tiny, built by scripts/build_reasoner.py) after checking that it was trained on this "
        "recipe's rows with this stage's settings and that its files match their sha256.",
        "train",
    )
    reasoner: dict[str, Any] = doc("Recipe sections for stage `reasoner` (e.g. `sft: {steps: 400}`).", factory=dict, recipe=True)
    analyze: dict[str, Any] = doc("Recipe sections for stage `analyze` (thought chunking, MC rollouts, metric M).", factory=dict, recipe=True)
    coldstart: dict[str, Any] = doc("Recipe sections for stage `coldstart` (per-role cold-start transcripts).", factory=dict, recipe=True)
    sft_long: dict[str, Any] = doc("Recipe sections for stage `sft_long` (LoRA SFT of the long role on the reasoner).", factory=dict, recipe=True)
    sft_short: dict[str, Any] = doc("Recipe sections for stage `sft_short` (LoRA SFT of the short role on the reasoner).", factory=dict, recipe=True)
    rl: dict[str, Any] = doc("Recipe sections for stage `rl` (multi-turn RL of both roles from the SFT adapters).", factory=dict, recipe=True)
    rl_length: dict[str, Any] = doc(
        "Recipe sections for stage `rl_length`, merged over `pipeline.rl`: the single-model baseline "
        "`length_penalty_rl`, one fresh LoRA adapter on the reasoner RL-trained through long CoT with a length "
        "penalty (Kimi k1.5 / L1 style) for the same steps, problems and samples as Long⊗Short's RL.",
        factory=lambda: {"rl": {"rewards": {"correct": 1.0, "format": 0.0, "length": 1.0, "synergy": 0.0}}},
        recipe=True,
    )
    rl_operator: dict[str, Any] = doc(
        "Recipe sections for stage `rl_operator`, merged over `pipeline.rl`: RL through the PDR operator for the system "
        "`pdr_rl` (docs/rl.md, \"RL through an operator\"): one fresh LoRA adapter on the reasoner, trained for the same "
        "steps, problems and samples as Long⊗Short's RL on one-round PDR rollouts (the evaluated `protocol` section's "
        "workspace settings, first round's drafts, one refine call) mixed with plain long traces.",
        # a fresh adapter (not SFT roles to keep close to): recipes/tiny/rl_pdr.yaml's learning rate, two updates per
        # step and no KL term; the format term pays a refine call for boxing an answer, which the reasoner never
        # learned to do after a workspace
        factory=lambda: {"rl": {"operator_mix": 0.5, "operator_loss_on": "refine", "loss": "cispo", "lr": 2.0e-3,
                                "minibatches": 2, "kl_coef": 0.0,
                                "rewards": {"correct": 1.0, "format": 1.0, "length": 0.0, "synergy": 0.0}}},
        recipe=True,
    )
    eval: dict[str, Any] = doc("Recipe sections for stage `eval` (every system on the held-out split).", factory=dict, recipe=True)
    benchmarks: dict[str, str] = doc(
        "Stage `benchmarks`: real benchmark files evaluated with the final models, name -> JSONL path "
        "(e.g. math500: ../shared/benchmarks/math500.jsonl); empty = skip the stage.",
        factory=dict,
        path=True,
    )
    benchmark_eval: dict[str, Any] = doc("Recipe sections for stage `benchmarks` (limit, samples, protocol caps).", factory=dict, recipe=True)
    systems: list[str] = doc(
        "Systems compared on the held-out split: long_cot (the reasoner alone), long_short_sft, long_short_rl "
        "(Long⊗Short, arXiv 2505.11827), length_penalty_rl (one adapter, RL with a length penalty), sr and pdr (the reasoner under Sequential Refinement / Parallel-Distill-"
        "Refine, arXiv 2510.01123), pdr_rl (PDR answered by stage `rl_operator`'s adapter, RL-trained through the operator).",
        factory=lambda: list(SYSTEMS),
    )
    export_vllm_check: bool = doc("Stage `export`: check that vLLM loads and runs each merged model.", True)
    quick: dict[str, Any] = doc(
        "Overrides applied by `--quick` (dotted key -> value, e.g. `pipeline.reasoner.sft.steps: 20`): a "
        "smoke-scale run for tests, written to `<name>-quick`.",
        factory=dict,
    )

    def __post_init__(self) -> None:
        if self.task == "generate" and not self.generate.model:
            raise ConfigError("key 'pipeline.generate.model' is required with pipeline.task: generate (the teacher's directory)")
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad:
            raise ConfigError(f"key 'pipeline.systems': unknown system {bad[0]!r} (choose from {', '.join(SYSTEMS)})")
        if "long_cot" not in self.systems:
            raise ConfigError("key 'pipeline.systems' must include long_cot: the report compares every system with it")


def quick_overrides(recipe_path: str | Path) -> list[str]:
    """What `--quick` adds to the command line: the recipe's `pipeline.quick` overrides, `run.name=<name>-quick`."""
    from longshort.config.loader import read_yaml

    raw = read_yaml(Path(recipe_path))
    quick = raw.get("pipeline", {}).get("quick", {}) if isinstance(raw.get("pipeline"), dict) else {}
    name = raw.get("run", {}).get("name", "run") if isinstance(raw.get("run"), dict) else "run"
    # JSON is YAML: each value keeps its type through the override parser.
    return [f"{k}={json.dumps(v)}" for k, v in quick.items()] + [f"run.name={name}-quick", "run.quick=true"]
