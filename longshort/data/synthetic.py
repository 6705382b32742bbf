"""The synthetic long-CoT task: chains of single-digit additions with verbose, redundant reasoning traces.

Each problem starts from a digit and adds 3-6 more digits (1-9). Its trace states the essential steps one line
each ("Add 5: 3 + 5 = 8; left: 4 2.") and pads them with redundancy that costs tokens without changing the
answer: re-checks ("Wait, let me check: ..."), detours ("Alternatively, 5 + 3 = 8. ..."), doubts ("But wait,
should I subtract ...? No, ..."), a restatement of the problem and a recap. Every step is one line; steps are
separated by blank lines, so the chunker sees one step per line and the discourse markers start new thoughts.

The start and every addition end with "; left: <digits still to add>", so the next operand is copied from a
few lines up rather than found by counting through the problem. What a ~3M-parameter model learns from it, and
how fast: docs/synthetic.md.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from longshort.config.synthetic import SyntheticConfig
from longshort.errors import ConfigError
from longshort.io import write_json, write_jsonl

TEMPLATES = (
    "Start with {a}. Add {adds}. What is the result?",
    "Tom has {a} apples. He gets {more}. How many apples does he have now?",
    "A box has {a} coins. Then {adds} more coins are added. How many coins are in the box?",
)
# Step kinds that carry the computation; everything else in a trace is redundant.
ESSENTIAL_KINDS = ("start", "add", "conclusion")


def _then(items: list[str]) -> str:
    return ", then ".join(items)


def _left(bs: list[int]) -> str:
    return " ".join(str(b) for b in bs) or "none"


def problem_text(a: int, bs: list[int], template: int) -> str:
    return TEMPLATES[template].format(
        a=a,
        adds=_then([str(b) for b in bs]),
        more=_then([f"{b} more" for b in bs]),
    )


def trace_steps(a: int, bs: list[int], rng: random.Random, cfg: SyntheticConfig) -> list[tuple[str, str]]:
    """(kind, line) for each step of a verbose trace; kinds in ESSENTIAL_KINDS carry the computation."""
    steps: list[tuple[str, str]] = []
    if rng.random() < cfg.p_restate:
        listed = ", ".join(str(b) for b in bs[:-1]) + f" and {bs[-1]}" if len(bs) > 1 else str(bs[0])
        steps.append(("restate", f"The problem asks to start with {a} and add {listed}."))
    # Each essential step ends with the digits still to add, so the next one copies its operand from the latest
    # "left:" list (a few lines up) instead of counting its way through the problem.
    steps.append(("start", f"Start with {a}; left: {_left(bs)}."))
    total = a
    after_detour = False
    for i, b in enumerate(bs):
        new = total + b
        # After a detour, "Now" marks the return to the computation (a thought boundary for the chunker).
        steps.append(("add", f"{'Now add' if after_detour else 'Add'} {b}: {total} + {b} = {new}; left: {_left(bs[i + 1:])}."))
        after_detour = False
        if rng.random() < cfg.p_verify:
            steps.append(("verify", f"Wait, let me check: {total} + {b} = {new}. Yes."))
            after_detour = True
        if rng.random() < cfg.p_alternative:
            steps.append(("alternative", f"Alternatively, {b} + {total} = {new}. Same result."))
            after_detour = True
        if rng.random() < cfg.p_doubt:
            steps.append(("doubt", f"But wait, should I subtract {b}? No, the problem says add, so {new} stands."))
            after_detour = True
        total = new
    if rng.random() < cfg.p_recap:
        steps.append(("recap", f"So far: {' + '.join(str(x) for x in [a, *bs])} = {total}."))
    steps.append(("conclusion", f"So the answer is {total}."))
    return steps


def render_trace(steps: list[tuple[str, str]], answer: int) -> str:
    """`<think>\\n step \\n\\n step ...\\n</think>\\n\\boxed{N}`."""
    return "<think>\n" + "\n\n".join(line for _, line in steps) + "\n</think>\n\\boxed{" + str(answer) + "}"


def _capacity(cfg: SyntheticConfig) -> int:
    """Distinct problems (start digit + added digits) the configuration allows."""
    return sum(9 ** (k + 1) for k in range(cfg.min_ops, cfg.max_ops + 1))


def generate(n: int, seed: int, cfg: SyntheticConfig | None = None) -> list[dict[str, Any]]:
    """`n` distinct problems with traces, deterministic by `seed`; rows {id, problem, answer, response, ...}."""
    cfg = cfg or SyntheticConfig()
    if n > _capacity(cfg):
        raise ConfigError(f"key 'synthetic.n': {n} problems asked, only {_capacity(cfg)} distinct ones exist for these ops")
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    rows = []
    while len(rows) < n:
        a = rng.randint(1, 9)
        bs = [rng.randint(1, 9) for _ in range(rng.randint(cfg.min_ops, cfg.max_ops))]
        key = (a, *bs)  # content identity: the numbers, whatever the wording
        if key in seen:
            continue
        seen.add(key)
        steps = trace_steps(a, bs, rng, cfg)
        answer = a + sum(bs)
        rows.append(
            {
                "problem": problem_text(a, bs, rng.randrange(len(TEMPLATES))),
                "answer": str(answer),
                "response": render_trace(steps, answer),
                "numbers": list(key),
                "essential_steps": sum(1 for kind, _ in steps if kind in ESSENTIAL_KINDS),
                "steps": len(steps),
                # The ground truth of thought analysis: the kind of each step of the trace, in order.
                "step_kinds": [kind for kind, _ in steps],
                "oracle_response": render_trace([st for st in steps if st[0] in ESSENTIAL_KINDS], answer),
            }
        )
    return rows


def split(rows: list[dict[str, Any]], seed: int, test_fraction: float) -> tuple[list[dict], list[dict]]:
    """Train/test by position in the (random, deduplicated) generation order; ids name the split."""
    n_test = round(len(rows) * test_fraction)
    n_train = len(rows) - n_test
    train = [{"id": f"syn{seed}-train-{i:06d}", **r} for i, r in enumerate(rows[:n_train])]
    test = [{"id": f"syn{seed}-test-{i:06d}", **r} for i, r in enumerate(rows[n_train:])]
    return train, test


def write_task(n: int, seed: int, out: str | Path, test_fraction: float = 0.1, cfg: SyntheticConfig | None = None) -> dict[str, int]:
    """Write `train.jsonl`, `test.jsonl` and `meta.json` (last) under `out`; return the counts."""
    cfg = cfg or SyntheticConfig()
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    out = Path(out)
    train, test = split(generate(n, seed, cfg), seed, test_fraction)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    rows = train + test
    steps = sum(r["steps"] for r in rows)
    essential = sum(r["essential_steps"] for r in rows)
    counts = {"train": len(train), "test": len(test), "total": len(rows)}
    write_json(
        out / "meta.json",
        {
            "task": "synthetic-additions",
            "seed": seed,
            "test_fraction": test_fraction,
            "counts": counts,
            "steps_per_trace": steps / len(rows),
            "redundant_step_share": 1 - essential / steps,
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        },
    )
    return counts
