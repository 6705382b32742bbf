"""The learner: one base model, two trainable LoRA adapters (long, short), their frozen references, per-role AdamW.

Plain torch + peft, no Ray: `actors.LearnerWorker` hosts one per data-parallel rank. With
torch.distributed initialised, gradients are summed over ranks before clipping, so N workers sharing a
minibatch make the same update as one worker holding all of it (the loss is normalised by the global
token count, see loss.py).
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longshort.config.rl import RLConfig
from longshort.precision import resolve_dtype
from longshort.rl.loss import policy_loss, token_logprobs
from longshort.run.schedule import scheduler as lr_scheduler
from longshort.types import ROLES


@dataclass
class Sample:
    """One role's training sequence from one episode, with its advantage."""

    role: str
    input_ids: list[int]
    mask: list[int]  # 1 = this role's own completion token
    advantage: float
    minibatch: int = 0
    engine_logprobs: list[float] = field(default_factory=list)  # sampling logprobs (0 off-mask), for the gap metric
    temperatures: list[float | None] = field(default_factory=list)  # each token's sampling temperature (None: the role's)
    correct: bool = False  # the episode was graded correct: its trainable tokens enter the NLL term (rl.nll_coef)


def _ref_name(role: str) -> str:
    return f"{role}_ref"


class PolicyLearner:
    """Both role adapters on one base; `train` runs a step's PPO epochs for the roles given."""

    def __init__(
        self,
        base_path: str,
        init: dict[str, str | None],
        ref: dict[str, str | None],
        cfg: RLConfig,
        *,
        max_tokens: dict[str, int],
        temperatures: dict[str, float] | None = None,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        # PPO's ratio and KL are taken on the distribution the rollouts were sampled from: softmax(logits / T) with
        # each token's sampling temperature (`Sample.temperatures`; where unrecorded, the role's; greedy counts as 1),
        # as verl does; the sync probe stays on raw logits.
        self.temperature = {r: (t if t > 0 else 1.0) for r, t in (temperatures or {}).items()}
        torch.manual_seed(seed)  # a fresh adapter's A matrices: identical on every rank
        # `dtype` is the base weights' (model.dtype, `auto` resolved on this device); PEFT keeps every adapter in
        # float32 over a bf16 base, so the trained LoRA tensors and their AdamW state stay float32.
        self.dtype = resolve_dtype(dtype, self.device.type)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, self.dtype))
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=list(cfg.lora_targets))
        model: Any = None
        for role in ROLES:
            path = init.get(role)
            if model is None:
                model = (
                    PeftModel.from_pretrained(base, path, adapter_name=role, is_trainable=True)
                    if path
                    else get_peft_model(base, lora, adapter_name=role)
                )
            elif path:
                model.load_adapter(path, adapter_name=role, is_trainable=True)
            else:
                model.add_adapter(role, lora)
        # The KL anchor: the starting (SFT) adapter, frozen; a role that started fresh is anchored to the base.
        self.has_ref = {}
        for role in ROLES:
            if ref.get(role):
                model.load_adapter(ref[role], adapter_name=_ref_name(role), is_trainable=False)
            self.has_ref[role] = bool(ref.get(role))
        self.model = model.to(self.device)
        self.model.eval()  # no dropout: learner and engine logprobs must agree
        if cfg.gradient_checkpointing:
            # HF recomputes layers only in train mode, so the training forward runs in train mode: every dropout is
            # zeroed first (an SFT adapter may bring lora_dropout) to keep it equal to the eval-mode logprobs.
            _no_dropout(self.model)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        self.params = {role: self._adapter_params(role) for role in ROLES}
        total = max(1, cfg.steps * cfg.ppo_epochs * cfg.minibatches)
        self.optim = {r: torch.optim.AdamW(self.params[r], lr=cfg.lr, weight_decay=cfg.weight_decay) for r in ROLES}
        self.sched = {r: lr_scheduler(self.optim[r], total, cfg.warmup_steps, cfg.lr_schedule) for r in ROLES}

    # -- parameters -----------------------------------------------------------------------------
    def _adapter_params(self, role: str) -> list[torch.nn.Parameter]:
        """The role's LoRA tensors (names end in `.<role>.weight`), in a fixed order on every rank."""
        tag = f".{role}."
        params = [p for n, p in self.model.named_parameters() if tag in n and "lora_" in n]
        if not params:
            raise RuntimeError(f"no LoRA parameters found for adapter {role!r}")
        for p in params:
            p.requires_grad_(True)
        return params

    def _activate(self, name: str | None, trainable: bool) -> Any:
        """Route the forward through adapter `name` (None = the bare base); return a context manager."""
        import contextlib

        if name is None:
            return self.model.disable_adapter()
        self.model.base_model.set_adapter(name, inference_mode=not trainable)
        if trainable:  # set_adapter toggles requires_grad per layer; keep exactly this role's tensors trainable
            for p in self.params[name]:
                p.requires_grad_(True)
        return contextlib.nullcontext()

    # -- forward --------------------------------------------------------------------------------
    def _batch(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(len(s.input_ids) for s in samples)
        ids = torch.zeros(len(samples), n, dtype=torch.long)
        att = torch.zeros(len(samples), n, dtype=torch.long)
        mask = torch.zeros(len(samples), n, dtype=torch.float32)
        for i, s in enumerate(samples):
            k = len(s.input_ids)
            ids[i, :k] = torch.tensor(s.input_ids)
            att[i, :k] = 1
            mask[i, :k] = torch.tensor(s.mask, dtype=torch.float32)
        return ids.to(self.device), att.to(self.device), mask.to(self.device)

    def _forward(self, ids: torch.Tensor, att: torch.Tensor, with_entropy: bool,
                 temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-position logprob of ids[:, 1:] (and entropy) under softmax(logits / T), shape [B, T-1]; T is one number
        or a [B, T] tensor holding each token's temperature (the logits that predict token t are divided by t's)."""
        logits = self.model(input_ids=ids, attention_mask=att).logits[:, :-1]
        if isinstance(temperature, torch.Tensor):
            logits = logits / temperature[:, 1:, None]
        elif temperature != 1.0:
            logits = logits / temperature
        return token_logprobs(logits, ids[:, 1:], with_entropy)

    def token_temperatures(self, role: str, sample: Sample) -> list[float]:
        """The temperature each token of `sample` was sampled at: its recorded one, else the role's; greedy = 1."""
        fallback = self.temperature.get(role, 1.0)
        temps = sample.temperatures or [None] * len(sample.input_ids)
        return [fallback if t is None else (t if t > 0 else 1.0) for t in temps]

    def _temperature_tensor(self, rows: list[list[float]], n: int) -> torch.Tensor:
        out = torch.ones(len(rows), n)  # padding positions at 1: never a division by 0
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r[:n])
        return out.to(self.device)

    def _micro(self, samples: list[Sample]) -> list[list[Sample]]:
        k = self.cfg.micro_batch_size
        return [samples[i : i + k] for i in range(0, len(samples), k)]

    @torch.no_grad()
    def logprobs(self, adapter: str | None, sequences: list[list[int]],
                 temperature: float | list[list[float]] = 1.0) -> list[list[float]]:
        """Logprob of every token (position 0 gets 0.0) under adapter `adapter` (a role, `<role>_ref`, or None), at
        one temperature or at each token's own (one list per sequence, aligned with it)."""
        out: list[list[float]] = []
        samples = [Sample(role="", input_ids=s, mask=[0] * len(s), advantage=0.0) for s in sequences]
        for k, mb in enumerate(self._micro(samples)):
            ids, att, _ = self._batch(mb)
            temp: float | torch.Tensor = temperature  # type: ignore[assignment]
            if isinstance(temperature, list):
                at = k * self.cfg.micro_batch_size
                temp = self._temperature_tensor(temperature[at : at + len(mb)], ids.shape[1])
            with self._activate(adapter, trainable=False):
                lp, _ = self._forward(ids, att, with_entropy=False, temperature=temp)
            for i, s in enumerate(mb):
                out.append([0.0] + lp[i, : len(s.input_ids) - 1].tolist())
        return out

    def ref_adapter(self, role: str) -> str | None:
        return _ref_name(role) if self.has_ref[role] else None

    # -- the update -----------------------------------------------------------------------------
    def train(self, role: str, samples: list[Sample], normalisers: list[float],
              nll_normalisers: list[float] | None = None) -> dict[str, float]:
        """PPO epochs over this rank's `samples` of `role`; `normalisers[m]` = global denominator of minibatch m,
        `nll_normalisers[m]` its global count of trainable tokens of correct episodes (the NLL term's mean)."""
        cfg = self.cfg
        temps = [self.token_temperatures(role, s) for s in samples]
        seqs = [s.input_ids for s in samples]
        old = self._stack(self.logprobs(role, seqs, temps))
        ref = self._stack(self.logprobs(self.ref_adapter(role), seqs, temps))
        untempered = all(t == 1.0 for row in temps for t in row)
        raw = old if untempered else self._stack(self.logprobs(role, seqs))  # the engine reports raw logprobs
        lr = self.sched[role].get_last_lr()[0]  # the rate of this step's first update: what the step logs
        sums = {k: 0.0 for k in ("pg", "kl", "entropy", "clipped", "ratio", "tokens", "gap", "gap_tokens", "gap_max",
                                 "nll", "nll_tokens")}
        for s, o in zip(samples, raw):  # engine vs learner logprob on the trained tokens (train/infer mismatch)
            if len(s.engine_logprobs) == len(s.input_ids):
                for lp_e, lp_l, m in zip(s.engine_logprobs, o, s.mask):
                    if m:
                        d = abs(lp_e - float(lp_l))
                        sums["gap"] += d
                        sums["gap_max"] = max(sums["gap_max"], d)
                        sums["gap_tokens"] += 1
        grad_norms = []
        for _ in range(cfg.ppo_epochs):
            for m, norm in enumerate(normalisers):
                mine = [(i, s) for i, s in enumerate(samples) if s.minibatch == m]
                self.optim[role].zero_grad(set_to_none=False)
                for chunk in [mine[i : i + cfg.micro_batch_size] for i in range(0, len(mine), cfg.micro_batch_size)]:
                    idx = [i for i, _ in chunk]
                    mb = [s for _, s in chunk]
                    ids, att, mask = self._batch(mb)
                    n = ids.shape[1] - 1
                    old_t = torch.stack([self._pad(old[i], n + 1)[1:] for i in idx]).to(self.device)
                    ref_t = torch.stack([self._pad(ref[i], n + 1)[1:] for i in idx]).to(self.device)
                    adv = torch.tensor([s.advantage for s in mb], dtype=torch.float32, device=self.device)[:, None]
                    temp = 1.0 if untempered else self._temperature_tensor([temps[i] for i in idx], n + 1)
                    correct = torch.tensor([float(s.correct) for s in mb], device=self.device)[:, None]
                    with self._activate(role, trainable=True):
                        self.model.train(cfg.gradient_checkpointing)
                        try:
                            lp, ent = self._forward(ids, att, with_entropy=True, temperature=temp)
                        finally:
                            self.model.eval()
                    terms = policy_loss(
                        lp, old_t, ref_t, adv, mask[:, 1:], ent if cfg.entropy_coef else ent.detach(),
                        clip_low=cfg.clip_low, clip_high=cfg.clip_high, kl_coef=cfg.kl_coef,
                        entropy_coef=cfg.entropy_coef, normaliser=max(norm, 1e-8), kind=cfg.loss,
                        nll_coef=cfg.nll_coef, nll_mask=mask[:, 1:] * correct,
                        nll_normaliser=nll_normalisers[m] if nll_normalisers else 0.0,
                    )  # fmt: skip
                    terms.loss.backward()
                    for k in ("pg", "kl", "entropy", "clipped", "ratio", "tokens", "nll", "nll_tokens"):
                        sums[k] += getattr(terms, k)
                grad_norms.append(self._step(role))
        sums["grad_norm"] = max(grad_norms) if grad_norms else 0.0
        sums["lr"] = lr
        return sums

    def _step(self, role: str) -> float:
        """Sum gradients over ranks, clip, step. Returns the pre-clip global grad norm (same on every rank)."""
        import torch.distributed as dist

        params = self.params[role]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                k = p.numel()
                p.grad.copy_(flat[offset : offset + k].view_as(p))
                offset += k
        if self.cfg.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])))
        self.optim[role].step()
        self.sched[role].step()
        return norm

    @staticmethod
    def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, n - x.shape[0])) if x.shape[0] < n else x[:n]

    @staticmethod
    def _stack(rows: list[list[float]]) -> list[torch.Tensor]:
        return [torch.tensor(r, dtype=torch.float32) for r in rows]

    # -- export, state --------------------------------------------------------------------------
    def export_adapter(self, role: str) -> dict[str, bytes]:
        """The role's PEFT adapter files (adapter_config.json + safetensors): LoRA tensors only, never the base.

        Written directly rather than by `save_pretrained`, which spent ~60% of the sync writing a README model
        card (profiled in docs/benchmarks.md, "Weight sync")."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save

        tensors = get_peft_model_state_dict(self.model, adapter_name=role)
        files = {"adapter_model.safetensors": save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})}
        config = copy.deepcopy(self.model.peft_config[role])
        config.inference_mode = True
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)  # JSON exactly as PEFT writes it (sets as lists, enums as names)
            files["adapter_config.json"] = (Path(tmp) / "adapter_config.json").read_bytes()
        return files

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint needs from the learner (adapters as files, optimizers/schedulers as bytes)."""
        buf = io.BytesIO()
        torch.save(
            {
                "optim": {r: self.optim[r].state_dict() for r in ROLES},
                "sched": {r: self.sched[r].state_dict() for r in ROLES},
                "torch_rng": torch.get_rng_state(),
            },
            buf,
        )
        return {"adapters": {r: self.export_adapter(r) for r in ROLES}, "trainer": buf.getvalue()}

    def load_trainer_state(self, data: bytes) -> None:
        """Restore optimizers, schedulers and the torch RNG (weights_only: no pickle from files)."""
        st = torch.load(io.BytesIO(data), weights_only=True)
        for r in ROLES:
            self.optim[r].load_state_dict(st["optim"][r])
            self.sched[r].load_state_dict(st["sched"][r])
        torch.set_rng_state(st["torch_rng"])


def _no_dropout(model: Any) -> None:
    """Zero every dropout rate of `model` (dropout modules and attention-dropout attributes): train mode = eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def write_adapter(files: dict[str, bytes], out: str | os.PathLike) -> Path:
    """Write exported adapter files into folder `out` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out
