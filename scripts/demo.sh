#!/usr/bin/env bash
# The main job as far as it is wired today (docs/pipeline.md): synthetic long-CoT task -> full SFT of the tiny
# base into a long-CoT reasoner -> evaluation of the reasoner on the held-out split and on real MATH500 problems.
# Every stage is resumable: rerunning skips finished work.
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/longshort
RUN=runs/demo  # as in recipes/tiny/demo*.yaml
STEPS=${DEMO_STEPS:-600}  # as in recipes/tiny/demo_reasoner.yaml
[ -f $RUN/data/test.jsonl ] || $LS data synthetic --n 2000 --seed 0 --out $RUN/data
$LS sft --recipe recipes/tiny/demo_reasoner.yaml sft.steps=$STEPS
$LS eval --recipe recipes/tiny/demo.yaml --model $RUN/reasoner/final --protocol long_cot \
  --benchmarks synthetic --path $RUN/data/test.jsonl --limit 100 --samples 1 --out $RUN/eval
$LS eval --recipe recipes/tiny/demo.yaml --model $RUN/reasoner/final --protocol long_cot \
  --benchmarks math500 --path ../shared/benchmarks/math500.jsonl --limit 8 --samples 1 --out $RUN/eval_math500
echo "demo done: $RUN/reasoner/summary.md, $RUN/eval/summary.md, $RUN/eval_math500/summary.md"
