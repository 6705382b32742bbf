"""Supervised fine-tuning of one role (issue: cold-start SFT).

One run trains one role (`long` or `short`) on transcripts: loss only on that role's own turns, the
partner's turns and the prompt are context. LoRA (PEFT) or full-parameter. See docs/sft.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from longshort.config.loader import doc
from longshort.config.lora import SFTLoRAConfig
from longshort.errors import ConfigError


@dataclass
class SFTConfig:
    role: Literal["long", "short"] = doc(
        "Role trained by this run: its own turns carry the loss, its system prompt is `roles.<role>.system_prompt`.", "long"
    )
    mode: Literal["lora", "full"] = doc(
        "`lora`: train a PEFT LoRA adapter on a frozen base; `full`: all parameters (the paper's cold start).", "lora"
    )
    data: str | None = doc(
        "Transcripts or traces (see data/schemas/transcript.md): JSONL, Parquet or a `datasets` folder, columns mapped by "
        "`data.fields`, TRL `messages` rows too; null = `data.train`.",
        None,
        path=True,
    )
    steps: int = doc("Optimizer steps; the data loops over epochs (reshuffled per epoch from the seed) as needed.", 100)
    batch_size: int = doc("Sequences per micro-batch per device.", 4)
    grad_accum: int = doc("Micro-batches per optimizer step (global batch = batch_size x grad_accum x devices).", 1)
    lr: float = doc("Peak learning rate (AdamW).", 2e-4)
    weight_decay: float = doc("AdamW decoupled weight decay.", 0.0)
    warmup_steps: int = doc("Linear warm-up steps from 0 to `lr`.", 0)
    scheduler: Literal["cosine", "linear", "constant"] = doc("Learning-rate decay after warm-up (to 0 at `steps`).", "cosine")
    max_grad_norm: float = doc("Clip the global gradient norm to this (0 = no clipping; the norm is logged anyway).", 1.0)
    max_length: int = doc("Longest training sequence in tokens; longer views are cut at the end (counted in the summary).", 1024)
    packing: bool = doc(
        "Pack several examples into one row of `max_length` tokens (position ids restart per example, "
        "attention stays inside each example).",
        False,
    )
    eval_fraction: float = doc("Share of examples held out for the eval loss (0 = no eval split).", 0.1)
    eval_every: int = doc("Compute the eval loss every N steps (and at the end).", 20)
    save_every: int = doc("Write a checkpoint every N steps (and at the end).", 20)
    keep_checkpoints: int = doc("Complete checkpoints kept (older ones are deleted; >= 1).", 2)
    bf16: bool | Literal["auto"] = doc(
        "bfloat16 autocast for forward/backward (weights and optimizer keep their dtype). Fast on GPUs and on CPUs "
        "with AMX; on CPUs without AMX it is slower than float32 (measured ~14x slower per step on the AMD EPYC CI "
        "machine). `auto`: on where `model.dtype: auto` would pick bfloat16 (CUDA, or a CPU measured faster in bf16).",
        False,
    )
    gradient_checkpointing: bool = doc(
        "Recompute each layer's activations in backward instead of keeping them (memory for ~30% more compute); "
        "works with LoRA (the input embeddings are made to require grad).",
        False,
    )
    lora: SFTLoRAConfig = doc("LoRA shape and dropout (mode: lora).", factory=SFTLoRAConfig)

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
            "max_length": self.max_length, "eval_every": self.eval_every, "save_every": self.save_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"key 'sft.{key}' must be >= 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"key 'sft.lr' must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"key 'sft.weight_decay' must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"key 'sft.max_grad_norm' must be >= 0, got {self.max_grad_norm}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ConfigError(f"key 'sft.warmup_steps' must be in [0, sft.steps), got {self.warmup_steps}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"key 'sft.eval_fraction' must be in [0, 1), got {self.eval_fraction}")
