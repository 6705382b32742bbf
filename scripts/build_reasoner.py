"""Build the shipped long-CoT reasoner of the embedded default (data/reasoner/tiny) with the project's own recipe.

    .venv/bin/python scripts/build_reasoner.py                 # ~30-45 min on 2 cores (docs/synthetic.md)
    .venv/bin/python scripts/build_reasoner.py --reuse DIR     # a finished `longshort sft` run of the same recipe

It runs stages base, data and reasoner of recipes/tiny/pipeline.yaml with `pipeline.reasoner_source: train`
(a resumable SFT: rerun after a kill), evaluates the reasoner with long CoT on the whole held-out split at the
recipe's evaluation settings, and writes the model files with `manifest.json` (recipe, seed, data fingerprint,
commit, held-out accuracy with its interval, build time) into data/reasoner/tiny, the manifest last.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "pipeline.yaml"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json")


def train_seconds(run_dir: Path) -> float | None:
    """Wall time of the SFT run: `wall_s` of its last logged step."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    return json.loads(lines[-1]).get("wall_s") if lines else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(REPO / "runs"), help="Parent folder of the build's run (runs/reasoner-build).")
    ap.add_argument("--reuse", help="A finished `longshort sft` run directory trained on the same rows and settings.")
    ap.add_argument("--reuse-commit", help="With --reuse: the commit whose code trained that run.")
    ap.add_argument("--out", default=None, help="Where to write the shipped reasoner (default data/reasoner/tiny).")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from longshort.config import load_recipe
    from longshort.engines import start_engine
    from longshort.eval import evaluate
    from longshort.io import write_json
    from longshort.pipeline import shipped
    from longshort.pipeline.plan import make_plan
    from longshort.pipeline.runner import run_plan
    from longshort.stats import wilson

    t0 = time.time()
    out = Path(args.out) if args.out else shipped.SHIPPED
    plan = make_plan(load_recipe(str(RECIPE), ["pipeline.reasoner_source=train", "run.name=reasoner-build", f"run.out_dir={args.work}"]),
                     str(RECIPE))
    stage = plan.stages["reasoner"]
    if args.reuse:
        run_plan(plan, until="data")
        reuse = Path(args.reuse)
        info = json.loads((reuse / "run.json").read_text())
        data = info["data"] if isinstance(info["data"], str) else info["data"]["path"]
        if shipped.data_fingerprint(Path(data)) != shipped.data_fingerprint(plan.train_file):
            sys.exit(f"build_reasoner: {reuse} was trained on other rows than {plan.train_file}")
        diff = shipped._first_difference(shipped.training_settings(load_recipe(str(reuse / "config.yaml"))),
                                         shipped.training_settings(stage.recipe), "")
        if diff:
            sys.exit(f"build_reasoner: {reuse} was trained with other settings than the recipe's reasoner stage: {diff}")
        final = reuse / "final"
    else:
        records = run_plan(plan, until="reasoner")
        info = json.loads((stage.dir / "run.json").read_text())
        final = plan.reasoner
        print(f"reasoner trained: {records['reasoner']['summary']}", flush=True)

    # Held-out accuracy: long CoT on the whole test split with the evaluation stage's settings.
    recipe = copy.deepcopy(plan.stages["eval"].recipe)
    recipe.evaluation = dataclasses.replace(recipe.evaluation, benchmarks=["synthetic"], path=str(plan.test_file), limit=None,
                                            protocols=["long_cot"], out=str(Path(args.work) / "reasoner-build" / "heldout"), plot=False)
    recipe.protocol.long_cot_role = "base"
    engine = start_engine(recipe, str(final), {})
    try:
        row = evaluate(engine, recipe, str(final), {}, progress=True)["results"][0]
    finally:
        engine.close()
    n = row["problems"] * row["samples"]
    lo, hi = wilson(row["accuracy"] * n, n)
    print(f"held-out long_cot accuracy {row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on n={n}, {row['tokens_per_problem']:.0f} tokens",
          flush=True)

    m = info["metrics"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or None
    manifest = {
        "what": "long-CoT reasoner of the embedded default: full SFT of the tiny base on the synthetic task",
        "recipe": str(RECIPE.relative_to(REPO)), "stage": "reasoner", "commit": commit,
        "trained_with_commit": args.reuse_commit or commit,
        "training": shipped.training_settings(stage.recipe), "synthetic": dataclasses.asdict(stage.recipe.synthetic),
        "data_fingerprint": shipped.data_fingerprint(plan.train_file), "train_rows": info["counts"].get("train"),
        "precision": info.get("precision"),  # the build machine's choice (bf16 autocast or not): recorded, not checked
        "steps": info["steps"], "first_loss": m["first_loss"], "final_loss": m["final_loss"], "eval_loss": m.get("eval_loss"),
        "held_out": {"n": n, "accuracy": row["accuracy"], "accuracy_ci": [lo, hi], "tokens_per_problem": row["tokens_per_problem"],
                     "protocol": "long_cot", "temperature": recipe.protocol.temperature, "max_tokens": recipe.protocol.max_tokens,
                     "engine": recipe.engine.kind, "test_file_fingerprint": shipped.data_fingerprint(plan.test_file)},
        "train_seconds": train_seconds(final.parent), "build_seconds": round(time.time() - t0 + (train_seconds(final.parent) if args.reuse else 0), 1),
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for name in MODEL_FILES:
        if (final / name).is_file():
            shutil.copy2(final / name, tmp / name)
            files[name] = shipped.sha256(tmp / name)
    manifest["files"] = files
    write_json(tmp / shipped.MANIFEST, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"shipped reasoner -> {out} ({sum((out / f).stat().st_size for f in files) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
