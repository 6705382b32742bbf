"""The root recipe: every section a stage may read. A recipe file sets the sections it needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longshort.config.core import EngineConfig, ModelConfig, ProtocolConfig, RolesConfig, RunConfig
from longshort.config.analysis import AnalyzeConfig
from longshort.config.coldstart import ColdstartConfig
from longshort.config.data import DataConfig
from longshort.config.evaluation import EvalConfig
from longshort.config.pipeline import PipelineConfig
from longshort.config.rl import RLConfig
from longshort.config.sft import SFTConfig
from longshort.config.synthetic import SyntheticConfig
from longshort.config.loader import apply_overrides, build, doc, read_yaml


@dataclass
class Recipe:
    run: RunConfig = doc("Run directory, seed, resume.", factory=RunConfig)
    model: ModelConfig = doc("Base model.", factory=ModelConfig)
    roles: RolesConfig = doc("The long and short roles: prompts, adapters, sampling.", factory=RolesConfig)
    engine: EngineConfig = doc("Inference engine.", factory=EngineConfig)
    protocol: ProtocolConfig = doc("Turn protocol for inference, evaluation and RL rollouts.", factory=ProtocolConfig)
    data: DataConfig = doc("Input data.", factory=DataConfig)
    synthetic: SyntheticConfig = doc("The synthetic long-CoT task.", factory=SyntheticConfig)
    analysis: AnalyzeConfig = doc("Thought analysis (`longshort analyze`).", factory=AnalyzeConfig)
    coldstart: ColdstartConfig = doc("Cold-start synthesis (`longshort coldstart`).", factory=ColdstartConfig)
    sft: SFTConfig = doc("Supervised fine-tuning of one role (`longshort sft`).", factory=SFTConfig)
    rl: RLConfig = doc("Multi-turn RL of both roles (`longshort rl`).", factory=RLConfig)
    evaluation: EvalConfig = doc("Evaluation (`longshort eval`).", factory=EvalConfig)
    pipeline: PipelineConfig = doc("The whole pipeline (`longshort pipeline`).", factory=PipelineConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def load_recipe(path: str | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or none: all defaults), apply `key=value` overrides, validate."""
    data = read_yaml(Path(path), schema=Recipe) if path else {}  # a recipe's paths: next to it, then the working dir
    where = str(path) if path else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        where += " + command line"
    return build(Recipe, data, where)
