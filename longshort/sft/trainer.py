"""Per-role SFT on `accelerate`: LoRA or full, masked token loss, eval split, atomic checkpoints, exact resume.

Loss of an optimizer step = mean token cross-entropy over every trainable token (mask 1) of the step's global
batch (all micro-batches, all processes): sum_t m_t * CE_t / sum_t m_t. Each micro-batch's backward uses the
step's global token count, so gradient accumulation and DDP give the same gradient as one big batch.

Exact resume: the data order is a pure function of (seed, epoch), the checkpoint stores the position in it,
the model/adapter, AdamW and scheduler state and every RNG; a resumed run reproduces the uninterrupted loss curve.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from longshort.config import Recipe, dump_yaml
from longshort.config.loader import to_dict
from longshort.errors import ConfigError, UserError
from longshort.io import atomic_write_bytes, atomic_write_text, read_jsonl, write_json, write_jsonl
from longshort.models import load_tokenizer, resolve_base
from longshort.sft import checkpoint as ckpt
from longshort.sft.data import Example, collate, epoch_order, load_examples, rows_for, split

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def lr_lambda(steps: int, warmup: int, kind: str) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step index s (0-based): linear warm-up, then cosine/linear/constant."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return f


@dataclass
class Position:
    """Where the next global batch starts: epoch number and index into that epoch's shuffled order."""

    epoch: int = 0
    index: int = 0

    def take(self, n_train: int, count: int, seed: int) -> list[int]:
        """The next `count` example indices (crossing epochs as needed); advances the position."""
        out: list[int] = []
        while len(out) < count:
            order = epoch_order(n_train, seed, self.epoch)
            need = count - len(out)
            out += order[self.index : self.index + need]
            self.index += need
            if self.index >= n_train:
                self.epoch, self.index = self.epoch + 1, 0
        return out


def token_losses(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(sum of masked token CE, number of masked tokens) for one micro-batch; CE in float32."""
    import torch
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "loss_mask"}
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].to(torch.float32)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (ce.view_as(mask) * mask).sum(), mask.sum()


class Trainer:
    """One `longshort sft` run. `run()` trains (or resumes) to `sft.steps` and writes the final artefacts."""

    def __init__(self, recipe: Recipe, log: Callable[[str], None] | None = None, stop_after: int | None = None,
                 progress: bool = True):
        self.recipe = recipe
        self.progress = progress
        self.cfg = recipe.sft
        self.run_dir = recipe.run_dir
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.stop_after = stop_after  # stop (as if killed) after this step: resume tests without a subprocess
        self.model: Any = None

    # ---- setup ---------------------------------------------------------------------------------------------

    def _data_path(self) -> Path:
        path = self.cfg.data or self.recipe.data.train
        if not path:
            raise ConfigError("key 'sft.data' (or 'data.train') must name a transcripts JSONL file")
        return Path(path)

    def _fresh_start(self) -> None:
        """resume: never -> drop this stage's outputs (the built tiny base, if any, is kept)."""
        for name in ("checkpoints", "final", "final.partial", "tensorboard"):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
        for name in ("metrics.jsonl", "run.json", "summary.md", "loss_curve.png", "rejects.jsonl"):
            (self.run_dir / name).unlink(missing_ok=True)

    def _build_model(self, base: Path, resume_from: Path | None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, DTYPES[self.recipe.model.dtype])
        trc = self.recipe.model.trust_remote_code
        if self.cfg.mode == "full":
            src = resume_from / "model" if resume_from else base
            model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype, trust_remote_code=trc)
        else:
            from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
            from safetensors.torch import load_file

            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, trust_remote_code=trc)
            lc = self.cfg.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                    task_type="CAUSAL_LM", bias="none",
                ),
            )
            if resume_from:
                state = load_file(str(resume_from / "adapter" / "adapter_model.safetensors"))
                result = set_peft_model_state_dict(model, state)
                if getattr(result, "unexpected_keys", None):
                    raise UserError(f"checkpoint {resume_from} does not match sft.lora: {result.unexpected_keys[:3]}")
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if self.cfg.mode == "lora":
                model.enable_input_require_grads()
        return model

    # ---- the run -------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import numpy as np
        import random
        import torch
        from accelerate import Accelerator
        from tqdm.auto import tqdm

        cfg, recipe = self.cfg, self.recipe
        seed = recipe.run.seed
        role_cfg = getattr(recipe.roles, cfg.role)
        accel = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no")
        main = accel.is_main_process
        run_dir = self.run_dir
        ck_root = run_dir / "checkpoints"

        if recipe.run.resume == "auto" and (run_dir / "run.json").is_file() and (run_dir / "final").is_dir():
            done = json.loads((run_dir / "run.json").read_text())
            if done.get("steps") == cfg.steps:
                self.log(f"sft: {run_dir} is already complete ({cfg.steps} steps); nothing to do (run.resume=never restarts)")
                return done
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if recipe.run.resume == "never":
                self._fresh_start()
            atomic_write_text(run_dir / "config.yaml", dump_yaml(recipe))
            resolve_base(recipe.model.base, run_dir, recipe.model.tiny, seed)  # builds `tiny` once
        auto = recipe.run.resume == "auto"
        # The main process warns about (and removes) partial checkpoints first; the others then find the same one.
        resume_from = ckpt.latest(ck_root, self.log) if auto and main else None
        accel.wait_for_everyone()
        if auto and not main:
            resume_from = ckpt.latest(ck_root, lambda m: None)
        base = resolve_base(recipe.model.base, run_dir, recipe.model.tiny, seed)
        tokenizer = load_tokenizer(base, recipe.model.trust_remote_code)
        data_path = self._data_path()
        examples, counts, rejects = load_examples(
            data_path, tokenizer, cfg.role, role_cfg.system_prompt, cfg.max_length, recipe.data.on_error
        )
        if main and len(rejects):
            write_jsonl(run_dir / "rejects.jsonl", rejects.rows)
        train, evals = split(examples, cfg.eval_fraction, seed)
        if not train:
            raise UserError(f"{data_path}: no training examples for role '{cfg.role}' ({dict(counts)})")
        counts["train"], counts["eval"] = len(train), len(evals)

        # Same seeds before model creation: LoRA init (and dropout masks) come from the torch RNG.
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        model = self._build_model(base, resume_from)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.steps, cfg.warmup_steps, cfg.scheduler))
        # The scheduler is stepped here once per optimizer step (accelerate's wrapper would step it per process).
        model, optimizer = accel.prepare(model, optimizer)
        self.model = model

        step, pos, tokens_seen = 0, Position(), 0
        if resume_from:
            state = json.loads((resume_from / "trainer_state.json").read_text())
            step, pos, tokens_seen = state["step"], Position(state["epoch"], state["index"]), state["tokens"]
            opt_state = torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=True)
            optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(json.loads((resume_from / "scheduler.json").read_text()))
            self._restore_rng(resume_from, accel.process_index)
            if main:
                self._truncate_metrics(step)
            self.log(f"sft: resuming from {resume_from} (step {step}, epoch {pos.epoch}, index {pos.index})")

        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1 if step else None)

        n_proc, rank = accel.num_processes, accel.process_index
        global_batch = cfg.batch_size * cfg.grad_accum * n_proc
        pad_id = tokenizer.pad_token_id
        t0 = time.time()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"sft {cfg.role}/{cfg.mode}", disable=not (main and self.progress), dynamic_ncols=True)
        last_eval: float | None = None
        while step < cfg.steps:
            model.train()
            idx = pos.take(len(train), global_batch, seed)
            batch_ex = [train[i] for i in idx]
            n_tok = sum(e.trainable for e in batch_ex)  # the step's global count: exact accumulation/DDP scaling
            loss_sum = torch.zeros((), device=accel.device)
            for micro in range(cfg.grad_accum):
                lo = (micro * n_proc + rank) * cfg.batch_size
                part = batch_ex[lo : lo + cfg.batch_size]
                rows = rows_for(part, cfg.max_length, cfg.packing)
                batch = {k: v.to(accel.device) for k, v in collate(rows, pad_id, cfg.packing).items()}
                sync = micro == cfg.grad_accum - 1
                with nullcontext() if sync else accel.no_sync(model):
                    s, _ = token_losses(model, batch)
                    accel.backward(s / n_tok * n_proc)  # DDP averages over processes; undo it
                loss_sum += s.detach()
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = accel.clip_grad_norm_(params, max_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += sum(len(e.input_ids) for e in batch_ex)
            loss = (accel.reduce(loss_sum, reduction="sum").item()) / n_tok
            row: dict[str, Any] = {
                "step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_seen,
                "trainable_tokens": n_tok, "epoch": pos.epoch, "wall_s": round(time.time() - t0, 3),
            }
            if evals and (step % cfg.eval_every == 0 or step == cfg.steps):
                last_eval = row["eval_loss"] = self.eval_loss(model, evals, pad_id, accel)
            if main:
                from longshort.io import append_jsonl

                append_jsonl(run_dir / "metrics.jsonl", row)
                for k in ("loss", "lr", "grad_norm", "eval_loss"):
                    if k in row:
                        writer.add_scalar(f"sft/{k}", row[k], step)
                bar.set_postfix(loss=f"{loss:.4f}", **({"eval": f"{last_eval:.4f}"} if last_eval is not None else {}))
            bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.steps:
                self._save(accel, model, optimizer, scheduler, step, pos, tokens_seen, ck_root)
            if self.stop_after is not None and step >= self.stop_after and step < cfg.steps:
                bar.close()
                if writer:
                    writer.close()
                return {"stopped_at": step}
        bar.close()
        if writer:
            writer.flush()
            writer.close()
        accel.wait_for_everyone()
        result = {}
        if main:
            result = self._finish(accel, model, tokenizer, base, data_path, counts, len(rejects), resume_from, time.time() - t0)
        accel.wait_for_everyone()
        return result

    # ---- pieces --------------------------------------------------------------------------------------------

    def eval_loss(self, model: Any, evals: list[Example], pad_id: int, accel: Any) -> float:
        """Token-mean CE over the eval split (no dropout, no RNG use: resume-safe). Sharded across processes."""
        import torch

        model.eval()
        total = torch.zeros((), device=accel.device)
        count = torch.zeros((), device=accel.device)
        mine = evals[accel.process_index :: accel.num_processes]
        with torch.no_grad():
            for i in range(0, len(mine), self.cfg.batch_size):
                rows = rows_for(mine[i : i + self.cfg.batch_size], self.cfg.max_length, self.cfg.packing)
                batch = {k: v.to(accel.device) for k, v in collate(rows, pad_id, self.cfg.packing).items()}
                s, n = token_losses(model, batch)
                total += s
                count += n
        model.train()
        return (accel.reduce(total, reduction="sum") / accel.reduce(count, reduction="sum").clamp(min=1)).item()

    def _save(self, accel, model, optimizer, scheduler, step, pos, tokens, ck_root: Path) -> None:
        import torch
        from safetensors.torch import save_file

        partial = ck_root / (ckpt.step_name(step) + ".partial")
        if accel.is_main_process:
            ckpt.begin(ck_root, step)
        accel.wait_for_everyone()
        meta, tensors = ckpt.rng_state()
        save_file(tensors, str(partial / f"rng-{accel.process_index}.safetensors"))
        write_json(partial / f"rng-{accel.process_index}.json", meta)
        state_dict = accel.get_state_dict(model)  # full state (gathered under FSDP) on the main process
        opt_state = optimizer.state_dict()
        accel.wait_for_everyone()
        if accel.is_main_process:
            unwrapped = accel.unwrap_model(model)
            if self.cfg.mode == "lora":
                unwrapped.save_pretrained(str(partial / "adapter"), state_dict=state_dict, safe_serialization=True)
            else:
                unwrapped.save_pretrained(str(partial / "model"), state_dict=state_dict, safe_serialization=True)
            torch.save(opt_state, partial / "optimizer.pt")
            write_json(partial / "scheduler.json", scheduler.state_dict())
            write_json(
                partial / "trainer_state.json",
                {"step": step, "epoch": pos.epoch, "index": pos.index, "tokens": tokens, "role": self.cfg.role,
                 "mode": self.cfg.mode, "num_processes": accel.num_processes},
            )
            ckpt.commit(partial, step, self.cfg.keep_checkpoints)
        accel.wait_for_everyone()

    def _restore_rng(self, path: Path, rank: int) -> None:
        from safetensors.torch import load_file

        f = path / f"rng-{rank}.json"
        if not f.is_file():
            raise UserError(f"checkpoint {path} has no RNG state for process {rank} (saved with fewer processes)")
        ckpt.set_rng_state(json.loads(f.read_text()), load_file(str(path / f"rng-{rank}.safetensors")))

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric rows after the resumed step (written before the crash): no step is logged twice."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            rows = [r for _, r in read_jsonl(path, on_error="skip", rejects=None) if r.get("step", 0) <= step]
            write_jsonl(path, rows)

    def _finish(self, accel, model, tokenizer, base: Path, data_path: Path, counts, n_rejects: int,
                resumed: Path | None, wall: float) -> dict[str, Any]:
        cfg, run_dir = self.cfg, self.run_dir
        final = run_dir / "final"
        tmp = run_dir / "final.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        accel.unwrap_model(model).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        rows = [r for _, r in read_jsonl(run_dir / "metrics.jsonl", on_error="skip", rejects=None)]
        evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
        metrics = {
            "first_loss": rows[0]["loss"] if rows else None,
            "final_loss": rows[-1]["loss"] if rows else None,
            "eval_loss": evals[-1] if evals else None,
            "first_eval_loss": evals[0] if evals else None,
            "tokens": rows[-1]["tokens"] if rows else 0,
        }
        role_cfg = getattr(self.recipe.roles, cfg.role)
        info = {
            "stage": "sft",
            "role": cfg.role,
            "mode": cfg.mode,
            "base": str(base.resolve()),
            "base_spec": self.recipe.model.base,
            "dtype": self.recipe.model.dtype,
            "final": "final",
            "steps": cfg.steps,
            "seed": self.recipe.run.seed,
            "lora": to_dict(cfg.lora) if cfg.mode == "lora" else None,
            "role_config": to_dict(role_cfg),
            "data": str(data_path),
            "counts": dict(counts),
            "rejects": n_rejects,
            "metrics": metrics,
        }
        write_json(run_dir / "run.json", info)
        self._plot(rows)
        lines = [
            f"# SFT `{cfg.role}` ({cfg.mode})", "",
            f"- base: `{base}` ({self.recipe.model.dtype})",
            f"- data: `{data_path}`: {counts['rows']} rows -> {counts['train']} train / {counts['eval']} eval examples; "
            f"rejected {n_rejects}, truncated {counts.get('truncated', 0)}, "
            f"skipped (nothing for this role) {sum(v for k, v in counts.items() if k.startswith('skipped'))}",
            f"- steps: {cfg.steps} (batch {cfg.batch_size} x accum {cfg.grad_accum} x {accel.num_processes} processes), "
            f"lr {cfg.lr} {cfg.scheduler}, packing {cfg.packing}, bf16 {cfg.bf16}",
            f"- loss: {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}"
            + (f"; eval loss {metrics['first_eval_loss']:.4f} -> {metrics['eval_loss']:.4f}" if evals else ""),
            f"- tokens seen: {metrics['tokens']}; this session {wall:.1f}s"
            + (f"; resumed from `{resumed.name}`" if resumed else ""),
            f"- final: `{final}`; curve: `loss_curve.png`; TensorBoard: `tensorboard/`", "",
        ]
        atomic_write_text(run_dir / "summary.md", "\n".join(lines))
        self.log(f"sft: done -> {final} (loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f})")
        return info

    def _plot(self, rows: list[dict[str, Any]]) -> None:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
        ev = [r for r in rows if "eval_loss" in r]
        if ev:
            ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("token cross-entropy")
        ax.set_title(f"SFT {self.cfg.role} ({self.cfg.mode})")
        ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(self.run_dir / "loss_curve.png", buf.getvalue())
