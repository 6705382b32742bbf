"""What an RL step trains on: the problems (and which ones each step takes), each role's training sequences with
their advantages split in minibatches, and the probe sequences the sync check scores."""

from __future__ import annotations

import sys
from typing import Any

from longshort.config.recipe import Recipe
from longshort.data.rows import read_rows
from longshort.errors import DataError
from longshort.io import Rejects, validated
from longshort.rl import operator
from longshort.run.schedule import take
from longshort.types import ROLES, Episode, TrainSequence

PROBE_TOKENS = 256  # probe length cap: enough positions to expose a stale adapter, cheap to score


def load_problems(recipe: Recipe) -> list[dict[str, Any]]:
    """Training problems {id, problem, answer}: `data.train` (JSONL, Parquet or a `datasets` folder, read by
    `longshort.data.rows` with `data.fields`; `problem`/`question`, `answer`), else the synthetic task."""
    if recipe.data.train is None:
        from longshort.data.synthetic import generate, split

        train, _ = split(generate(recipe.synthetic.n, recipe.run.seed, recipe.synthetic), recipe.run.seed, recipe.synthetic.test_fraction)
        return [{"id": r["id"], "problem": r["problem"], "answer": r["answer"]} for r in train]
    rejects = Rejects()

    def problem_row(numbered: tuple[int, dict[str, Any]]) -> dict[str, str]:
        n, row = numbered
        from longshort.data.benchmarks import _answer  # the benchmarks' gold checks: type, finite, parseable

        problem, answer = row.get("problem", row.get("question")), row.get("answer")
        if not isinstance(problem, str) or not problem.strip() or answer is None or str(answer).strip() == "":
            raise ValueError("a problem row needs non-empty 'problem' (or 'question') and 'answer'")
        return {"id": str(row.get("id", row.get("idx", n))), "problem": problem, "answer": _answer(row, False)}

    found = read_rows(recipe.data.train, fields=recipe.data.fields, split=recipe.data.split, on_error=recipe.data.on_error,
                      rejects=rejects)
    records = ((found.where(n), (n, row)) for n, row in found)
    # a repeated id would merge two problems into one advantage group
    rows = [r for _, r in validated(records, problem_row, recipe.data.on_error, rejects, key=lambda r: r["id"])]
    if len(rejects):
        print(f"longshort rl: skipped {len(rejects)} bad rows of {recipe.data.train}", file=sys.stderr)
    if not rows:
        raise DataError(f"{recipe.data.train}: no usable problems")
    return rows


def batch_at(problems: list[dict[str, Any]], cursor: int, size: int, seed: int) -> list[dict[str, Any]]:
    """Problems `cursor .. cursor+size` of the run's data-order stream (longshort/run/schedule.py)."""
    return [problems[i] for i in take(len(problems), seed, cursor, size)]


def step_problems(recipe: Recipe, problems: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """Step `step`'s problems, each tagged with the protocol that rolls it out: positions (step − 1)·P … step·P − 1
    of the data-order stream (P = rl.problems_per_step), so any step's batch is known before the step before it ends."""
    cursor = (step - 1) * recipe.rl.problems_per_step
    return operator.route(recipe, batch_at(problems, cursor, recipe.rl.problems_per_step, recipe.run.seed), cursor)


def step_seed(recipe: Recipe, step: int) -> int:
    """The rollout seed of step `step`: from (run seed, step), so a resumed step samples what the first run did."""
    return (recipe.run.seed * 1_000_003 + step) & 0x7FFFFFFF


def roles_to_train(recipe: Recipe, step: int) -> list[str]:
    """`joint`: both roles; `alternate`: alternate_k steps long (short frozen), then alternate_k steps short."""
    if recipe.rl.schedule == "joint":
        return list(ROLES)
    return [ROLES[((step - 1) // recipe.rl.alternate_k) % 2]]


def build_batches(episodes: list[Episode], roles: list[str], recipe: Recipe) -> tuple[dict[str, list[TrainSequence]], dict[str, list[float]]]:
    """Each role's training sequences with their advantages, split in minibatches; the loss normaliser of each.
    Of an operator (pdr) episode only the calls `rl.operator_loss_on` names are trained (`operator.sequences`)."""
    cfg = recipe.rl
    batches: dict[str, list[TrainSequence]] = {}
    norms: dict[str, list[float]] = {}
    for role in roles:
        samples = []
        for ep in episodes:
            if role not in ep.advantages:
                continue
            for seq, _ in operator.sequences(ep, role, cfg.operator_loss_on):
                seq.advantage, seq.correct = ep.advantages[role], bool(ep.correct)
                samples.append(seq)
        if not samples:
            continue
        per = -(-len(samples) // cfg.minibatches)
        for i, s in enumerate(samples):
            s.minibatch = i // per
        n_mb = samples[-1].minibatch + 1
        if cfg.loss_agg == "token_mean":
            norms[role] = [float(sum(sum(s.mask) for s in samples if s.minibatch == m)) for m in range(n_mb)]
        else:  # Dr. GRPO: a constant per minibatch, independent of how long the answers are
            cap = getattr(recipe.roles, role).max_tokens
            norms[role] = [float(sum(1 for s in samples if s.minibatch == m) * cap) for m in range(n_mb)]
        batches[role] = samples
    return batches, norms


def nll_normalisers(batches: dict[str, list[TrainSequence]]) -> dict[str, list[float]]:
    """Per role and minibatch, the trainable tokens of correct episodes: the NLL term's global mean denominator."""
    return {role: [float(sum(sum(s.mask) for s in samples if s.minibatch == m and s.correct))
                   for m in range(samples[-1].minibatch + 1)] for role, samples in batches.items()}


def probes_from(episodes: list[Episode]) -> dict[str, list[int]]:
    """Per role, the first training sequence of the step (real context + the role's own tokens), capped."""
    out = {}
    for role in ROLES:
        for ep in episodes:
            seqs = ep.training_sequences(role)
            if seqs:
                out[role] = seqs[0].input_ids[:PROBE_TOKENS]
                break
    return out


def initial_probes(recipe: Recipe, base: str, problems: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Before any rollout: each role's prompt for the first problem (enough to catch a wrong starting adapter)."""
    from longshort.chat import encode, prompt_text
    from longshort.models import load_tokenizer

    tok = load_tokenizer(base)
    return {
        role: encode(tok, prompt_text(tok, getattr(recipe.roles, role).system_prompt, problems[0]["problem"], [], role))[:PROBE_TOKENS]
        for role in ROLES
    }
