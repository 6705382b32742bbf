"""Merged-weight role serving: tokens/s of a LoRA role served as an adapter vs merged into its own copy of the base.

Side by side in one run, for both engines (vLLM, HF) and both models of bench/rollout.py (the embedded tiny-3M and a
~25M-parameter Qwen2): role `long` (LoRA r 8 on all seven projections, random non-zero B), batch 64, temperature 1,
eos ignored (every sequence runs to max_tokens), float32, one warm-up call then one timed call, in
`engine.lora_mode` adapter and merged. Also per merged engine: how long an in-place push (`set_adapter`: merge +
reload) takes, which is also the cost of the design not built (one engine whose weights are swapped between role
batches pays it at every role switch), and the largest |logprob| difference between the modes on the adapter mode's
sampled tokens. Writes the "merged_serving" entry of bench/results.json and its section of docs/benchmarks.md.

    .venv/bin/python bench/merged_serving.py [--batch 64] [--max-tokens 64] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from common import load_avg, machine, save_result, write_section  # noqa: E402
from rollout import MODELS, build_assets, prompts  # noqa: E402

from longshort.config.core import EngineConfig  # noqa: E402

MODES = ("adapter", "merged")


def timed_call(engine, batch: int, max_tokens: int, seed: int):
    from longshort.engines.base import GenRequest, SamplingParams

    reqs = [GenRequest(p, "long", SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed + i, ignore_eos=True))
            for i, p in enumerate(prompts(engine.tokenizer, batch))]
    t0 = time.perf_counter()
    out = engine.generate(reqs)
    wall = time.perf_counter() - t0
    tokens = sum(len(c[0].token_ids) for c in out)
    assert tokens == batch * max_tokens, "eos is ignored: every sequence runs to max_tokens"
    return [r.prompt_ids for r in reqs], [c[0] for c in out], tokens, wall


def run(args) -> dict:
    from longshort.engines import make_engine

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-merged-") as tmp:
        models = list(MODELS.items())[:1] if args.quick else MODELS.items()
        for name, shape in models:
            model, adapters, params = build_assets(Path(tmp), name, shape)
            adapter = adapters["long"]
            for kind in ("vllm", "hf"):
                ref = None  # the adapter mode's sampled sequences and logprobs, scored again by the merged engine
                for mode in MODES:
                    cfg = EngineConfig(dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=1024,
                                       batch_size=args.batch, lora_mode=mode)
                    t0 = time.perf_counter()
                    engine = make_engine(kind, model, cfg, {"long": adapter}, seed=0)
                    start_s = time.perf_counter() - t0
                    try:
                        timed_call(engine, args.batch, 4, 1000)  # warm-up
                        ps, comps, tokens, wall = timed_call(engine, args.batch, args.max_tokens, 0)
                        row = {"model": name, "params": params, "engine": kind, "mode": mode, "batch": args.batch,
                               "tokens": tokens, "wall_s": round(wall, 4), "tok_s": round(tokens / wall, 1),
                               "start_s": round(start_s, 1)}
                        seqs = [p + c.token_ids for p, c in zip(ps, comps)]
                        if ref is None:
                            ref = (seqs, [c.logprobs for c in comps], [len(p) for p in ps])
                        else:
                            got = engine.score(ref[0], ["long"] * len(ref[0]), ref[2])
                            row["logprob_max_diff_vs_adapter"] = max(abs(a - b) for x, y in zip(got, ref[1]) for a, b in zip(x, y))
                            pushes = []
                            for _ in range(3):
                                t0 = time.perf_counter()
                                engine.set_adapter("long", adapter)
                                pushes.append(time.perf_counter() - t0)
                            row["push_s"] = round(sorted(pushes)[1], 4)
                        rows.append(row)
                        print(row, flush=True)
                    finally:
                        engine.close()
    speed = {(r["model"], r["engine"], r["mode"]): r["tok_s"] for r in rows}
    ratios = {f"{m}/{k}": round(speed[(m, k, "merged")] / speed[(m, k, "adapter")], 2)
              for (m, k, mode) in speed if mode == "adapter"}
    return {
        "what": "generated tokens/s of role long, engine.lora_mode adapter vs merged, temperature 1, eos ignored",
        "command": "python bench/merged_serving.py " + " ".join(sys.argv[1:]),
        "batch": args.batch,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "machine": machine(),
        "load_avg_before": args.load_before,
        "load_avg_after": load_avg(),
        "rows": rows,
        "merged_over_adapter": ratios,
        "faster_on_cpu": {k: "merged" if v > 1 else "adapter" for k, v in ratios.items()},
    }


def table(res: dict) -> str:
    lines = ["| model | engine | adapter tok/s | merged tok/s | merged / adapter | push (merge + reload) | max logprob diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, ratio in res["merged_over_adapter"].items():
        m, k = key.split("/")
        pick = {r["mode"]: r for r in res["rows"] if r["model"] == m and r["engine"] == k}
        mg = pick["merged"]
        lines.append(f"| {m} | {k} | {pick['adapter']['tok_s']:,.0f} | {mg['tok_s']:,.0f} | {ratio:.1f}× | "
                     f"{mg['push_s']:.2f} s | {mg['logprob_max_diff_vs_adapter']:.1e} |")
    return "\n".join(lines)


def write_doc(res: dict) -> None:
    body = f"""`engine.lora_mode` adapter (LoRA adapters on one base) vs merged (each role's LoRA merged into its own copy of
the base, served with no LoRA; docs/engines.md "Merged roles"): generated tokens/s of role `long` (LoRA r 8 on
the seven projections), batch {res['batch']}, `max_tokens={res['max_tokens']}`, temperature 1, eos ignored, float32,
one warm-up call then one timed call; both modes and both engines side by side in one run.

```
{res['command']}
```

{table(res)}

"push" is one in-place `set_adapter` in merged mode (median of 3: merge W + scale·B@A in float32 from the files,
reload into the running engine, reset its prefix cache) — what every RL sync costs per role, and what a single
engine swapping role weights between batches would pay at every role switch. "max logprob diff": merged-mode
`score` of the adapter mode's sampled sequences against the adapter mode's logprobs.

Measured on {res['machine']}; threads per engine: {res['threads'] or 'library defaults'}; load average
{res['load_avg_before']:.1f} before and {res['load_avg_after']:.1f} after (a shared machine: absolute numbers are noisy,
the modes ran in the same run). `engine.lora_mode: auto` picks merged on CPU, adapter on GPU.
"""
    write_section("Merged-weight role serving", body, before="GPU check")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per engine (torch for HF, OpenMP binding for vLLM)")
    p.add_argument("--quick", action="store_true", help="the tiny model only, 32 tokens")
    args = p.parse_args()
    if args.quick:
        args.max_tokens = min(args.max_tokens, 32)
    args.load_before = load_avg()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{args.threads - 1}"
    res = run(args)
    print(table(res))
    save_result("merged_serving", res)
    write_doc(res)


if __name__ == "__main__":
    main()
