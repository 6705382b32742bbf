"""The prepared GPU check (issue 21): the CUDA path of the learner, SFT, the HF engine and export, measured.

Runs where only torch, transformers, peft, accelerate, safetensors, tokenizers and pyarrow are installed — no vllm,
no ray, nothing to download: the model is a Qwen2 of ~0.5B parameters (Qwen2.5-0.5B's shape) built from a config
with random weights, the tokenizer is the tiny model's (trained in code), every other input is generated here.

    python bench/gpu_check.py                  # one GPU, bf16 (`dtype: auto`): writes bench/results_gpu.json (< 8 min on an H200)
    python bench/gpu_check.py --small          # tiny config on this CPU in < 60 s: proves the script (tests run it)

What it measures, each on the same model and inputs:
- SFT (the trainer's own model build: model.dtype / sft.bf16 `auto`, LoRA): step time, tokens/s and peak memory
  without and with gradient checkpointing, and the two first-step losses (must agree);
- RL: one `PolicyLearner` update of both roles (no Ray), and the learner's logprobs against the HF engine's on the
  tokens it sampled (max / mean |difference|, beside longshort.precision.SYNC_TOLERANCE of the dtype);
- HF-engine generation tokens/s at batch 64 (eos ignored);
- export: the merged model's logits against base + adapter on the device, beside longshort.export.TOLERANCE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14/2 heads, MLP 4864, tied embeddings); the vocabulary is the
# real one (151,936) although the tokenizer knows ~1k tokens: the logits, embeddings and sampling cost what they
# cost on the real model. ~494M parameters.
FULL = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936, "max_position_embeddings": 4096}
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128, "vocab_size": 4096, "max_position_embeddings": 512}
SIZES = {  # sequences, tokens and repetitions of each measurement
    "full": {"sft_batch": 8, "sft_len": 1024, "sft_steps": 5, "rl_seqs": 16, "prompt": 64, "gen_tokens": 128,
             "gen_batch": 64, "lora_r": 16},
    "small": {"sft_batch": 2, "sft_len": 64, "sft_steps": 2, "rl_seqs": 4, "prompt": 16, "gen_tokens": 8,
              "gen_batch": 64, "lora_r": 4},
}


def build_model(out: Path, shape: dict[str, int], seed: int = 0) -> Path:
    """A Qwen2 of `shape` with random weights and the tiny tokenizer, saved in float32 (as models.build_tiny)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    from longshort.models import build_tokenizer

    tok = build_tokenizer(seed)
    config = Qwen2Config(**shape, rope_theta=1_000_000.0, tie_word_embeddings=True, bos_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype="float32")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out


class Memory:
    """Peak memory of a phase: CUDA's allocator peak, or on CPU the process's peak RSS (it only grows)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.cuda:
            import torch

            return round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def sft(base: Path, n: dict[str, int], device: str, mem: Memory, checkpointing: bool) -> dict[str, Any]:
    """The SFT trainer's model (its `_build_model`, dtype and bf16 from `auto`), `sft_steps` timed optimizer steps."""
    import torch

    from longshort.config import Recipe
    from longshort.sft.trainer import Trainer, token_losses

    recipe = Recipe()
    recipe.model.base, recipe.model.dtype = str(base), "auto"
    recipe.sft.bf16, recipe.sft.gradient_checkpointing = "auto", checkpointing
    recipe.sft.lora.r, recipe.sft.lora.alpha = n["lora_r"], 2 * n["lora_r"]
    trainer = Trainer(recipe)
    torch.manual_seed(0)
    mem.reset()
    model = trainer._build_model(base, None).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (n["sft_batch"], n["sft_len"]), generator=gen).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=trainer.bf16)
    losses, times = [], []
    for _ in range(n["sft_steps"] + 1):  # the first step warms up kernels and the allocator: not timed
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            s, count = token_losses(model, batch)
        (s / count).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(float(s / count))
    step = sum(times[1:]) / len(times[1:])
    return {"gradient_checkpointing": checkpointing, "weights": trainer.dtype, "bf16_autocast": trainer.bf16,
            "lora_dtype": str(params[0].dtype).replace("torch.", ""), "batch": n["sft_batch"], "seq_len": n["sft_len"],
            "step_s": round(step, 4), "tokens_per_s": round(ids.numel() / step, 1), "peak_gib": mem.peak_gib(),
            "first_loss": losses[0]}


def rl_and_engine(base: Path, n: dict[str, int], device: str, mem: Memory, tmp: Path) -> dict[str, Any]:
    """One PolicyLearner update of both roles; its adapters served by the HF engine: generation speed at batch
    `gen_batch` and the learner-vs-engine logprob gap on the sampled tokens."""
    import torch

    from longshort.config.core import EngineConfig
    from longshort.config.lora import LoRAConfig
    from longshort.config.rl import RLConfig
    from longshort.engines.base import GenRequest, SamplingParams
    from longshort.engines.hf_engine import HFEngine
    from longshort.precision import SYNC_TOLERANCE
    from longshort.rl.learner import PolicyLearner, write_adapter
    from longshort.types import TrainSequence

    roles = ("long", "short")
    cfg = RLConfig(lr=1e-3, micro_batch_size=n["rl_seqs"], gradient_checkpointing=True,
                   lora=LoRAConfig(r=n["lora_r"], alpha=2 * n["lora_r"]), kl_coef=0.0)
    mem.reset()
    learner = PolicyLearner(str(base), {r: None for r in roles}, {r: None for r in roles}, cfg,
                            max_tokens={r: n["gen_tokens"] for r in roles}, device=device, dtype="auto")
    gen = torch.Generator().manual_seed(1)
    length = n["prompt"] + n["gen_tokens"]
    samples = {r: [TrainSequence(role=r, input_ids=torch.randint(0, 1000, (length,), generator=gen).tolist(),
                                 mask=[0] * n["prompt"] + [1] * n["gen_tokens"], advantage=float(i % 2 * 2 - 1))
                   for i in range(n["rl_seqs"])] for r in roles}
    norm = [float(n["rl_seqs"] * n["gen_tokens"])]
    learner.train("long", samples["long"][:2], norm)  # warm-up (kernels, allocator); its update moves the adapter
    sync(device)
    t0 = time.perf_counter()
    stats = {r: learner.train(r, samples[r], norm) for r in roles}
    sync(device)
    update_s = time.perf_counter() - t0
    tokens = sum(len(s.input_ids) for r in roles for s in samples[r])
    out: dict[str, Any] = {"rl_update": {
        "roles": list(roles), "sequences_per_role": n["rl_seqs"], "seq_len": length, "weights": learner.dtype,
        "lora_dtype": str(learner.params["long"][0].dtype).replace("torch.", ""),
        "adam_state_dtype": str(next(iter(learner.optim["long"].state.values()))["exp_avg"].dtype).replace("torch.", ""),
        "gradient_checkpointing": True, "update_s": round(update_s, 4), "tokens_per_s": round(tokens / update_s, 1),
        "grad_norm": {r: stats[r].grad_norm for r in roles}, "peak_gib": mem.peak_gib()}}

    paths = {r: str(write_adapter(learner.export_adapter(r), tmp / f"adapter-{r}")) for r in roles}
    engine = HFEngine(str(base), EngineConfig(kind="hf", dtype="auto", max_model_len=length + 8, batch_size=n["gen_batch"]),
                      paths, seed=0)
    requests = [GenRequest(prompt_ids=samples["long"][i % n["rl_seqs"]].input_ids[: n["prompt"]], role="long",
                           params=SamplingParams(temperature=1.0, max_tokens=n["gen_tokens"], seed=i, ignore_eos=True))
                for i in range(n["gen_batch"])]
    engine.generate(requests[:2])  # warm-up
    mem.reset()
    sync(device)
    t0 = time.perf_counter()
    completions = [c[0] for c in engine.generate(requests)]
    sync(device)
    gen_s = time.perf_counter() - t0
    generated = sum(len(c.token_ids) for c in completions)
    out["generate"] = {"engine": "hf", "dtype": engine.dtype, "batch": n["gen_batch"], "max_tokens": n["gen_tokens"],
                       "generated_tokens": generated, "wall_s": round(gen_s, 4), "tokens_per_s": round(generated / gen_s, 1),
                       "peak_gib": mem.peak_gib()}
    seqs = [r.prompt_ids + c.token_ids for r, c in zip(requests, completions)]
    mine = learner.logprobs("long", seqs)
    gaps = [abs(a - b) for r, c, m in zip(requests, completions, mine) for a, b in zip(c.logprobs, m[len(r.prompt_ids):])]
    scored = engine.score(seqs, ["long"] * len(seqs), [1] * len(seqs))
    probe = [abs(a - b) for s, m in zip(scored, mine) for a, b in zip(s, m[1:])]
    tol = SYNC_TOLERANCE[learner.dtype]
    out["logprob_gap"] = {"dtype": learner.dtype, "sampled_tokens": len(gaps), "sampled_max": max(gaps),
                          "sampled_mean": sum(gaps) / len(gaps), "probe_max": max(probe), "sync_tolerance": tol,
                          "within_tolerance": max(gaps) <= tol and max(probe) <= tol}
    engine.close()
    del learner, engine
    return out


def export_check(base: Path, n: dict[str, int], device: str, tmp: Path) -> dict[str, Any]:
    """As `longshort export` checks a LoRA role, on `device`: merge in float32, store in the resolved dtype, reload,
    compare logits with base + adapter (float32) on the same probes."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from longshort.export import TOLERANCE
    from longshort.precision import resolve_dtype

    dtype = resolve_dtype("auto", device)
    torch.manual_seed(2)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                          LoraConfig(r=n["lora_r"], lora_alpha=2 * n["lora_r"], target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:  # B is zero at init: give the adapter an effect
                p.normal_(0, 0.02)
    peft.save_pretrained(str(tmp / "export-adapter"))
    ids = torch.randint(0, 1000, (3, 48), generator=torch.Generator().manual_seed(3)).to(device)
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                          str(tmp / "export-adapter")).to(device).eval()
    with torch.no_grad():
        ref = ref_model(ids).logits.float()
    merged = ref_model.merge_and_unload().to(getattr(torch, dtype))
    merged.save_pretrained(str(tmp / "merged"), safe_serialization=True)
    del merged, ref_model
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp / "merged"), dtype=getattr(torch, dtype)).to(device).eval()
    with torch.no_grad():
        got = reloaded(ids).logits.float()
    diff = (got - ref).abs().max().item()
    tol = TOLERANCE[dtype] * max(1.0, ref.abs().max().item() if dtype != "float32" else 1.0)  # export.py's rule
    return {"dtype": dtype, "merged_max_abs_logit_diff": diff, "tolerance": tol, "max_abs_logit": ref.abs().max().item(),
            "within_tolerance": diff <= tol}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")] if cpuinfo.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny config: proves the script on a CPU in < 60 s")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when visible)")
    ap.add_argument("--out", default=None, help="results file (default: bench/results_gpu.json; --small: bench/results_gpu_small.json)")
    args = ap.parse_args(argv)
    import torch

    from longshort.io import atomic_write_text
    from longshort.precision import cpu_matmul_probe, default_device, resolve_dtype

    device = args.device or default_device()
    mode = "small" if args.small else "full"
    n = SIZES[mode]
    out = Path(args.out or ROOT / "bench" / ("results_gpu_small.json" if args.small else "results_gpu.json"))
    t_start = time.perf_counter()
    mem = Memory(device)
    result: dict[str, Any] = {
        "what": "bench/gpu_check.py" + (" --small (tiny config: proves the script, numbers are NOT a GPU measurement)" if args.small else ""),
        "mode": mode, "device": device, "device_name": device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "dtype_auto": resolve_dtype("auto", device),
        "peak_gib_is": "torch.cuda.max_memory_allocated, reset per phase" if device.startswith("cuda")
        else "the process's peak RSS (it only grows: phases after the first include the earlier peaks)",
    }
    if not device.startswith("cuda"):
        result["cpu_probe"] = cpu_matmul_probe()
    with tempfile.TemporaryDirectory(prefix="longshort-gpu-check-") as tmp_s:
        tmp = Path(tmp_s)
        base = build_model(tmp / "base", SMALL if args.small else FULL)
        from safetensors import safe_open

        with safe_open(str(base / "model.safetensors"), "pt") as f:
            result["params"] = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        result["model"] = {"shape": SMALL if args.small else FULL, "weights": "random (built from the config)"}
        result["sft"] = [sft(base, n, device, mem, checkpointing=c) for c in (False, True)]
        a, b = result["sft"]
        result["sft_checkpointing"] = {"loss_diff": abs(a["first_loss"] - b["first_loss"]),
                                       "memory_saved_gib": round(a["peak_gib"] - b["peak_gib"], 3),
                                       "slowdown": round(b["step_s"] / a["step_s"], 3)}
        result.update(rl_and_engine(base, n, device, mem, tmp))
        result["export"] = export_check(base, n, device, tmp)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["ok"] = bool(result["logprob_gap"]["within_tolerance"] and result["export"]["within_tolerance"]
                        and result["sft_checkpointing"]["loss_diff"] < 1e-2)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")  # a killed run leaves the previous results
    print(json.dumps({"out": str(out), "ok": result["ok"], "wall_s": result["wall_s"]}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
