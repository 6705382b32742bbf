"""LoRA shape, one type for every stage that makes an adapter (`sft.lora`, `rl.lora`; Hu et al. 2021). SFT adds the
LoRA dropout; RL has none, since the engine samples without dropout and the learner's logprobs must match it."""

from __future__ import annotations

from dataclasses import dataclass

from longshort.config.loader import doc
from longshort.errors import ConfigError


@dataclass
class LoRAConfig:
    r: int = doc("LoRA rank r (Hu et al. 2021); Long⊗Short trains one adapter per role on a shared base.", 8)
    alpha: int = doc("LoRA alpha: the update is scaled by alpha / r.", 16)
    target_modules: list[str] = doc(
        "Module names that get adapters (Qwen2/Llama names); vLLM serves adapters on these.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )

    def __post_init__(self) -> None:
        # Messages start with the bare field name: the loader turns it into the dotted key of the section this
        # shape sits in ('sft.lora.r', 'rl.lora.r'), so one type serves both without a table of prefixes.
        if self.r < 1:
            raise ConfigError(f"r must be >= 1, got {self.r}")
        if self.alpha < 1:
            raise ConfigError(f"alpha must be >= 1, got {self.alpha}")
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one module")


@dataclass
class SFTLoRAConfig(LoRAConfig):
    dropout: float = doc("Dropout on the LoRA input (0 = none; uses the torch RNG, restored on resume).", 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
