"""Cold-start synthesis of per-role SFT data from scored thoughts (`longshort coldstart`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from longshort.config.loader import doc
from longshort.errors import ConfigError


@dataclass
class ColdstartConfig:
    thoughts: str | None = doc("Scored thoughts of `longshort analyze`; null = `<run_dir>/thoughts.jsonl`.", None, path=True)
    select: Literal["threshold", "topk"] = doc(
        "Which thoughts are important (long turns, verbatim): `threshold` (score >= `threshold`) or `topk` (the "
        "`top_k` best of each trace).",
        "threshold",
    )
    score_key: Literal["M", "ci_low"] = doc("Score used for selection: the estimate M, or the conservative lower end of its Hoeffding interval.", "M")
    threshold: float = doc("select=threshold: a thought is important when its score >= this (M is in [0, 1]).", 0.5)
    top_k: int = doc("select=topk: important thoughts per trace.", 2)
    keep_first: bool = doc("The first thought is always important, so every transcript opens with a long turn (as the protocol does).", True)
    rewriter: Literal["rule", "llm"] = doc(
        "How runs of unimportant thoughts become short turns: `rule` keeps only computations that produce a new "
        "result (else the latest result); `llm` prompts `rewriter_model` for a concise restatement that keeps every "
        "number and result (its thinking part stripped), validated, with the rule rewrite as fallback.",
        "rule",
    )
    rewriter_model: str | None = doc(
        "llm rewriter: a local instruct model dir (a separate model, not the reasoner); null = `analysis.model`, else "
        "`model.base`. Also the tokenizer for the statistics.",
        None,
        path=True,
    )
    rewriter_max_tokens: int = doc("llm rewriter: token cap of one compressed run (a rewrite cut at the cap falls back to the rule).", 128)
    max_fallback: float = doc(
        "llm rewriter: the stage stops with an error when more than this share of its rewrites fall back to the rule "
        "rewriter (a rewriter that mostly fails would silently be the rule one); 1.0 = never stop.",
        0.1,
    )
    max_turns: int | None = doc(
        "Most turns per transcript (long + short); later runs are folded into the final short turn. null = `protocol.max_turns`.", None
    )

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"key 'coldstart.top_k' must be >= 1, got {self.top_k}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"key 'coldstart.threshold' must be in [0, 1], got {self.threshold}")
        if not 0 <= self.max_fallback <= 1:
            raise ConfigError(f"key 'coldstart.max_fallback' must be in [0, 1], got {self.max_fallback}")
        if self.rewriter_max_tokens < 1:
            raise ConfigError(f"key 'coldstart.rewriter_max_tokens' must be >= 1, got {self.rewriter_max_tokens}")
        if self.max_turns is not None and self.max_turns < 2:
            raise ConfigError(f"key 'coldstart.max_turns' must be >= 2 (a long turn and the final short turn), got {self.max_turns}")
