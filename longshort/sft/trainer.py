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
from pathlib import Path
from typing import Any, Callable

from longshort.config import Recipe
from longshort.config.loader import to_dict
from longshort.errors import ConfigError, UserError
from longshort.io import atomic_write_bytes, atomic_write_text, write_json
from longshort.models import check_lora_targets, load_tokenizer, resolve_base
from longshort.precision import default_device, record, resolve_bf16, resolve_dtype
from longshort.run import checkpoint as ckpt
from longshort.run import open_run
from longshort.run.logs import METRICS, MetricsLog, rows as log_rows
from longshort.run.schedule import scheduler as lr_scheduler, take
from longshort.run.settings import check, settings
from longshort.sft.data import Example, collate, load_examples, rows_for, split

OUTPUTS = ("checkpoints", "final", "final.partial", "tensorboard", METRICS, "run.json", "summary.md", "loss_curve.png",
           "rejects.jsonl")  # what run.resume=never removes (a built tiny base is kept)
# Keys that may change between a run and its resume: how long to go on, how often to save or evaluate, memory.
FREE = ("sft.steps", "sft.eval_every", "sft.save_every", "sft.keep_checkpoints", "sft.gradient_checkpointing")


def resume_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings an SFT checkpoint's state depends on: every key this stage reads, except `FREE`."""
    keys = ("run.seed", "model", "data.train", "data.on_error", *recipe.data.resume_keys(),
            f"roles.{recipe.sft.role}.system_prompt", f"roles.{recipe.sft.role}.stop", "sft")
    return settings(recipe, keys, FREE)


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
        # `auto` resolved once per run, before the Accelerator exists: weights dtype and the bf16 autocast switch
        self.device = default_device()
        self.dtype = resolve_dtype(recipe.model.dtype, self.device)
        self.bf16 = resolve_bf16(recipe.sft.bf16, self.device)

    # ---- setup ---------------------------------------------------------------------------------------------

    def _data_path(self) -> Path:
        path = self.cfg.data or self.recipe.data.train
        if not path:
            raise ConfigError("key 'sft.data' (or 'data.train') must name a transcripts file (JSONL, Parquet or a `datasets` folder)")
        return Path(path)

    def _build_model(self, base: Path, resume_from: Path | None) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, self.dtype)  # LoRA: PEFT keeps the adapter (and so AdamW's state) float32
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
                state = load_file(str(resume_from / "adapters" / self.cfg.role / "adapter_model.safetensors"))
                result = set_peft_model_state_dict(model, state)
                if getattr(result, "unexpected_keys", None):
                    raise UserError(f"checkpoint {resume_from} does not match sft.lora: {result.unexpected_keys[:3]}")
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.cfg.mode == "lora":  # the frozen embeddings' output must require grad for the recompute to reach LoRA
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
        from accelerate.state import AcceleratorState

        precision = "bf16" if self.bf16 else "no"
        # accelerate keeps the mixed-precision setting process-wide, and one process may run SFT stages of different
        # precision (the pipeline's driver): a stage asking for another one clears it (the process group stays).
        if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
            AcceleratorState._reset_state()
        accel = Accelerator(mixed_precision=precision)
        main = accel.is_main_process
        run_dir = self.run_dir
        ck_root = run_dir / "checkpoints"

        current = resume_settings(recipe)
        if recipe.run.resume == "auto" and (run_dir / "run.json").is_file() and (run_dir / "final").is_dir():
            done = json.loads((run_dir / "run.json").read_text())
            if done.get("steps") == cfg.steps:
                check(done.get("settings"), current, str(run_dir / "run.json"))
                self.log(f"sft: {run_dir} is already complete ({cfg.steps} steps); nothing to do (run.resume=never restarts)")
                return done
        if main:
            open_run(recipe, OUTPUTS)
            resolve_base(recipe.model.base, run_dir, recipe.model.tiny, seed, trust_remote_code=recipe.model.trust_remote_code,
                         chat_template=recipe.model.chat_template)  # builds `tiny` once
        auto = recipe.run.resume == "auto"
        # Resume only what was written with the same settings (a one-line error names the first changed key). The
        # main process names the broken checkpoints it skips; the others then find the same one quietly.
        resume_from = ckpt.resume(ck_root, current, self.log) if auto and main else None
        accel.wait_for_everyone()
        if auto and not main:
            resume_from = ckpt.resume(ck_root, current, lambda m: None)
        base = resolve_base(recipe.model.base, run_dir, recipe.model.tiny, seed, trust_remote_code=recipe.model.trust_remote_code,
                            chat_template=recipe.model.chat_template)
        if cfg.mode == "lora":
            check_lora_targets(base, cfg.lora.target_modules, "sft.lora.target_modules", recipe.model.trust_remote_code)
        tokenizer = load_tokenizer(base, recipe.model.trust_remote_code)
        data_path = self._data_path()
        examples, counts, rejects = load_examples(
            data_path, tokenizer, cfg.role, role_cfg.system_prompt, cfg.max_length, recipe.data.on_error,
            fields=recipe.data.fields, split=recipe.data.split, stop=role_cfg.stop,
        )
        if main:
            rejects.write(run_dir / "rejects.jsonl")
        train, evals = split(examples, cfg.eval_fraction, seed)
        if not train:
            raise UserError(f"{data_path}: no training examples for role '{cfg.role}' ({dict(counts)})")
        counts["train"], counts["eval"] = len(train), len(evals)

        # Same seeds before model creation: LoRA init (and dropout masks) come from the torch RNG.
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        model = self._build_model(base, resume_from.path if resume_from else None)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = lr_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.scheduler)
        # The scheduler is stepped here once per optimizer step (accelerate's wrapper would step it per process).
        model, optimizer = accel.prepare(model, optimizer)
        self.model = model

        step, cursor, tokens_seen = 0, 0, 0  # cursor: position in the data-order stream (run.schedule.take)
        if resume_from:
            state = resume_from.state
            step, cursor, tokens_seen = state["step"], state["cursor"], state["tokens"]
            opt_state = torch.load(resume_from.path / "optimizer.pt", map_location="cpu", weights_only=True)
            optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(json.loads((resume_from.path / "scheduler.json").read_text()))
            ckpt.restore_rng(resume_from, accel.process_index)
            self.log(f"sft: resuming from {resume_from.path} (step {step}, epoch {cursor // len(train)}, "
                     f"index {cursor % len(train)})")
        # Every log is cut back to the step resumed from, 0 (no checkpoint) included: no step is logged twice.
        metrics_log = MetricsLog(run_dir, step, recipe.run.report_to) if main else None

        n_proc, rank = accel.num_processes, accel.process_index
        global_batch = cfg.batch_size * cfg.grad_accum * n_proc
        pad_id = tokenizer.pad_token_id
        t0 = time.time()
        bar = tqdm(total=cfg.steps, initial=step, desc=f"sft {cfg.role}/{cfg.mode}", disable=not (main and self.progress), dynamic_ncols=True)
        last_eval: float | None = None
        while step < cfg.steps:
            model.train()
            idx = take(len(train), seed, cursor, global_batch)
            cursor += global_batch
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
            if not math.isfinite(float(grad_norm)):  # global under DDP: every process stops at the same step
                raise UserError(f"sft: step {step + 1}: the loss or its gradient is not finite (gradient norm "
                                f"{float(grad_norm)}); training diverged, nothing of this step is saved (lower sft.lr?)")
            lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += sum(len(e.input_ids) for e in batch_ex)
            loss = (accel.reduce(loss_sum, reduction="sum").item()) / n_tok
            row: dict[str, Any] = {
                "step": step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_seen,
                "trainable_tokens": n_tok, "epoch": cursor // len(train), "wall_s": round(time.time() - t0, 3),
            }
            if evals and (step % cfg.eval_every == 0 or step == cfg.steps):
                last_eval = row["eval_loss"] = self.eval_loss(model, evals, pad_id, accel)
            if main:
                metrics_log.log(row)
                bar.set_postfix(loss=f"{loss:.4f}", **({"eval": f"{last_eval:.4f}"} if last_eval is not None else {}))
            bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.steps:
                if not all(bool(torch.isfinite(p).all()) for p in params):  # finite gradients, a step still overflowed
                    raise UserError(f"sft: step {step}: the weights are no longer finite; no checkpoint or adapter "
                                    "is written (lower sft.lr?)")
                self._save(accel, model, optimizer, scheduler, step, cursor, tokens_seen, ck_root)
            if self.stop_after is not None and step >= self.stop_after and step < cfg.steps:
                bar.close()
                if metrics_log:
                    metrics_log.close()
                return {"stopped_at": step}
        bar.close()
        if metrics_log:
            metrics_log.close()
        accel.wait_for_everyone()
        result = {}
        if main:
            result = self._finish(accel, model, tokenizer, base, data_path, counts, len(rejects),
                                  resume_from.path if resume_from else None, time.time() - t0)
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

    def _save(self, accel, model, optimizer, scheduler, step, cursor, tokens, ck_root: Path) -> None:
        import torch

        partial = ck_root / (ckpt.step_name(step) + ".partial")
        if accel.is_main_process:
            ckpt.begin(ck_root, step)
        accel.wait_for_everyone()
        ckpt.save_rng(partial, accel.process_index)
        state_dict = accel.get_state_dict(model)  # full state (gathered under FSDP) on the main process
        opt_state = optimizer.state_dict()
        accel.wait_for_everyone()
        if accel.is_main_process:
            unwrapped = accel.unwrap_model(model)
            if self.cfg.mode == "lora":
                unwrapped.save_pretrained(str(partial / "adapters" / self.cfg.role), state_dict=state_dict, safe_serialization=True)
            else:
                unwrapped.save_pretrained(str(partial / "model"), state_dict=state_dict, safe_serialization=True)
            torch.save(opt_state, partial / "optimizer.pt")
            write_json(partial / "scheduler.json", scheduler.state_dict())
            state = {"cursor": cursor, "tokens": tokens, "num_processes": accel.num_processes,
                     "settings": resume_settings(self.recipe)}
            ckpt.commit(partial, step, state, self.cfg.keep_checkpoints)
        accel.wait_for_everyone()

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
        rows = log_rows(run_dir / METRICS)
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
            "dtype": self.dtype,
            "precision": {"weights": record(self.recipe.model.dtype, self.dtype, self.device),
                          "bf16_autocast": record(cfg.bf16, self.bf16, self.device),
                          "gradient_checkpointing": cfg.gradient_checkpointing},
            "final": "final",
            "steps": cfg.steps,
            "seed": self.recipe.run.seed,
            "lora": to_dict(cfg.lora) if cfg.mode == "lora" else None,
            # all of the role SFT trains with (export reads it): the stop strings decide which end-of-turn tokens are trained
            "role_config": {"system_prompt": role_cfg.system_prompt, "stop": list(role_cfg.stop)},
            "data": str(data_path),
            "counts": dict(counts),
            "rejects": n_rejects,
            "metrics": metrics,
            "settings": resume_settings(self.recipe),  # an "already complete" rerun checks them too
        }
        write_json(run_dir / "run.json", info)
        self._plot(rows)
        lines = [
            f"# SFT `{cfg.role}` ({cfg.mode})", "",
            f"- base: `{base}` ({self.dtype}{' from auto' if self.recipe.model.dtype == 'auto' else ''})",
            f"- data: `{data_path}`: {counts['rows']} rows -> {counts['train']} train / {counts['eval']} eval examples; "
            f"rejected {n_rejects}, truncated {counts.get('truncated', 0)}, "
            f"skipped (nothing for this role) {sum(v for k, v in counts.items() if k.startswith('skipped'))}",
            f"- steps: {cfg.steps} (batch {cfg.batch_size} x accum {cfg.grad_accum} x {accel.num_processes} processes), "
            f"lr {cfg.lr} {cfg.scheduler}, packing {cfg.packing}, bf16 autocast {self.bf16}, "
            f"gradient checkpointing {cfg.gradient_checkpointing}",
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
