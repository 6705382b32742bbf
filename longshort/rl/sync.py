"""LoRA-only weight sync from the learner to the rollout engines, verified by a logprob probe every step.

After each update the learner exports only the updated roles' adapter files (LoRA tensors + config, a few
MB; the base never moves); every rollout worker writes them to a fresh folder and hot-swaps them in under a
new LoRA id. Then each worker scores a probe sequence per role with its engine and the learner scores the
same tokens: if any |engine − learner| logprob exceeds the tolerance, the engine is serving something other
than the learner's current adapter (stale, half-loaded, wrong role) and the run stops with `SyncError`.

With `engine.lora_mode: merged` the same files travel and `set_adapter` merges them into the role's own copy of
the base in place (docs/engines.md, "Merged roles"); the probe then measures the merged weights, so a stale or
wrong merge fails the same check.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import ray

from longshort.config.recipe import Recipe
from longshort.engines.base import resolve_lora_mode
from longshort.precision import SYNC_TOLERANCE, record, resolve_dtype


class SyncError(RuntimeError):
    """The rollout engine's logprobs disagree with the learner's: the adapters are out of sync."""


def resolve_precision(recipe: Recipe) -> tuple[Recipe, dict[str, Any]]:
    """A copy of `recipe` with concrete dtypes for the learner (model.dtype) and the engines (engine.dtype) on the
    devices their actors reserve, and rl.sync_tolerance from them when it is null; plus the record of the choice.
    `engine.lora_mode: auto` is resolved here too (merged on CPU rollout actors, adapter on GPU ones).

    Resolved once, in the driver, so every actor runs the dtype the tolerance was chosen for (on CPU nodes `auto`
    is measured on the driver's CPU: a Ray cluster's CPU nodes are assumed to be alike)."""
    out = copy.deepcopy(recipe)
    rl = out.rl
    devices = {"learner": "cuda" if rl.learner_gpus > 0 else "cpu", "engine": "cuda" if rl.rollout_gpus > 0 else "cpu"}
    out.model.dtype = resolve_dtype(recipe.model.dtype, devices["learner"])
    out.engine.dtype = resolve_dtype(recipe.engine.dtype, devices["engine"])
    out.engine.lora_mode = resolve_lora_mode(recipe.engine.lora_mode, devices["engine"])
    if rl.sync_tolerance is None:
        rl.sync_tolerance = max(SYNC_TOLERANCE[out.model.dtype], SYNC_TOLERANCE[out.engine.dtype])
    info = {
        "learner": record(recipe.model.dtype, out.model.dtype, devices["learner"]),
        "engine": record(recipe.engine.dtype, out.engine.dtype, devices["engine"]),
        "engine_lora_mode": {"requested": recipe.engine.lora_mode, "resolved": out.engine.lora_mode, "device": devices["engine"]},
        "sync_tolerance": rl.sync_tolerance,
        "sync_tolerance_from": "recipe" if recipe.rl.sync_tolerance is not None else "dtype",
        "gradient_checkpointing": rl.gradient_checkpointing,
    }
    return out, info


def push(workers: list[Any], files: dict[str, dict[str, bytes]]) -> int:
    """Hot-swap the learner's exported adapter `files` ({role: files}) into every rollout worker; returns bytes sent."""
    if not files:
        return 0
    ref = ray.put(files)  # one copy in the object store, fetched by each worker
    ray.get([w.set_adapters.remote(ref) for w in workers])
    return sum(len(b) for role in files.values() for b in role.values())


def verify(learner: Any, workers: list[Any], probes: dict[str, list[int]], tolerance: float) -> dict[str, float]:
    """Compare engine and learner logprobs on each role's probe; raise SyncError beyond `tolerance`.

    Returns {role: max |difference|} (the largest over workers).
    """
    out: dict[str, float] = {}
    roles = list(probes)
    seqs = [probes[r] for r in roles]
    mine = {r: learner.logprobs(r, [probes[r]])[0][1:] for r in roles}  # position 0 has no prefix
    engine_rows = ray.get([w.score.remote(seqs, roles, [1] * len(seqs)) for w in workers])
    for w_index, rows in enumerate(engine_rows):
        for role, row in zip(roles, rows):
            if len(row) != len(mine[role]):
                raise SyncError(f"sync check: worker {w_index} scored {len(row)} tokens of the {role} probe, learner {len(mine[role])}")
            diff = max((abs(a - b) for a, b in zip(row, mine[role])), default=0.0)
            if not math.isfinite(diff):  # NaN compares false with everything: it would pass `diff > tolerance`
                diff = math.inf
            out[role] = max(out.get(role, 0.0), diff)
            if diff > tolerance:
                raise SyncError(
                    f"sync check failed: rollout worker {w_index} serves a {role} adapter whose logprobs differ from the "
                    f"learner's by up to {diff:.3g} (tolerance rl.sync_tolerance={tolerance:g}); the engine is not running "
                    "the weights being trained (stale or mis-loaded adapter)"
                )
    return out


def check_sampled(stats: dict[str, Any], tolerance: float) -> None:
    """Every sampled token's engine logprob must match the learner's under the policy that sampled it (the learner's
    own before the update, or the behaviour adapter of an off-policy step): the rollouts came from the adapters on
    record, not from a stale adapter or the bare base."""
    for role, s in stats.items():
        if s.gap_max > tolerance:
            raise SyncError(
                f"rollout check failed: the {role} tokens sampled this step have engine logprobs up to {s.gap_max:.3g} "
                f"away from the learner's (tolerance rl.sync_tolerance={tolerance:g}); the rollouts did not come from "
                "the adapter being trained"
            )


def in_sync(diffs: dict[str, float], tolerance: float) -> bool:
    """Every role's probe diff is finite and within `tolerance` (NaN is a failure)."""
    return all(math.isfinite(d) and d <= tolerance for d in diffs.values())


def stale(diffs: dict[str, float], tolerance: float, step: int, hint: str) -> SyncError:
    """The error of a failed sync at `step`, naming the worst role."""
    role = max(diffs, key=lambda r: (not math.isfinite(diffs[r]), diffs[r]))
    return SyncError(
        f"sync check failed at step {step}: the rollout engine's {role} adapter gives logprobs up to {diffs[role]:.3g} "
        f"away from the learner's (tolerance rl.sync_tolerance={tolerance:g}); the engine is not running the weights "
        f"being trained (stale or mis-loaded adapter); no checkpoint of step {step} is written; {hint}"
    )
