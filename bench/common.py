"""Helpers shared by the bench scripts: the RL recipe they time, the machine description, results and doc I/O.

Every script writes its own entry of bench/results.json (merged, never overwritten whole) and its own `## `
section of docs/benchmarks.md, so scripts can run alone or all together (`make bench`, bench/run_all.py).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from longshort.io import atomic_write_text, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"
DOC = ROOT / "docs" / "benchmarks.md"
RECIPE = ROOT / "recipes" / "tiny" / "rl.yaml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def machine() -> str:
    """CPU model, cores, memory, torch/vLLM versions: enough to tell two result files apart."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import torch

    try:
        import vllm

        vv = vllm.__version__
    except ImportError:
        vv = "absent"
    return f"{cpu}, {os.cpu_count()} CPUs{mem}; torch {torch.__version__}, vLLM {vv}, Python {platform.python_version()}"


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rl_overrides(out_dir: str, model: str, *, steps: int, problems: int, group: int, max_tokens: int,
                 lr: float = 1e-3, beta: float = 0.01, protocol: str = "long_cot") -> list[str]:  # fmt: skip
    """recipes/tiny/rl.yaml reduced to a plain GRPO job: one role (long) answers in one call (`long_cot`), a
    fresh LoRA, reward = correctness only, one PPO epoch and one optimizer step per RL step, the whole step's
    sequences in one forward (what TRL's GRPOTrainer does with the matching config in rl_step.py)."""
    return [
        f"run.out_dir={out_dir}",
        f"model.base={model}",
        f"protocol.name={protocol}",
        f"protocol.max_tokens={max_tokens}",
        "protocol.temperature=1.0",
        "protocol.long_cot_role=long",
        f"roles.long.max_tokens={max_tokens}",
        "roles.long.adapter=null",
        "roles.short.adapter=null",
        f"rl.steps={steps}",
        f"rl.problems_per_step={problems}",
        f"rl.group_size={group}",
        f"rl.lr={lr}",
        f"rl.kl_coef={beta}",
        "rl.estimator=grpo",
        "rl.loss_agg=token_mean",
        "rl.ppo_epochs=1",
        "rl.minibatches=1",
        f"rl.micro_batch_size={problems * group}",
        "rl.rewards.format=0",
        "rl.rewards.length=0",
        "rl.rewards.synergy=0",
        "rl.lora.r=8",
        "rl.lora.alpha=16",
        f"rl.checkpoint_every={steps}",
        "rl.log_episodes=0",
        "synthetic.n=200",
    ]


def build_model(root: Path, shape: Any = None) -> str:
    """The embedded tiny Qwen2 (random weights, seed 0) saved under `root`."""
    from longshort.models import build_tiny

    return str(build_tiny(root, shape, seed=0))


def count_params(model_path: str) -> dict[str, int]:
    """Total and non-embedding parameters of the model at `model_path` (FLOP counts use the total)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb}


def save_result(name: str, entry: dict[str, Any]) -> None:
    """Merge `entry` into bench/results.json under `name` (other scripts' entries are kept), stamped with when it was
    measured (kept by a --doc-only rewrite), so the doc can tell this run's numbers from older ones."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    entry.setdefault("measured", time.strftime("%Y-%m-%d %H:%M"))
    results[name] = entry
    write_json(RESULTS, results)


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def write_section(title: str, body: str, before: str | None = None) -> None:
    """Replace (or add) the `## title` section of docs/benchmarks.md; new sections go before `## before` if given."""
    section = f"## {title}\n\n{body.strip()}\n"
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n\nEach section is written by its script in `bench/`.\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    elif before and (m := re.search(rf"^## {re.escape(before)}\n", text, re.M)):
        text = text[: m.start()] + section + "\n" + text[m.start() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(DOC, text)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goal(value: float, op: str, target: float, **extra: Any) -> dict[str, Any]:
    """A headline number with its goal: {value, goal, met, off_by} plus `extra`. `off_by` is how far a missed goal
    is, as a factor (>= goals: target / value, <= goals: value / target); 1.0 or less when met."""
    met_ = value >= target if op == ">=" else value <= target
    off = (target / value if value else float("inf")) if op == ">=" else (value / target)
    return {"value": value, "goal": f"{op} {target:g}", "met": met_, "off_by": round(off, 2), **extra}


def goal_text(g: dict[str, Any], fmt: str = "{:.2f}×") -> str:
    """'1.30× (goal >= 5, NOT met: 3.8× short)' for a `goal` dict."""
    v = fmt.format(g["value"])
    return f"{v} (goal {g['goal']}, met)" if g["met"] else f"{v} (goal {g['goal']}, NOT met: off by {g['off_by']:.1f}×)"
