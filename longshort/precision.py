"""`dtype: auto`: bfloat16 on CUDA; on a CPU, bfloat16 only where this machine runs it measurably faster.

CPUs differ by an order of magnitude here: with AMX / AVX512-BF16 a bf16 matmul runs several times faster than
float32 (bf16 autocast training of the tiny model: 1.8x faster on the Xeon dev machine), without them PyTorch
emulates it (~14x slower per SFT step on the AMD EPYC CI machine). So on CPU `auto` times one matmul in both
dtypes, once per process, and picks bfloat16 only when it wins by `BF16_MIN_SPEEDUP` — a margin wide enough that
timing noise cannot flip the choice on a machine near parity. The choice and the timings go into the run's
record (`precision` in run.json / the RL summary). Base weights only: LoRA parameters and optimizer state stay
float32 (PEFT keeps adapters in float32 over a bf16 base).
"""

from __future__ import annotations

import functools
import time
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
BF16_MIN_SPEEDUP = 1.3
PROBE_SIZE = 512  # square matmul: ~0.27 GFLOP, a few ms per call in float32 on one core

# Largest |engine − learner| logprob the RL sync checks tolerate (probe and sampled tokens), by the less precise
# dtype of the two (rl.sync_tolerance: null). float32: the same float32 math in a different order (≤ 1e-6 measured
# on the tiny model). bfloat16: measured on the tiny model (HF engine and learner both bf16 base + float32 LoRA,
# CPU, 2 x 32 sampled sequences): a re-scored probe matches exactly (the same padded forward), a token sampled with
# the KV cache differs from the learner's full forward by up to 0.0079 (mean 0.0015 over 5,874 tokens) -> ~6x that.
# float16 (10 mantissa bits to bf16's 7) is not measured and shares the bf16 bound. docs/rl.md, "Precision".
SYNC_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.05, "float16": 0.05}


def default_device() -> str:
    """`cuda` when this process sees a GPU (Ray sets CUDA_VISIBLE_DEVICES for an actor holding one), else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=1)
def cpu_matmul_probe() -> dict[str, Any]:
    """Best-of-5 time of a PROBE_SIZE² matmul in float32 and in bfloat16 on this CPU (with the process's threads)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, generator=gen)

    def best(x: Any, y: Any) -> float:
        x @ y  # warm-up: kernel selection, first-touch allocation
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(3):
                x @ y
            times.append((time.perf_counter() - t0) / 3)
        return min(times)

    f32 = best(a, b)
    bf16 = best(a.bfloat16(), b.bfloat16())
    return {"matmul": PROBE_SIZE, "threads": torch.get_num_threads(), "float32_ms": round(f32 * 1e3, 4),
            "bfloat16_ms": round(bf16 * 1e3, 4), "bf16_speedup": round(f32 / bf16, 3)}


def cpu_choice(bf16_speedup: float) -> str:
    return "bfloat16" if bf16_speedup >= BF16_MIN_SPEEDUP else "float32"


def resolve_dtype(spec: str, device: str) -> str:
    """A concrete dtype name for `spec` (`auto` or one of DTYPES) on `device` (`cpu`, `cuda`, `cuda:1`, ...)."""
    if spec != "auto":
        return spec
    if device.startswith("cuda"):
        import torch

        # A GPU this process cannot see (planning for a cluster, a Ray driver without one) is taken to have bf16,
        # as every GPU since Ampere has; a visible one is asked.
        return "float32" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "bfloat16"
    return cpu_choice(cpu_matmul_probe()["bf16_speedup"])


def resolve_bf16(switch: bool | str, device: str) -> bool:
    """The SFT `bf16` autocast switch: true / false, or `auto` = whether `auto` picks bfloat16 on `device`."""
    return resolve_dtype("auto", device) == "bfloat16" if switch == "auto" else bool(switch)


def record(spec: str | bool, resolved: str | bool, device: str) -> dict[str, Any]:
    """What a run writes about one precision choice: asked, chosen, where, and the CPU timings behind `auto`."""
    out: dict[str, Any] = {"requested": spec, "resolved": resolved, "device": device}
    if spec == "auto" and not device.startswith("cuda"):
        out["cpu_probe"] = cpu_matmul_probe()
    return out
