"""Weight sync: LoRA-only (what longshort does) vs full weights, and sync as a share of the RL step.

In one process, a `PolicyLearner` (tiny model, LoRA on all seven projections, random non-zero B) and a vLLM
engine serving it. Each sync is timed from the learner's tensors to the engine serving them, up to the first
token it generates with them (vLLM loads a new LoRA lazily, on first use), minus the same one-token call with
the weights already in place:

- LoRA: `export_adapter` (adapter_config.json + LoRA safetensors) -> written to a fresh folder ->
  `engine.set_adapter` (new LoRA id) -> first call.  This is rl/sync.py's `push` without Ray's object store.
- full: the adapter merged into the base weights (peft merge/unmerge) -> the whole state dict saved as
  safetensors -> vLLM's in-place `reload_weights` from that folder -> first call on the base. The usual way an
  engine is given a new full-weight policy without restarting it.
- merged (`engine.lora_mode: merged`, what `auto` picks on CPU): the same adapter export and write -> the engine's
  `set_adapter`, which merges it into the role's own vLLM engine in place -> first call; plus the logprob probe
  the RL sync runs after every push (engine `score` and learner `logprobs` of one sequence), timed apart.

After each full sync the engine's base logprobs are checked against the learner's merged-adapter logprobs,
so the timed path really delivers the new policy. The share of the step comes from the `rl_step` entry of
bench/results.json (`time/sync` of `run_rl`, which also runs the logprob probe), else from a short `run_rl` here.

    .venv/bin/python bench/sync.py [--quick] [--repeats 3] [--model tiny-3M,qwen2-25M]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import RECIPE, goal, goal_text, load_avg, load_results, machine, median, rl_overrides, save_result, write_section  # noqa: E402

GOAL = 0.05  # sync <= 5% of the RL step
SHAPES = {"tiny-3M": {}, "qwen2-25M": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4, "intermediate_size": 1536}}


def _merged_state(learner: Any, role: str) -> dict[str, Any]:
    """The base weights with `role`'s LoRA merged in, under the base checkpoint's names (learner left unchanged)."""
    peft = learner.model
    peft.base_model.set_adapter(role)
    peft.merge_adapter([role])
    try:
        out = {}
        for name, t in peft.get_base_model().state_dict().items():
            if "lora_" in name:
                continue
            out[name.replace(".base_layer.", ".")] = t.detach().clone().contiguous()
        return out
    finally:
        peft.unmerge_adapter()


def before_export(learner: Any, role: str) -> dict[str, bytes]:
    """The adapter export as it was before the profile (PEFT's save_pretrained into a temporary folder, which also
    writes a README model card): kept to measure the before/after of `PolicyLearner.export_adapter`."""
    with tempfile.TemporaryDirectory() as tmp:
        learner.model.save_pretrained(tmp, selected_adapters=[role])
        root = Path(tmp) / role if (Path(tmp) / role).is_dir() else Path(tmp)
        return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file() and f.suffix != ".md"}


def one_token(engine: Any, prompt: list[int], role: str | None) -> float:
    from longshort.engines.base import GenRequest, SamplingParams

    t = time.perf_counter()
    engine.generate([GenRequest(prompt, role, SamplingParams(temperature=1.0, max_tokens=1, seed=0, ignore_eos=True))])
    return time.perf_counter() - t


def measure(root: Path, name: str, shape: dict[str, int], repeats: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from common import build_model
    from longshort.config.core import EngineConfig, TinyModelConfig
    from longshort.config.rl import RLConfig
    from longshort.engines import make_engine
    from longshort.rl.learner import PolicyLearner, write_adapter

    model = build_model(root / name, TinyModelConfig(**shape))
    learner = PolicyLearner(model, {"long": None, "short": None}, {"long": None, "short": None}, RLConfig(),
                            max_tokens={"long": 64, "short": 64})  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make every policy the base: make the adapter matter
        for p in learner.params["long"]:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    cfg = EngineConfig(dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=512)
    start = write_adapter(learner.export_adapter("long"), root / f"{name}-lora-0")
    engine = make_engine("vllm", model, cfg, {"long": str(start)}, seed=0)
    prompt = list(range(20, 84))
    lora: dict[str, list[float]] = {"export": [], "write": [], "load_and_first_call": [], "warm_call": [], "before_export": []}
    full: dict[str, list[float]] = {"merge_export": [], "write": [], "reload": [], "first_call": [], "warm_call": []}
    max_diff = 0.0
    try:
        one_token(engine, prompt, "long")
        one_token(engine, prompt, None)
        for i in range(1, repeats + 1):
            t0 = time.perf_counter()
            files = learner.export_adapter("long")
            t1 = time.perf_counter()
            path = write_adapter(files, root / f"{name}-lora-{i}")
            engine.set_adapter("long", str(path))
            t2 = time.perf_counter()
            lora["export"].append(t1 - t0)
            lora["write"].append(t2 - t1)
            lora["load_and_first_call"].append(one_token(engine, prompt, "long"))
            lora["warm_call"].append(one_token(engine, prompt, "long"))
            lora_bytes = sum(len(b) for b in files.values())
            t0 = time.perf_counter()
            before = before_export(learner, "long")
            lora["before_export"].append(time.perf_counter() - t0)
            engine.set_adapter("long", str(write_adapter(before, root / f"{name}-before-{i}")))
            got = engine.score([prompt], ["long"], [1])[0]  # both exports must serve the same adapter
            want = learner.logprobs("long", [prompt])[0][1:]
            before_diff = max(abs(x - y) for x, y in zip(got, want))

            t0 = time.perf_counter()
            state = _merged_state(learner, "long")
            t1 = time.perf_counter()
            folder = root / f"{name}-full-{i}"
            folder.mkdir()
            save_file(state, str(folder / "model.safetensors"))
            shutil.copy(Path(model) / "config.json", folder / "config.json")
            t2 = time.perf_counter()
            engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
            t3 = time.perf_counter()
            full["merge_export"].append(t1 - t0)
            full["write"].append(t2 - t1)
            full["reload"].append(t3 - t2)
            full["first_call"].append(one_token(engine, prompt, None))
            full["warm_call"].append(one_token(engine, prompt, None))
            full_bytes = (folder / "model.safetensors").stat().st_size
            got = engine.score([prompt], [None], [1])[0]
            want = learner.logprobs("long", [prompt])[0][1:]
            max_diff = max(max_diff, max(abs(a - b) for a, b in zip(got, want)))
            shutil.rmtree(folder)
            # Back to the original base (untimed): the next LoRA round must run on the base the adapter belongs to.
            engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": model})
    finally:
        engine.close()
    merged: dict[str, list[float]] = {"export": [], "write": [], "push": [], "first_call": [], "warm_call": [],
                                      "probe_engine": [], "probe_learner": []}  # fmt: skip
    merged_diff = 0.0
    engine = make_engine("vllm", model, EngineConfig(**{**vars(cfg), "lora_mode": "merged"}), {"long": str(start)}, seed=0)
    try:
        one_token(engine, prompt, "long")
        for i in range(1, repeats + 1):
            t0 = time.perf_counter()
            files = learner.export_adapter("long")
            t1 = time.perf_counter()
            path = write_adapter(files, root / f"{name}-merged-{i}")
            t2 = time.perf_counter()
            engine.set_adapter("long", str(path))
            t3 = time.perf_counter()
            merged["export"].append(t1 - t0)
            merged["write"].append(t2 - t1)
            merged["push"].append(t3 - t2)
            merged["first_call"].append(one_token(engine, prompt, "long"))
            merged["warm_call"].append(one_token(engine, prompt, "long"))
            t0 = time.perf_counter()
            got = engine.score([prompt], ["long"], [1])[0]
            t1 = time.perf_counter()
            want = learner.logprobs("long", [prompt])[0][1:]
            merged["probe_engine"].append(t1 - t0)
            merged["probe_learner"].append(time.perf_counter() - t1)
            merged_diff = max(merged_diff, max(abs(a - b) for a, b in zip(got, want)))
    finally:
        engine.close()
    mm = {k: median(v) for k, v in merged.items()}
    merged_s = mm["export"] + mm["write"] + mm["push"] + max(0.0, mm["first_call"] - mm["warm_call"])
    med = {k: median(v) for k, v in lora.items()}
    lora_s = med["export"] + med["write"] + max(0.0, med["load_and_first_call"] - med["warm_call"])
    fm = {k: median(v) for k, v in full.items()}
    full_s = fm["merge_export"] + fm["write"] + fm["reload"] + max(0.0, fm["first_call"] - fm["warm_call"])
    return {
        "model": name,
        "params": sum(p.numel() for n, p in learner.model.named_parameters() if "lora_" not in n),
        "repeats": repeats,
        "lora_bytes": lora_bytes,
        "full_bytes": full_bytes,
        "lora_s": round(lora_s, 4),
        "full_s": round(full_s, 4),
        "full_over_lora": round(full_s / lora_s, 2),
        "merged_s": round(merged_s, 4),
        "merged_over_lora": round(merged_s / lora_s, 2),
        "merged_parts_s": {k: round(v, 4) for k, v in mm.items()},
        "merged_logprob_max_diff": merged_diff,
        "lora_parts_s": {k: round(v, 4) for k, v in med.items()},
        "full_parts_s": {k: round(v, 4) for k, v in fm.items()},
        "full_sync_logprob_max_diff": max_diff,
        "before_export_s": round(med["before_export"], 4),
        "before_export_logprob_max_diff": before_diff,
    }


def step_share(root: Path, quick: bool) -> dict[str, Any]:
    """Sync share of the RL step: from rl_step's longshort run if recorded, else a short run_rl here."""
    prev = load_results().get("rl_step", {}).get("longshort")
    if prev:
        return from_rl_step(prev)
    from common import build_model
    from longshort.config.recipe import load_recipe
    from longshort.rl.loop import run_rl

    model = build_model(root / "share-model")
    steps = 3 if quick else 4
    over = rl_overrides(str(root / "share"), model, steps=steps, problems=2 if quick else 4, group=4, max_tokens=32 if quick else 48)
    run_rl(load_recipe(str(RECIPE), over + [f"rl.ray_num_cpus={os.cpu_count()}", "engine.lora_mode=auto"]), progress=False)
    rows = [json.loads(x) for x in (root / "share" / "tiny-rl" / "metrics.jsonl").read_text().splitlines()][1:]
    mode = json.loads((root / "share" / "tiny-rl" / "precision.json").read_text())["engine_lora_mode"]["resolved"]
    return {"source": f"run_rl here, {steps} steps, medians of steps 2..", "step_s": round(median([r["time/step"] for r in rows]), 3),
            "sync_s": round(median([r["time/sync"] for r in rows]), 3), "lora_mode": mode}  # fmt: skip


def from_rl_step(prev: dict[str, Any]) -> dict[str, Any]:
    return {"source": "bench/results.json rl_step.longshort (run_rl medians)", "step_s": prev["step_s"], "sync_s": prev["sync_s"],
            "lora_mode": prev.get("lora_mode", "adapter")}  # fmt: skip


def judge(res: dict[str, Any]) -> None:
    s = res["share"]
    res["share_of_step"] = goal(round(s["sync_s"] / s["step_s"], 4), "<=", GOAL, lora_mode=s["lora_mode"])


def write_doc(res: dict[str, Any]) -> None:
    rows = [("| model | LoRA bytes | full bytes | LoRA sync s | full sync s | merged sync s | full / LoRA | merged / LoRA "
             "| probe s (engine + learner) | logprob check: full, merged |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in res["rows"]:
        mp = r["merged_parts_s"]
        rows.append(f"| {r['model']} | {r['lora_bytes'] / 1e6:.2f} MB | {r['full_bytes'] / 1e6:.1f} MB | {r['lora_s']:.3f} | "
                    f"{r['full_s']:.3f} | {r['merged_s']:.3f} | {r['full_over_lora']:.1f}× | {r['merged_over_lora']:.1f}× | "
                    f"{mp['probe_engine']:.3f} + {mp['probe_learner']:.3f} | max diff {r['full_sync_logprob_max_diff']:.1e}, "
                    f"{r['merged_logprob_max_diff']:.1e} |")  # fmt: skip
    s = res["share"]
    r0 = res["rows"][0]
    now, before, before_diff = f"{r0['lora_parts_s']['export']:.3f}", f"{r0['before_export_s']:.3f}", f"{r0['before_export_logprob_max_diff']:.1e}"
    parts = "; ".join(f"{r['model']}: LoRA {r['lora_parts_s']}, full {r['full_parts_s']}, merged {r['merged_parts_s']}" for r in res["rows"])
    g = res["share_of_step"]
    bound = ""
    if not g["met"]:
        parts_s = (r0["merged_s"], r0["merged_parts_s"]) if g["lora_mode"] == "merged" else (r0["lora_s"], r0["merged_parts_s"])
        probe = parts_s[1]["probe_engine"] + parts_s[1]["probe_learner"]
        rest = s["sync_s"] - parts_s[0] - probe
        bound = (f" What bounds it: the step's sync ({s['sync_s']:.3f} s) would have to fit in {GOAL * s['step_s']:.3f} s. "
                 f"Timed here in one process on {r0['model']}, the {g['lora_mode']} push takes {parts_s[0]:.3f} s and the probe "
                 f"{probe:.3f} s; the other {max(rest, 0.0):.3f} s of the step's sync lie outside these parts (the Ray "
                 "actor calls and object-store copy between the learner and rollout actors, which this script does not "
                 "time).")  # fmt: skip
    body = f"""Time from the learner's updated tensors to the vLLM engine generating with them, LoRA-only (longshort's
sync: export the adapter, write it, register it under a new LoRA id, vLLM loads it on first use) vs full
weights (merge the LoRA into the base, save the whole state dict, vLLM `reload_weights` in place) vs merged mode
(`engine.lora_mode: merged`: the same adapter files, merged by `set_adapter` into the role's own engine in place). Each
timing is the median of {res['repeats']} syncs and counts up to the first generated token, minus a warm
one-token call; the learner side runs one torch thread, as in `run_rl`'s 1-CPU actor. After each full and merged
sync the engine's logprobs are checked against the learner's (after a full sync the original base is then reloaded,
untimed); "probe" is that check as the RL sync runs it after each push (engine `score` + learner `logprobs`, 64 tokens).

```
{res['command']}
```

{chr(10).join(rows)}

`sync.share_of_step` (`{s['source']}`, engine.lora_mode {g['lora_mode']}): sync {s['sync_s']:.3f} s of a
{s['step_s']:.3f} s step = **{goal_text(g, '{:.1%}')}** (this `time/sync` is the whole push, the merge into the role's
engine included in merged mode, plus the logprob probe that verifies it).{bound}

Parts (median seconds): {parts}.

Profile of the LoRA sync (cProfile of `PolicyLearner.export_adapter`, before): about 60% of the export was
PEFT's `save_pretrained` writing a README model card (`create_or_update_model_card` compiles a Jinja template on
every save), most of the rest `get_peft_model_state_dict`. `export_adapter` now writes the two files directly
(`get_peft_model_state_dict` + `safetensors.torch.save` + the adapter config). Before/after, side by side in this
run: the old export (`before_export` in bench/sync.py) {before} s, the current one {now} s; the engine serves both
with the learner's logprobs (max diff of the old one {before_diff}).

Measured on {res['machine']}; CPU shared with other jobs (load average {res['load_avg_before']} before,
{res['load_avg_after']} after).
"""
    write_section("Weight sync: LoRA vs full", body, before="Rollout engines")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, tiny-3M only")
    p.add_argument("--doc-only", action="store_true", help="rewrite the doc section from bench/results.json, run nothing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="tiny-3M,qwen2-25M")
    a = p.parse_args()
    if a.doc_only:  # also re-reads the step share, so it matches the rl_step entry now in results.json
        res = load_results()["sync"]
        prev = load_results().get("rl_step", {}).get("longshort")
        if prev:
            res["share"] = from_rl_step(prev)
        judge(res)
        save_result("sync", res)
        write_doc(res)
        return
    import torch

    torch.set_num_threads(1)  # the learner side as in run_rl: a Ray actor with 1 CPU (OMP_NUM_THREADS=1)
    names = ["tiny-3M"] if a.quick else a.model.split(",")
    repeats = 2 if a.quick else a.repeats
    res: dict[str, Any] = {"what": "LoRA-only vs full-weight sync into the vLLM engine; sync share of the RL step",
                           "command": "python bench/sync.py " + " ".join(sys.argv[1:]), "machine": machine(),
                           "load_avg_before": load_avg(), "repeats": repeats, "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for name in names:
            row = measure(Path(tmp), name, SHAPES[name], repeats)
            print(row, flush=True)
            res["rows"].append(row)
        res["share"] = step_share(Path(tmp), a.quick)
    res["load_avg_after"] = load_avg()
    judge(res)
    print(f"sync.share_of_step {goal_text(res['share_of_step'], '{:.1%}')}")
    save_result("sync", res)
    write_doc(res)


if __name__ == "__main__":
    main()
