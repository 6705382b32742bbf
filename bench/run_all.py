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

# Order matters, and is kept whatever the order of --only: sync.py takes the sync share of the step from rl_step's entry.
SCRIPTS = {
    "rollout": ["bench/rollout.py", "--threads", "1"],
    "merged_serving": ["bench/merged_serving.py", "--threads", "1"],
    "rl_step": ["bench/rl_step.py", "--with-hf"],
    "sync": ["bench/sync.py"],
    "rl_demo": ["bench/rl_demo.py"],
    "offpolicy": ["bench/offpolicy.py"],
    "learner": ["bench/learner.py"],
    "mfu": ["bench/mfu.py"],
    "scaling": ["bench/scaling.py"],
}


def status(g: dict[str, Any]) -> str:
    return "met" if g["met"] else f"**missed** (off by {g['off_by']:.1f}×)"


def summary_rows(results: dict[str, Any]) -> list[str]:
    """One row per goal key of bench/results.json (`script.key`), then the entries without a goal."""
    rows = ["| key | result | goal | status |", "|---|---|---|---|"]
    r = results.get("rl_step", {})
    if "ratio_vs_trl" in r:
        g, ls = r["ratio_vs_trl"], r["longshort"]
        rows.append(f"| `rl_step.ratio_vs_trl` | {g['value']:.2f}× TRL GRPOTrainer's samples/s (longshort on {ls['engine']}, "
                    f"lora_mode {ls['lora_mode']}) | {g['goal']} | {status(g)} |")  # fmt: skip
    r = results.get("rollout", {})
    for key, what in (("ratio_vs_hf", "the HF engine (adapters)"), ("ratio_vs_vllm_nolora", "raw vLLM, no LoRA")):
        if key in r:
            g = r[key]
            per = ", ".join(f"{m} {v:.2f}×" for m, v in g["worst_of"].items())
            rows.append(f"| `rollout.{key}` | {g['value']:.2f}× {what} in tok/s, batch {r['batch']}, both roles "
                        f"(worse model; {per}) | {g['goal']} | {status(g)} |")  # fmt: skip
    r = results.get("sync", {})
    if "share_of_step" in r:
        g = r["share_of_step"]
        full = ", ".join(f"{x['model']} {x['full_over_lora']:.1f}×" for x in r["rows"])
        rows.append(f"| `sync.share_of_step` | {100 * g['value']:.1f}% of the RL step (lora_mode {g['lora_mode']}, its push "
                    f"included); full-weight / LoRA sync: {full} | {g['goal']} | {status(g)} |")  # fmt: skip
    r = results.get("rl_demo", {})
    if "speedup" in r:
        g = r["speedup"]
        rows.append(f"| `rl_demo.speedup` | demo RL stage, {r['config']['steps']} steps: HF {r['before']['steps_s']:.0f} s → "
                    f"vLLM merged {r['after']['steps_s']:.0f} s, {g['value']:.2f}× (wall with start-up {r['speedup_wall']:.2f}×) "
                    f"| {g['goal']} (none in the issue) | {status(g)} |")  # fmt: skip
    r = results.get("offpolicy", {})
    if "speedup" in r:
        g = r["speedup"]
        rows.append(f"| `offpolicy.speedup` | demo RL stage, median step 2+: rl.offpolicy_steps 0 → 1, {g['value']:.2f}× "
                    f"(bound from the phases {r['bound']:.2f}×) | {g['goal']} (none in the issue) | {status(g)} |")  # fmt: skip
    r = results.get("learner", {})
    if "speedup" in r:
        g = r["speedup"]
        rows.append(f"| `learner.speedup` | one demo step's update, padded + π_old scored → packed + π_old from the forward: "
                    f"{g['value']:.2f}× (packing {r['packing_speedup']:.2f}×, fused π_old {r['fused_speedup']:.2f}×) "
                    f"| {g['goal']} (none in the issue) | {status(g)} |")  # fmt: skip
    r = results.get("mfu")
    if r:
        rows.append(f"| `mfu` | {100 * r['best_rollout_fraction_of_best_peak']:.1f}% of the faster matmul peak "
                    f"({100 * r['best_rollout_fraction_bf16']:.0f}% of bf16, {100 * r['best_rollout_fraction_fp32']:.1f}% of fp32) "
                    f"| {r['target']} | {'met' if r['target_met'] else '**missed**'} |")  # fmt: skip
    r = results.get("scaling")
    if r:
        ks = ", ".join(f"{k} {v['exponent']:.2f}" for k, v in r["knobs"].items())
        rows.append(f"| `scaling` | exponents: {ks} | {r['target']} | — |")
    r = results.get("merged_serving")
    if r:
        ratios = ", ".join(f"{k} {v:.1f}×" for k, v in r["merged_over_adapter"].items())
        rows.append(f"| `merged_serving` | merged / adapter tok/s at batch {r['batch']}: {ratios} | none (picks `lora_mode: auto` on CPU) | — |")
    return rows


def findings(results: dict[str, Any]) -> list[str]:
    """The header's bullets: what bounds the missed goals, from the numbers in results.json."""
    out = []
    ro = results.get("rollout", {})
    if "ratio_vs_hf" in ro and not ro["ratio_vs_hf"]["met"]:
        cap = max(r["nolora_vs_hf"] for r in ro["rows"])
        caps = ", ".join(f"{r['model']} {r['nolora_vs_hf']:.2f}×" for r in ro["rows"])
        if cap < float(ro["ratio_vs_hf"]["goal"].split()[1]):  # even no LoRA at all misses the goal
            out.append(f"Raw vLLM with no LoRA at all runs at {caps} the HF engine on this CPU (Rollout engines): serving "
                       "LoRA roles costs vLLM at least as much as serving none, so `rollout.ratio_vs_hf`'s goal is out of "
                       "reach of any lora_mode here; it needs a faster engine (GPU vLLM), not another way of serving the roles.")  # fmt: skip
    rl = results.get("rl_step", {})
    if "ratio_vs_trl" in rl and not rl["ratio_vs_trl"]["met"]:
        ls, need = rl["longshort"], rl["trl"]["step_s"] / 3
        over = [k for k in ("rollout", "learn", "sync") if ls[k + "_s"] > need]
        hf = f"; the same loop on the HF engine: {rl['ratio_hf_vs_trl']:.2f}× TRL" if "ratio_hf_vs_trl" in rl else ""
        out.append(f"longshort's RL step ({ls['engine']}, {ls['lora_mode']}): rollout {100 * ls['rollout_s'] / ls['step_s']:.0f}%, "
                   f"learn {100 * ls['learn_s'] / ls['step_s']:.0f}%, sync {100 * ls['sync_s'] / ls['step_s']:.0f}%; 3× TRL "
                   f"needs a step of {need:.2f} s, and {' and '.join(over) or 'no phase'} alone take{'s' if len(over) == 1 else ''} "
                   f"longer than that (RL step){hf}.")  # fmt: skip
    out.append("Ray starts actors at nice 15 (`RAY_worker_niceness`): on a machine shared with other jobs, longshort's "
               "rollout and learner actors get less CPU than an ordinary process.")  # fmt: skip
    return [f"- {x}" for x in out]


def write_header(results: dict[str, Any], command: str) -> None:
    """The doc's top: what, how to reproduce, the machine, the summary table; the sections follow unchanged."""
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    m = re.search(r"^## ", text, re.M)
    sections = text[m.start() :] if m else ""
    run = results.get("run_all", {})
    fresh = set(run.get("ran", SCRIPTS)) - set(run.get("failed", []))
    kept = [n for n in SCRIPTS if n not in fresh and n in results]
    kept = f"; from other runs: {', '.join(kept)}" if kept else ""
    when = ", ".join(f"{n} {results[n].get('measured', '(undated: an earlier run)')}" for n in SCRIPTS if n in results)
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
command), on {run.get('machine', machine())}. When each entry was measured: {when}.
The CPU was shared with other agents' jobs while they were taken (each section gives the load average
around its run), so timings are noisy; comparisons within a section ran side by side in the same run. No
GPU was used: on a GPU machine install the `gpu` extra (vLLM for CUDA) and rerun.

What the profiles and runs show (details in the sections):
{chr(10).join(findings(results))}

## Summary

Each goal key of bench/results.json is `{{"value", "goal", "met", "off_by"}}` (`off_by`: how far a missed goal is, as a
factor); ratios are measured side by side in one run of their script.

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
    asked = [n for n in (a.only.split(",") if a.only else SCRIPTS) if n and n not in a.skip.split(",")]
    unknown = [n for n in asked if n not in SCRIPTS]
    names = [n for n in SCRIPTS if n in asked]
    if unknown:
        sys.exit(f"bench/run_all.py: unknown benchmark(s) {', '.join(unknown)} (choose from {', '.join(SCRIPTS)})")
    t0 = time.perf_counter()
    failed = []
    for name in names:
        cmd = [sys.executable, *SCRIPTS[name]] + (["--quick"] if a.quick else [])
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
