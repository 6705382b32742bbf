"""bench/gpu_check.py, the prepared GPU check: it needs only what the GPU machine has (no vllm, no ray, nothing
beyond torch/transformers/peft/accelerate/safetensors/tokenizers/pyarrow and their dependencies), and its `--small`
mode runs the whole script on this CPU in < 60 s with every check passing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
GPU_IMAGE = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pyarrow"]

# Run in a fresh interpreter: vllm and ray made unimportable, and every module that longshort or the script
# itself imports recorded; each third-party one must belong to the GPU image's packages or what they require
# (those packages' own guarded optional imports, e.g. transformers trying PIL, are theirs, not ours).
AUDIT = r"""
import builtins, importlib.metadata as md, json, runpy, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
for blocked in ("vllm", "ray"):
    sys.modules[blocked] = None  # `import vllm` now raises ImportError
ours, real_import = set(), builtins.__import__
def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    caller = (globals or {}).get("__name__", "")
    if level == 0 and (caller == "__main__" or caller.startswith("longshort")):
        ours.add(name.split(".")[0])
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = recording_import
sys.argv = ["gpu_check.py", "--small", "--device", "cpu", "--out", sys.argv[1]]
try:
    runpy.run_path(%r, run_name="__main__")
except SystemExit as e:
    code = e.code
builtins.__import__ = real_import
allowed, todo = set(), [canonicalize_name(p) for p in %r]
while todo:
    name = todo.pop()
    if name in allowed:
        continue
    allowed.add(name)
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        continue
    for r in map(Requirement, reqs):
        if r.marker is None or r.marker.evaluate({"extra": ""}):
            todo.append(canonicalize_name(r.name))
owners = md.packages_distributions()
third = {t for t in ours if t not in sys.stdlib_module_names and t != "longshort"}
unknown = sorted(t for t in third if t not in owners)
used = {canonicalize_name(d) for t in third if t in owners for d in owners[t]}
print(json.dumps({"code": code, "used": sorted(used), "outside": sorted(used - allowed), "unknown": unknown}))
"""


def test_the_script_imports_neither_vllm_nor_ray():
    names = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names and not names & {"vllm", "ray"}


@pytest.mark.integration  # no fixture says so: the script trains (SFT, an RL update), generates and exports
def test_small_mode_runs_on_this_cpu_with_only_the_gpu_images_packages(tmp_path):
    out = tmp_path / "results.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", AUDIT % (str(SCRIPT), GPU_IMAGE), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads(proc.stdout.strip().splitlines()[-1])
    assert audit["code"] == 0 and audit["outside"] == [] and audit["unknown"] == [], audit
    assert "torch" in audit["used"] and "peft" in audit["used"]
    assert wall < 60, wall
    res = json.loads(out.read_text())
    assert res["mode"] == "small" and "NOT a GPU measurement" in res["what"] and res["device"] == "cpu" and res["device_name"]
    assert res["ok"] is True
    no_ckpt, ckpt = res["sft"]
    assert (no_ckpt["gradient_checkpointing"], ckpt["gradient_checkpointing"]) == (False, True)
    assert res["sft_checkpointing"]["loss_diff"] < 1e-2 and no_ckpt["tokens_per_s"] > 0 and ckpt["peak_gib"] > 0
    # `auto` on this CPU follows the measured matmul; LoRA and AdamW state stay float32 over the base
    assert res["dtype_auto"] == ("bfloat16" if res["cpu_probe"]["bf16_speedup"] >= 1.3 else "float32")
    assert no_ckpt["weights"] == res["rl_update"]["weights"] == res["generate"]["dtype"] == res["dtype_auto"]
    assert no_ckpt["lora_dtype"] == res["rl_update"]["lora_dtype"] == res["rl_update"]["adam_state_dtype"] == "float32"
    assert res["generate"]["batch"] == 64 and res["generate"]["generated_tokens"] == 64 * 8
    assert res["logprob_gap"]["sampled_tokens"] == 64 * 8 and res["logprob_gap"]["within_tolerance"]
    assert res["export"]["within_tolerance"] and res["export"]["merged_max_abs_logit_diff"] > 0  # the adapter is non-zero
