"""The learner: one base model, two trainable LoRA adapters (long, short), their frozen references, per-role AdamW.

Plain torch + peft, no Ray: `actors.LearnerWorker` hosts one per data-parallel rank. With
torch.distributed initialised, gradients are summed over ranks before clipping, so N workers sharing a
minibatch make the same update as one worker holding all of it (the loss is normalised by the global
token count, see loss.py).
"""

from __future__ import annotations

import copy
import io
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from longshort.config.rl import RLConfig
from longshort.precision import resolve_dtype
from longshort.rl.loss import policy_loss, token_logprobs
from longshort.run.schedule import scheduler as lr_scheduler
from longshort.types import ROLES, TrainSequence


@dataclass
class LearnerStats:
    """One role's statistics of one step on one rank: sums over its trainable tokens (per-token means divide by
    `tokens`), and maxima. `merge` combines ranks; `metrics` is what the step logs."""

    pg: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clipped: float = 0.0  # tokens whose ratio left the trust region
    ratio: float = 0.0
    tokens: float = 0.0  # summed over epochs
    nll: float = 0.0
    nll_tokens: float = 0.0
    gap: float = 0.0  # Σ |engine − learner| logprob of the sampled tokens, the learner under the policy that sampled
    gap_tokens: float = 0.0
    gap_max: float = 0.0
    grad_norm: float = 0.0  # the step's largest pre-clip global norm: the same on every rank after the all-reduce
    lr: float = 0.0  # the rate of the step's first update: the same on every rank
    positions: float = 0.0  # positions the training forwards read, row filler included
    padding: float = 0.0  # of those, filler

    MAXED: ClassVar[tuple[str, ...]] = ("gap_max", "grad_norm", "lr")

    def merge(self, other: LearnerStats) -> LearnerStats:
        return LearnerStats(**{f.name: (max if f.name in self.MAXED else sum)((getattr(self, f.name), getattr(other, f.name)))
                               for f in fields(self)})

    def add_terms(self, terms: Any) -> None:
        for k in ("pg", "kl", "entropy", "clipped", "ratio", "tokens", "nll", "nll_tokens"):
            setattr(self, k, getattr(self, k) + getattr(terms, k))

    def add_gap(self, seqs: list[TrainSequence], raw: list[torch.Tensor]) -> None:
        """Engine vs learner logprob on the trained tokens (train/infer mismatch) of sequences with sampling logprobs."""
        for s, lp in zip(seqs, raw):
            if len(s.old_logprobs) != len(s.input_ids):
                continue
            m = torch.tensor(s.mask, dtype=torch.bool)
            d = (torch.tensor(s.old_logprobs) - lp)[m].abs()
            if d.numel():
                self.gap += float(d.sum())
                self.gap_tokens += d.numel()
                self.gap_max = max(self.gap_max, float(d.max()))

    def diverged(self) -> list[str]:
        return [f"{k} {getattr(self, k)}" for k in ("pg", "grad_norm") if not math.isfinite(getattr(self, k))]

    def metrics(self, role: str) -> dict[str, float | None]:
        tok = max(self.tokens, 1.0)
        m: dict[str, float | None] = {
            f"{role}/pg_loss": self.pg / tok, f"{role}/kl": self.kl / tok, f"{role}/entropy": self.entropy / tok,
            f"{role}/clip_frac": self.clipped / tok, f"{role}/ratio": self.ratio / tok, f"{role}/grad_norm": self.grad_norm,
            f"{role}/lr": self.lr, f"{role}/logprob_gap": self.gap / self.gap_tokens if self.gap_tokens else None,
            f"{role}/logprob_gap_max": self.gap_max,
            f"{role}/padding": self.padding / self.positions if self.positions else None,
        }  # fmt: skip
        if self.nll_tokens:  # rl.nll_coef > 0 and some episode was correct
            m[f"{role}/nll"] = self.nll / self.nll_tokens
        return m


@dataclass
class _Pack:
    """Sequences laid end to end in rows: what one forward reads (`PolicyLearner._pack`)."""

    ids: torch.Tensor  # [rows, width]
    pos: torch.Tensor  # position ids, restarting at 0 at each sequence (and at a row's filler)
    start: torch.Tensor  # True at a sequence's first token
    values: dict[str, torch.Tensor]  # per-token values aligned with ids
    where: list[tuple[int, int, int, int]]  # (sequence index, row, offset, length)
    padding: int  # filler positions


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
        # each token's sampling temperature (`TrainSequence.temperatures`; where unrecorded, the role's; greedy counts as 1),
        # as verl does; the sync probe stays on raw logits.
        self.temperature = {r: (t if t > 0 else 1.0) for r, t in (temperatures or {}).items()}
        torch.manual_seed(seed)  # a fresh adapter's A matrices: identical on every rank
        # `dtype` is the base weights' (model.dtype, `auto` resolved on this device); PEFT keeps every adapter in
        # float32 over a bf16 base, so the trained LoRA tensors and their AdamW state stay float32.
        self.dtype = resolve_dtype(dtype, self.device.type)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, self.dtype))
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0, target_modules=list(cfg.lora.target_modules))
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
    def _rows(self, seqs: list[TrainSequence]) -> list[list[int]]:
        """Which sequences each forward row holds. Packed (rl.pack_sequences): first-fit decreasing into rows as long
        as the longest sequence, so a row's attention costs no more than one padded sequence's; else one per row."""
        if not self.cfg.pack_sequences:
            return [[i] for i in range(len(seqs))]
        cap = max(len(s.input_ids) for s in seqs)
        rows: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i].input_ids)):
            n = len(seqs[i].input_ids)
            at = next((r for r, free in enumerate(room) if free >= n), None)
            if at is None:
                rows.append([i])
                room.append(cap - n)
            else:
                rows[at].append(i)
                room[at] -= n
        return rows

    def _pack(self, seqs: list[TrainSequence], rows: list[list[int]], per_token: dict[str, list[Any]]) -> _Pack:
        """Rows of `seqs` laid end to end: ids, position ids restarting at each sequence (HF then masks attention
        block-diagonally: a token sees only its own sequence), and each per-token list of `per_token` aligned with
        them. Row tails are filler that attends only to itself and carries no loss."""
        width = max(sum(len(seqs[i].input_ids) for i in row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        pos = torch.zeros(len(rows), width, dtype=torch.long)
        start = torch.zeros(len(rows), width, dtype=torch.bool)  # a sequence's first token: predicted by no one
        # filler carries zeros, and temperature 1: never a division by 0
        values = {k: (torch.ones if k == "temperature" else torch.zeros)(len(rows), width) for k in per_token}
        where = []
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(seqs[i].input_ids)
                ids[r, at : at + n] = torch.tensor(seqs[i].input_ids)
                pos[r, at : at + n] = torch.arange(n)
                start[r, at] = True
                for k, v in per_token.items():
                    values[k][r, at : at + n] = torch.as_tensor(v[i], dtype=torch.float32)
                where.append((i, r, at, n))
                at += n
            pos[r, at:] = torch.arange(width - at)  # filler: a sequence of its own
            if at < width:
                start[r, at] = True
        dev = self.device
        return _Pack(ids.to(dev), pos.to(dev), start.to(dev), {k: v.to(dev) for k, v in values.items()}, where,
                     padding=len(rows) * width - sum(n for *_, n in where))

    def _forward(self, pack: _Pack, with_entropy: bool, tempered: bool,
                 want_raw: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per position t ≥ 1 the logprob of token t under softmax(logits / T_t) (T_t: the token's sampling
        temperature, `pack.values['temperature']`, when `tempered`), the entropy (if asked) and the raw-logit
        logprob (no gradient: what the engine reports; without `want_raw` the tempered one stands in), each
        [rows, width − 1]."""
        logits = self.model(input_ids=pack.ids, position_ids=pack.pos, use_cache=False).logits[:, :-1]
        targets = pack.ids[:, 1:]
        raw = None
        if tempered:
            if want_raw:  # a second vocab-wide softmax: only where the gap check reads it
                with torch.no_grad():
                    raw, _ = token_logprobs(logits, targets, False)
            logits = logits / pack.values["temperature"][:, 1:, None]
        lp, ent = token_logprobs(logits, targets, with_entropy)
        return lp, ent, lp.detach() if raw is None else raw

    def token_temperatures(self, role: str, seq: TrainSequence) -> list[float]:
        """The temperature each token of `seq` was sampled at: its recorded one, else the role's; greedy = 1."""
        fallback = self.temperature.get(role, 1.0)
        temps = seq.temperatures or [None] * len(seq.input_ids)
        return [fallback if t is None else (t if t > 0 else 1.0) for t in temps]

    def _chunks(self, seqs: list[TrainSequence], idx: list[int]) -> list[list[list[int]]]:
        """`idx`'s sequences as forward rows, `rl.micro_batch_size` rows per forward (the memory knob)."""
        rows = [[idx[j] for j in row] for row in self._rows([seqs[i] for i in idx])]
        k = self.cfg.micro_batch_size
        return [rows[i : i + k] for i in range(0, len(rows), k)]

    @torch.no_grad()
    def _score(self, adapter: str | None, seqs: list[TrainSequence], temps: list[list[float]] | None,
               files: dict[str, bytes] | None = None, want_raw: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per sequence, (tempered, raw) logprob of every token (position 0 gets 0) under `adapter` (a role,
        `<role>_ref`, or None: the bare base); with `files`, under those weights of the role's adapter instead."""
        tempered: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        raw: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        with self._weights(adapter, files):
            for chunk in self._chunks(seqs, list(range(len(seqs)))):
                pack = self._pack(seqs, chunk, {"temperature": temps} if temps else {})
                with self._activate(adapter, trainable=False):
                    lp, _, lp_raw = self._forward(pack, with_entropy=False, tempered=temps is not None, want_raw=want_raw)
                for w in pack.where:
                    tempered[w[0]], raw[w[0]] = _unpacked(lp, w), _unpacked(lp_raw, w)
        return tempered, raw

    def logprobs(self, adapter: str | None, sequences: list[list[int]],
                 temperature: float | list[list[float]] = 1.0) -> list[list[float]]:
        """Logprob of every token (position 0 gets 0.0) under adapter `adapter` (a role, `<role>_ref`, or None), at
        one temperature or at each token's own (one list per sequence, aligned with it)."""
        seqs = [TrainSequence(role="", input_ids=s, mask=[0] * len(s)) for s in sequences]
        if isinstance(temperature, list):
            temps: list[list[float]] | None = temperature
        else:
            temps = None if temperature == 1.0 else [[temperature] * len(s) for s in sequences]
        tempered, _ = self._score(adapter, seqs, temps)
        return [t.tolist() for t in tempered]

    def _weights(self, adapter: str | None, files: dict[str, bytes] | None) -> Any:
        """A context in which role `adapter` holds the LoRA tensors of `files` (the adapter that sampled an
        off-policy step's rollouts), restored on exit; without `files`, its own."""
        import contextlib

        if not files:
            return contextlib.nullcontext()
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        @contextlib.contextmanager
        def swapped() -> Any:
            params = self.params[adapter]
            saved = [p.detach().clone() for p in params]
            set_peft_model_state_dict(self.model, load(files["adapter_model.safetensors"]), adapter_name=adapter)
            try:
                yield
            finally:
                with torch.no_grad():
                    for p, v in zip(params, saved):
                        p.copy_(v)

        return swapped()

    def ref_adapter(self, role: str) -> str | None:
        return _ref_name(role) if self.has_ref[role] else None

    # -- the update -----------------------------------------------------------------------------
    def train(self, role: str, seqs: list[TrainSequence], normalisers: list[float],
              nll_normalisers: list[float] | None = None, behaviour: dict[str, bytes] | None = None) -> LearnerStats:
        """PPO epochs over this rank's `seqs` of `role`; `normalisers[m]` = global denominator of minibatch m,
        `nll_normalisers[m]` its global count of trainable tokens of correct episodes (the NLL term's mean).
        `behaviour`: the adapter files that sampled the rollouts when they are one step off-policy
        (rl.offpolicy_steps: 1); the PPO ratio is then taken against that policy, not the current one."""
        cfg = self.cfg
        temps = [self.token_temperatures(role, s) for s in seqs]
        tempered = any(t != 1.0 for row in temps for t in row)
        # π_old is the policy that sampled. On-policy with one epoch and one minibatch it is the policy of the
        # training forward itself, so that forward gives it (detached) and no separate scoring pass runs.
        fused = behaviour is None and cfg.ppo_epochs == 1 and len(normalisers) == 1
        stats = LearnerStats(lr=self.sched[role].get_last_lr()[0])  # the rate of this step's first update
        old = raw = None
        if not fused:
            old, raw = self._score(role, seqs, temps if tempered else None, behaviour, want_raw=True)
            stats.add_gap(seqs, raw)
        # with kl_coef 0 the KL term is only logged, so no reference pass: ref = logp makes it 0
        ref = self._score(self.ref_adapter(role), seqs, temps if tempered else None)[0] if cfg.kl_coef else None
        per_token: dict[str, list[Any]] = {
            "mask": [s.mask for s in seqs],
            "advantage": [[s.advantage] * len(s.input_ids) for s in seqs],
            "correct": [[float(s.correct)] * len(s.input_ids) for s in seqs],
            "temperature": temps,
            **({"old": old} if old is not None else {}),
            **({"ref": ref} if ref is not None else {}),
        }
        grad_norms = []
        for _ in range(cfg.ppo_epochs):
            for m, norm in enumerate(normalisers):
                self.optim[role].zero_grad(set_to_none=False)
                for chunk in self._chunks(seqs, [i for i, s in enumerate(seqs) if s.minibatch == m]):
                    pack = self._pack(seqs, chunk, per_token)
                    stats.padding += pack.padding
                    stats.positions += pack.ids.numel()
                    with self._activate(role, trainable=True):
                        self.model.train(cfg.gradient_checkpointing)
                        try:
                            lp, ent, lp_raw = self._forward(pack, with_entropy=True, tempered=tempered)
                        finally:
                            self.model.eval()
                    v = {k: t[:, 1:] for k, t in pack.values.items()}
                    mask = v["mask"] * (~pack.start[:, 1:])  # a sequence's first token is predicted by no one
                    if fused:
                        members = [i for i, *_ in pack.where]
                        stats.add_gap([seqs[i] for i in members], [_unpacked(lp_raw, w) for w in pack.where])
                    terms = policy_loss(
                        lp, lp.detach() if fused else v["old"], v["ref"] if ref is not None else lp.detach(),
                        v["advantage"], mask, ent if cfg.entropy_coef else ent.detach(),
                        clip_low=cfg.clip_low, clip_high=cfg.clip_high, kl_coef=cfg.kl_coef,
                        entropy_coef=cfg.entropy_coef, normaliser=max(norm, 1e-8), kind=cfg.loss,
                        nll_coef=cfg.nll_coef, nll_mask=mask * v["correct"],
                        nll_normaliser=nll_normalisers[m] if nll_normalisers else 0.0,
                    )  # fmt: skip
                    terms.loss.backward()
                    stats.add_terms(terms)
                grad_norms.append(self._step(role))
        stats.grad_norm = max(grad_norms) if grad_norms else 0.0
        return stats

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


def _unpacked(lp: torch.Tensor, where: tuple[int, int, int, int]) -> torch.Tensor:
    """One sequence's logprobs out of a packed [rows, width − 1] tensor, with 0 for its first token."""
    _, r, at, n = where
    return torch.cat([torch.zeros(1), lp[r, at : at + n - 1].detach().float().cpu()])


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
