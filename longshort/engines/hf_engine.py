"""The transformers+peft engine: batched left-padded generation with a KV cache, roles as named PEFT adapters.

The reference engine (and the fallback where vLLM is unavailable): same interface and logprob semantics as
the vLLM engine, plainly written, slower. Requests are grouped by role (one active adapter per forward pass),
each role's rows are generated `engine.batch_size` at a time; finished rows leave the batch and the cache.
`engine.lora_mode: merged`: each role runs on its own copy of the base with its LoRA merged in (no PEFT), updated
in place by `set_adapter`; role None runs on the untouched base.
"""

from __future__ import annotations

import copy
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from longshort.config.core import EngineConfig
from longshort.engines.base import (
    Completion,
    GenRequest,
    SamplingParams,
    adapter_config,
    completion_text,
    resolve_lora_mode,
)
from longshort.errors import UserError
from longshort.models import load_tokenizer
from longshort.precision import resolve_dtype


@dataclass
class _Row:
    """One sequence being generated: the `k`-th of request `req`'s n samples."""

    req: int
    k: int
    prompt: list[int]
    params: SamplingParams
    seed: int
    limit: int  # max new tokens (max_tokens, capped by the engine's max_model_len)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_hit: str | None = None
    finish: str | None = None


class HFEngine:
    """`Engine` on a transformers model with the roles' LoRA adapters loaded as named PEFT adapters."""

    def __init__(self, model_path: str, cfg: EngineConfig, adapters: dict[str, str] | None = None, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        self.cfg, self.model_path = cfg, str(model_path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.lora_mode = resolve_lora_mode(cfg.lora_mode, self.device.type)
        self.dtype = resolve_dtype(cfg.dtype, self.device.type)  # `auto`: bf16 on CUDA, measured on CPU
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, self.dtype)).to(self.device).eval()
        self.tokenizer = load_tokenizer(model_path)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.pad_id = self.tokenizer.pad_token_id
        self._rng = random.Random(seed)  # seeds of requests that bring none
        self._names: dict[str, str] = {}  # role -> name of its PEFT adapter inside the model
        self._paths: dict[str, str] = {}  # role -> the directory it was loaded from
        self._merged: dict = {}  # merged mode: role -> its own model (base + its LoRA)
        self._versions: dict[str, int] = {}  # role -> version of its served adapter (1 = the first one)
        for role, path in (adapters or {}).items():
            self.set_adapter(role, path)

    # -- adapters ---------------------------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, str]:
        """The adapter serving each role now (role -> PEFT directory); a role absent here runs on the base."""
        return dict(self._paths)

    @property
    def versions(self) -> dict[str, int]:
        """The version of each role's served adapter: 1 for the first, +1 per `set_adapter` (as the vLLM engine's;
        here a push replaces the weights in place, so no old version is ever served)."""
        return dict(self._versions)

    def set_adapter(self, role: str, path: str) -> None:
        if self.lora_mode == "merged":
            return self._set_merged(role, path)
        from peft import PeftModel

        adapter_config(path)
        version = self._versions.get(role, 0) + 1
        name = f"{role}-v{version}"  # a fresh name, so the old adapter can be deleted once the new one is in
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
        self.model.set_adapter(name)
        old = self._names.get(role)
        self._names[role] = name
        self._paths[role] = str(path)
        self._versions[role] = version
        if old is not None:
            self.model.delete_adapter(old)
        self.model.eval()

    def _set_merged(self, role: str, path: str) -> None:
        """Merge `path` into `role`'s model, in place (its first adapter makes the copy of the base)."""
        import torch

        from longshort.engines.merge import checked, merged_weights

        checked(self.model_path, path)  # a refused adapter stops here, with the served weights untouched
        model = self._merged.get(role)
        if model is None:
            model = copy.deepcopy(self.model)
            head, embed = model.get_output_embeddings(), model.get_input_embeddings()
            if head.weight is embed.weight:  # a LoRA on a tied head must not move the input embedding (merge.py)
                head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
                model.config.tie_word_embeddings = False
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, w in merged_weights(self.model_path, path):
                if name not in params:
                    raise UserError(f"{self.model_path}: weight {name} of the base file is not a parameter of the loaded model")
                params[name].copy_(w)
        self._merged[role] = model
        self._paths[role] = str(path)
        self._versions[role] = self._versions.get(role, 0) + 1

    @contextmanager
    def _role(self, role: str | None):
        """Run the block on `role`'s adapter, or on the bare base when role is None; yields the model to call."""
        if self.lora_mode == "merged":
            if role is not None and role not in self._merged:
                raise UserError(f"engine has no adapter for role {role!r} (known: {sorted(self._merged)}); use role None for the base")
            yield self.model if role is None else self._merged[role]
            return
        if role is None:
            with self.model.disable_adapter() if self._names else nullcontext():
                yield self.model
            return
        if role not in self._names:
            raise UserError(f"engine has no adapter for role {role!r} (known: {sorted(self._names)}); use role None for the base")
        self.model.set_adapter(self._names[role])
        yield self.model

    # -- generation -------------------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest]) -> list[list[Completion]]:
        rows: dict[str | None, list[_Row]] = {}
        for i, r in enumerate(requests):
            base_seed = r.params.seed if r.params.seed is not None else self._rng.randrange(2**31)
            room = self.cfg.max_model_len - len(r.prompt_ids)
            if room <= 0:
                raise UserError(f"prompt of {len(r.prompt_ids)} tokens exceeds engine.max_model_len={self.cfg.max_model_len}")
            for k in range(r.params.n):  # the k-th sample uses seed + k, as vLLM does
                rows.setdefault(r.role, []).append(
                    _Row(i, k, list(r.prompt_ids), r.params, base_seed + k, min(r.params.max_tokens, room))
                )
        out: list[list[Completion | None]] = [[None] * r.params.n for r in requests]
        for role, group in rows.items():
            with self._role(role) as model:
                for at in range(0, len(group), self.cfg.batch_size):
                    self._generate_batch(model, group[at : at + self.cfg.batch_size])
            for row in group:
                out[row.req][row.k] = self._completion(row)
        return out  # type: ignore[return-value]

    def _generate_batch(self, model, rows: list[_Row]) -> None:
        import torch

        dev = self.device
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token is at the last column
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [torch.Generator(dev).manual_seed(r.seed) for r in rows]
        active = list(range(len(rows)))  # indices (into rows) of the rows still generating, in batch order
        cache = None
        with torch.inference_mode():
            while active:
                out = model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)  # raw distribution (temperature 1): the reported logprobs
                tokens = self._sample(logits, [rows[i] for i in active], [gens[i] for i in active])
                lps = logp.gather(1, tokens[:, None])[:, 0].tolist()
                keep = []
                for j, (i, t, lp) in enumerate(zip(active, tokens.tolist(), lps)):
                    if not self._step(rows[i], t, lp):
                        keep.append(j)
                if len(keep) < len(active):  # drop finished rows from the batch and the cache
                    if not keep:
                        break
                    sel = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(sel)
                    tokens, mask, pos = tokens[sel], mask[sel], pos[sel]
                    active = [active[j] for j in keep]
                ids = tokens[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos[:, -1:] + 1

    @staticmethod
    def _sample(logits, rows: list[_Row], gens: list):
        """Next token of each row: argmax at temperature 0, else temperature + top-p with the row's generator."""
        import torch

        tokens = logits.argmax(dim=-1)
        for j, (r, g) in enumerate(zip(rows, gens)):
            p = r.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[j] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (the top token always stays)
                drop = sorted_p.cumsum(0) - sorted_p >= p.top_p
                probs = probs.scatter(0, order[drop], 0.0)
            tokens[j] = torch.multinomial(probs, 1, generator=g)[0]
        return tokens

    def _step(self, row: _Row, token: int, logprob: float) -> bool:
        """Append one token to `row`; True when the row is finished (eos, stop string, or length)."""
        row.ids.append(token)
        row.logprobs.append(logprob)
        if token in self.eos_ids and not row.params.ignore_eos:
            row.finish = "stop"
        elif row.params.stop and (hit := self._stop_in_tail(row.ids, row.params.stop)):
            row.finish, row.stop_hit = "stop", hit
        elif len(row.ids) >= row.limit:
            row.finish = "length"
        return row.finish is not None

    def _stop_in_tail(self, ids: list[int], stops: list[str]) -> str | None:
        """The first stop string (in list order) present in the text of the newest tokens."""
        # every token decodes to >= 1 byte, so a stop string that ends in the newest token lies in this window
        window = max(len(s.encode()) for s in stops) + 1
        tail = self.tokenizer.decode(ids[-window:], skip_special_tokens=True)
        return next((s for s in stops if s in tail), None)

    def _completion(self, row: _Row) -> Completion:
        text = completion_text(self.tokenizer, row.ids, row.stop_hit)
        return Completion(row.ids, text, row.logprobs, row.finish or "length")

    # -- scoring ----------------------------------------------------------------------------------------------

    def score(self, sequences: list[list[int]], roles: list[str | None], start: list[int]) -> list[list[float]]:
        import torch

        if any(s < 1 for s in start):
            raise ValueError("score: start must be >= 1 (the first token has no prefix to condition on)")
        result: list[list[float]] = [[] for _ in sequences]
        by_role: dict[str | None, list[int]] = {}
        for i, r in enumerate(roles):
            by_role.setdefault(r, []).append(i)
        for role, idx in by_role.items():
            with self._role(role) as model, torch.inference_mode():
                for at in range(0, len(idx), self.cfg.batch_size):
                    chunk = idx[at : at + self.cfg.batch_size]
                    width = max(len(sequences[i]) for i in chunk)
                    ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for j, i in enumerate(chunk):  # right padding: positions start at 0 for every row
                        ids[j, : len(sequences[i])] = torch.tensor(sequences[i])
                        mask[j, : len(sequences[i])] = 1
                    logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                    for j, i in enumerate(chunk):  # one row at a time: a full-vocab float32 copy per row only
                        seq, s = sequences[i], start[i]
                        lp = torch.log_softmax(logits[j, s - 1 : len(seq) - 1].float(), dim=-1)
                        target = torch.tensor(seq[s:], device=self.device)
                        result[i] = lp.gather(1, target[:, None])[:, 0].tolist()
        return result

    def close(self) -> None:
        import gc

        self.model, self._merged = None, {}
        gc.collect()
