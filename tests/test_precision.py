"""`dtype: auto` and gradient checkpointing on real parts: the CPU matmul probe behind `auto`, the dtypes and sync
tolerance the RL driver hands its actors, bf16 base weights under float32 LoRA and AdamW state, the bf16
learner-vs-engine logprob gap within its calibrated tolerance, and checkpointing changing nothing but memory in a
real SFT run and a real RL update (an SFT adapter's dropout included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from longshort.config import load_recipe
from longshort.config.recipe import Recipe
from longshort.config.rl import RLConfig
from longshort.precision import (BF16_MIN_SPEEDUP, SYNC_TOLERANCE, cpu_choice, cpu_matmul_probe, resolve_bf16,
                                 resolve_dtype)
from longshort.rl.learner import PolicyLearner
from longshort.types import TrainSequence

REPO = Path(__file__).resolve().parents[1]
SFT_RECIPE = REPO / "recipes" / "tiny" / "sft_long.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- resolution -------------------------------------------------------------------------------------------
def test_auto_follows_the_measured_cpu_matmul():
    probe = cpu_matmul_probe()
    assert probe is cpu_matmul_probe()  # measured once per process
    assert probe["float32_ms"] > 0 and probe["bfloat16_ms"] > 0
    # the speedup is recorded to 3 decimals: on an AVX2-only CPU it is ~0.02 (bf16 emulated), where rel=1e-2 is
    # finer than the rounding
    assert probe["bf16_speedup"] == pytest.approx(probe["float32_ms"] / probe["bfloat16_ms"], rel=1e-2, abs=6e-4)
    assert resolve_dtype("auto", "cpu") == cpu_choice(probe["bf16_speedup"])
    # this project's machines: AMX/AVX512-BF16 (bf16 faster) and emulated bf16 (~14x slower), and the margin
    assert cpu_choice(1.8) == "bfloat16" and cpu_choice(1 / 14) == "float32" and cpu_choice(BF16_MIN_SPEEDUP * 0.99) == "float32"
    assert resolve_dtype("auto", "cuda") == "bfloat16"  # a GPU this process cannot see (planning) is taken as bf16
    assert [resolve_dtype(d, "cuda") for d in ("float32", "float16")] == ["float32", "float16"]
    assert resolve_bf16("auto", "cuda") and not resolve_bf16(False, "cuda") and resolve_bf16(True, "cpu")
    assert resolve_bf16("auto", "cpu") == (resolve_dtype("auto", "cpu") == "bfloat16")


def test_rl_driver_resolves_dtypes_and_the_sync_tolerance_for_its_actors():
    from longshort.rl.sync import resolve_precision

    r = Recipe()
    out, info = resolve_precision(r)
    assert (out.model.dtype, out.engine.dtype, out.rl.sync_tolerance) == ("float32", "float32", SYNC_TOLERANCE["float32"])
    assert r.rl.sync_tolerance is None and info["sync_tolerance_from"] == "dtype"  # the recipe itself is untouched
    r.model.dtype = "bfloat16"
    assert resolve_precision(r)[0].rl.sync_tolerance == SYNC_TOLERANCE["bfloat16"]
    r.model.dtype, r.rl.learner_gpus, r.rl.rollout_gpus = "auto", 1, 1  # GPU actors: auto = bf16 for both
    out, info = resolve_precision(r)
    assert (out.model.dtype, out.engine.dtype) == ("bfloat16", "float32") and info["learner"]["device"] == "cuda"
    r.engine.dtype, r.rl.learner_gpus, r.rl.rollout_gpus = "auto", 0, 0  # CPU actors: the measured choice, recorded
    out, info = resolve_precision(r)
    assert out.engine.dtype == out.model.dtype == resolve_dtype("auto", "cpu") and info["engine"]["cpu_probe"] == cpu_matmul_probe()
    r.rl.sync_tolerance = 0.2
    assert resolve_precision(r)[0].rl.sync_tolerance == 0.2 and resolve_precision(r)[1]["sync_tolerance_from"] == "recipe"


# ---- SFT ----------------------------------------------------------------------------------------------------
def _sft(tmp: Path, base: str, name: str, *extra: str):
    from longshort.sft.trainer import Trainer

    rec = load_recipe(str(SFT_RECIPE), [f"run.out_dir={tmp}", f"run.name={name}", f"model.base={base}", "sft.steps=3",
                                        "sft.warmup_steps=0", "sft.lora.dropout=0.0", "sft.eval_fraction=0", "sft.lr=3e-3",
                                        *extra])
    trainer = Trainer(rec, progress=False)
    info = trainer.run()
    rows = [json.loads(line) for line in (rec.run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, info, rows


def test_sft_gradient_checkpointing_changes_no_loss(tmp_path, tiny_model):
    """Three real LoRA optimizer steps: recomputing the activations gives the same losses and gradient norms."""
    _, _, plain = _sft(tmp_path, tiny_model, "plain")
    trainer, info, ckpt = _sft(tmp_path, tiny_model, "ckpt", "sft.gradient_checkpointing=true")
    assert trainer.model.is_gradient_checkpointing and info["precision"]["gradient_checkpointing"] is True
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], abs=1e-5)
    assert [r["grad_norm"] for r in ckpt] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-4)
    assert plain[-1]["loss"] < plain[0]["loss"]  # the steps trained something


def test_sft_auto_precision_is_recorded_and_keeps_lora_float32(tmp_path, tiny_model):
    trainer, info, rows = _sft(tmp_path, tiny_model, "auto", "model.dtype=auto", "sft.bf16=auto")
    chosen = resolve_dtype("auto", "cpu")
    assert info["dtype"] == chosen and info["precision"]["weights"]["requested"] == "auto"
    assert info["precision"]["weights"]["cpu_probe"]["bf16_speedup"] == cpu_matmul_probe()["bf16_speedup"]
    assert info["precision"]["bf16_autocast"]["resolved"] == (chosen == "bfloat16")
    assert json.loads((trainer.run_dir / "run.json").read_text())["precision"] == info["precision"]
    model = trainer.model
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert lora and {p.dtype for p in lora} == {torch.float32} and {p.dtype for p in frozen} == {getattr(torch, chosen)}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


# ---- RL learner -----------------------------------------------------------------------------------------------
def _samples(role: str, n: int = 4, length: int = 40) -> list[TrainSequence]:
    gen = torch.Generator().manual_seed(7)
    return [TrainSequence(role=role, input_ids=torch.randint(3, 800, (length,), generator=gen).tolist(),
                   mask=[0] * 16 + [1] * (length - 16), advantage=1.0 if i % 2 else -1.0) for i in range(n)]


def _dropout_adapter(src: str, out: Path) -> str:
    """A copy of an adapter whose config asks for LoRA dropout 0.1 (as an SFT adapter may)."""
    shutil.copytree(src, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["lora_dropout"] = 0.1
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return str(out)


def test_rl_gradient_checkpointing_gives_the_same_update(tiny_model, tiny_adapters, tmp_path):
    """One PPO update with non-zero advantages, with and without checkpointing: same loss terms, gradient norm and
    new adapter weights — the checkpointed forward runs in train mode, so the adapter's dropout must be off."""
    init = {"long": _dropout_adapter(tiny_adapters["long"], tmp_path / "long"), "short": tiny_adapters["short"]}
    out = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        lrn = PolicyLearner(tiny_model, init, dict(tiny_adapters), RLConfig(lr=5e-3, micro_batch_size=2, gradient_checkpointing=ckpt),
                            max_tokens={"long": 24, "short": 12})
        samples = _samples("long")
        stats = lrn.train("long", samples, [float(sum(sum(s.mask) for s in samples))])
        out[ckpt] = (stats, [p.detach().clone() for p in lrn.params["long"]], lrn.model.is_gradient_checkpointing)
    (a, pa, ga), (b, pb, gb) = out[False], out[True]
    assert (ga, gb) == (False, True)
    for k in ("pg", "kl", "entropy", "ratio"):
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-5, abs=1e-6), k
    assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-4) and a.grad_norm > 0
    assert max((x - y).abs().max().item() for x, y in zip(pa, pb)) < 1e-6


def test_bf16_learner_keeps_lora_and_adam_float32_and_matches_the_bf16_engine(tiny_model, tiny_adapters):
    """The calibration of SYNC_TOLERANCE['bfloat16'] on a smaller sample: HF engine and learner both bf16."""
    from longshort.config.core import EngineConfig
    from longshort.engines.base import GenRequest, SamplingParams
    from longshort.engines.hf_engine import HFEngine

    lrn = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(lr=1e-3, gradient_checkpointing=True),
                        max_tokens={"long": 24, "short": 12}, dtype="bfloat16")
    base_w = [p for n, p in lrn.model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base_w} == {torch.bfloat16} and {p.dtype for p in lrn.params["long"]} == {torch.float32}
    samples = _samples("long")
    lrn.train("long", samples, [float(sum(sum(s.mask) for s in samples))])
    assert {s["exp_avg"].dtype for s in lrn.optim["long"].state.values()} == {torch.float32}

    engine = HFEngine(tiny_model, EngineConfig(kind="hf", dtype="bfloat16", max_model_len=256, batch_size=8),
                      {"long": tiny_adapters["long"]}, seed=0)
    assert engine.dtype == "bfloat16"
    lrn2 = PolicyLearner(tiny_model, dict(tiny_adapters), dict(tiny_adapters), RLConfig(), max_tokens={"long": 24, "short": 12},
                         dtype="bfloat16")
    reqs = [GenRequest(prompt_ids=s.input_ids[:16], role="long", params=SamplingParams(temperature=1.0, max_tokens=32, seed=i,
                                                                                        ignore_eos=True))
            for i, s in enumerate(_samples("long", n=8))]
    comps = [c[0] for c in engine.generate(reqs)]
    mine = lrn2.logprobs("long", [r.prompt_ids + c.token_ids for r, c in zip(reqs, comps)])
    gaps = [abs(a - b) for r, c, m in zip(reqs, comps, mine) for a, b in zip(c.logprobs, m[16:])]
    engine.close()
    assert len(gaps) == 8 * 32 and 0 < max(gaps) <= SYNC_TOLERANCE["bfloat16"]  # bf16 differs, within the bound


def test_rl_run_with_auto_precision_and_checkpointing_passes_every_sync(ray_cluster, tmp_path, tiny_model, tiny_adapters):
    """`longshort rl` with model.dtype / engine.dtype `auto` and rl.gradient_checkpointing: the driver's choice reaches
    the actors (precision.json), the tolerance follows it, and every step's sync and rollout checks pass."""
    from conftest import RL_RECIPE, rl_overrides

    from longshort.cli import main

    args = rl_overrides(tmp_path, tiny_model, tiny_adapters, "rl.steps=2", "run.name=auto", "model.dtype=auto",
                        "engine.dtype=auto", "rl.gradient_checkpointing=true")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 0
    run = tmp_path / "auto"
    info = json.loads((run / "precision.json").read_text())
    chosen = resolve_dtype("auto", "cpu")
    assert info["learner"]["resolved"] == info["engine"]["resolved"] == chosen and info["gradient_checkpointing"] is True
    assert info["sync_tolerance"] == SYNC_TOLERANCE[chosen] and "cpu_probe" in info["learner"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        gaps = [r[f"{role}/logprob_gap_max"] for role in ("long", "short")]
        assert max(gaps) <= info["sync_tolerance"] and (chosen == "float32" or max(gaps) > 0)
    assert f"learner {chosen} on cpu" in (run / "summary.md").read_text()
