"""The RL driver: rollout -> rewards -> per-role advantages -> PPO update -> verified LoRA sync -> log -> checkpoint.

Runs in the process that calls `run_rl` (the `longshort rl` command, or a `ray job submit` entrypoint); the
engines and learners live in Ray actors (actors.py), the cluster and fault handling in pool.py, what a step trains
on in batches.py, what it logs in metrics.py. Everything a resumed run needs is in the checkpoint: rollout seeds are
derived from (run seed, step), the data order from (run seed, epoch), so a run resumed from step k reproduces the
uninterrupted run's steps k+1... when the engine is deterministic (HF engine). With rl.offpolicy_steps: 1 the
rollout of step k+1 runs while step k trains, except after a checkpoint step, so that a resumed run starts as the
uninterrupted one went on.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import ray
from ray.exceptions import RayActorError

from longshort.config.recipe import Recipe
from longshort.errors import ConfigError, UserError
from longshort.io import write_json
from longshort.rl import checkpoint, operator
from longshort.rl.actors import LearnerGroup, read_adapter
from longshort.rl.advantages import assign_advantages
from longshort.rl.batches import build_batches, initial_probes, load_problems, nll_normalisers, probes_from, roles_to_train, step_problems, step_seed
from longshort.rl.learner import LearnerStats
from longshort.rl.metrics import StepLog, episode_row, learner_row, sync_row, write_summary
from longshort.rl.pool import (Rollout, RolloutPool, WorkerLost, check_resources, connect_ray, lost, owns_ray,
                               resume_hint)
from longshort.rl.rewards import assign_rewards
from longshort.rl.sync import SyncError, check_sampled, in_sync, resolve_precision, stale, verify
from longshort.run import open_run
from longshort.run.checkpoint import restore_rng, resume
from longshort.run.logs import METRICS, TENSORBOARD
from longshort.run.settings import settings
from longshort.types import ROLES, Episode

__all__ = ["run_rl", "SyncError", "WorkerLost"]

OUTPUTS = ("checkpoints", METRICS, "episodes.jsonl", TENSORBOARD, "placement.json", "precision.json", "summary.md")
# Keys that may change between a run and its resume: how long to go on, how often to save or log, where to run.
FREE = tuple(f"rl.{k}" for k in ("steps", "checkpoint_every", "keep_checkpoints", "log_episodes", "ray_address",
                                 "ray_num_cpus", "rollout_actors", "rollout_cpus", "rollout_gpus", "learner_workers",
                                 "learner_cpus", "learner_gpus", "micro_batch_size", "pack_sequences", "sync_tolerance",
                                 "gradient_checkpointing"))


def run_rl(recipe: Recipe, ray_address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) RL of both roles; returns a summary. Raises `SyncError` if a sync check fails."""
    recipe, run = prepare(recipe)
    cfg = recipe.rl
    with session(recipe, run, ray_address) as s:
        log = StepLog(run.dir, s.start, recipe, progress)
        ahead: tuple[Rollout, list[Episode]] | None = None  # step k+1, rolled out while step k trained
        for step in range(s.start + 1, cfg.steps + 1):
            s.step, t0 = step, time.perf_counter()
            rollout, episodes = ahead or roll_out(s.pool, recipe, run.problems, step, s.probes)
            t1 = time.perf_counter()

            assign_rewards(episodes, cfg.rewards, recipe.roles.short.max_tokens)
            assign_advantages(episodes, cfg.estimator, ROLES)
            batches, norms = build_batches(episodes, roles_to_train(recipe, step), recipe)
            early = s.pool.start(step_problems(recipe, run.problems, step + 1), step + 1, step_seed(recipe, step + 1),
                                 early=True) if overlapped(recipe, step) else None
            stats = update(s.learner, batches, norms, recipe, rollout, step)
            t2 = time.perf_counter()
            ahead = (early, eps) if early and (eps := s.pool.collect(early, s.probes)) is not None else None
            t3 = time.perf_counter()

            sent, diffs = s.pool.sync(list(batches), probes_from(episodes) or s.probes, step)
            ok = in_sync(diffs, cfg.sync_tolerance)
            t4 = time.perf_counter()
            log.row({"step": step, "cursor": step * cfg.problems_per_step, "trained": sorted(batches),
                     "offpolicy": rollout.early, **episode_row(episodes), **learner_row(stats),
                     **(operator.metrics(episodes, sorted(batches), cfg.operator_loss_on) if recipe.protocol.name == operator.OPERATOR else {}),
                     **sync_row(diffs, sent, ok), "time/rollout": t1 - t0, "time/learn": t2 - t1,
                     "time/rollout_wait": t3 - t2, "time/sync": t4 - t3, "time/step": t4 - t0})
            if not ok:  # logged first, so the failed step's measured diff is on record; never checkpointed
                raise stale(diffs, cfg.sync_tolerance, step, resume_hint(run.ckpt_root))
            log.synced(episodes)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint.save(run.ckpt_root, step, s.learner.state(),
                                {"cursor": step * cfg.problems_per_step, "settings": run.settings}, cfg.keep_checkpoints)
        log.close()
        summary = {"steps": cfg.steps, "resumed_from": s.start, "initial_sync": s.initial, "placement": s.placement,
                   "precision": run.precision, "last": log.last}
        write_summary(run.dir, summary)
        return summary


# -- the step's parts -----------------------------------------------------------------------------
def roll_out(pool: RolloutPool, recipe: Recipe, problems: list[dict[str, Any]], step: int,
             probes: dict[str, list[int]]) -> tuple[Rollout, list[Episode]]:
    """Step `step`'s episodes, sampled now with the adapters being trained."""
    r = pool.start(step_problems(recipe, problems, step), step, step_seed(recipe, step))
    episodes = pool.collect(r, probes)
    assert episodes is not None  # only an early rollout is given up
    return r, episodes


def overlapped(recipe: Recipe, step: int) -> bool:
    """Whether step + 1 is rolled out while `step` trains: off-policy runs, except after the last step and after a
    checkpoint step (its checkpoint then holds everything the next step needs: no rollout in flight)."""
    cfg = recipe.rl
    return bool(cfg.offpolicy_steps) and step < cfg.steps and step % cfg.checkpoint_every != 0


def update(learner: LearnerGroup, batches: dict[str, Any], norms: dict[str, list[float]], recipe: Recipe,
           rollout: Rollout, step: int) -> dict[str, LearnerStats]:
    """One PPO update of each role in `batches`, its ratio taken against the adapters that sampled `rollout`. Stops
    before a diverged step's adapters reach a checkpoint, the engines or an export, and when the sampled tokens'
    logprobs do not match the adapters on record (`check_sampled`)."""
    cfg = recipe.rl
    if not batches:
        return {}
    behaviour = {r: rollout.adapters[r] for r in batches} if rollout.early else None
    stats = learner.train(batches, norms, nll_normalisers(batches) if cfg.nll_coef else None, behaviour)
    diverged = [f"{r} {d}" for r, s in stats.items() for d in s.diverged()]
    if diverged:
        raise UserError(f"rl: step {step}: training diverged ({', '.join(diverged)} not finite); no checkpoint "
                        "of this step is written (lower rl.lr?)")
    check_sampled(stats, cfg.sync_tolerance)
    return stats


# -- before the first step ------------------------------------------------------------------------
@dataclass
class Run:
    dir: Path
    ckpt_root: Path
    base: str
    problems: list[dict[str, Any]]
    precision: dict[str, Any]
    settings: dict[str, Any]  # what the checkpoints' state depends on: a resume must match it


def resume_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings an RL checkpoint's state depends on: every key the stage reads except `FREE` (the engine's
    settings change how rollouts are computed, not the learner's state)."""
    keys = ("run.seed", "model", "roles", "protocol", "data.train", "data.on_error", *recipe.data.resume_keys(),
            "synthetic", "rl")
    return settings(recipe, keys, FREE)


def prepare(recipe: Recipe) -> tuple[Recipe, Run]:
    """Check the recipe, open the run directory, resolve the precision, find the base and the problems."""
    from longshort.models import check_lora_targets, resolve_base
    from longshort.protocols.pdr import ORACLE

    if recipe.protocol.name == "pdr" and recipe.protocol.pdr_distill in ORACLE:  # before anything is written
        raise ConfigError(f"key 'protocol.pdr_distill' is {recipe.protocol.pdr_distill}: an evaluation-only mode (it "
                          "grades drafts against the gold answer), refused in RL rollouts")
    operator.check(recipe)
    run_dir = open_run(recipe, OUTPUTS)  # config.yaml as asked: `auto` stays `auto`
    recipe, precision = resolve_precision(recipe)  # concrete dtypes for every actor and the tolerance they imply
    write_json(run_dir / "precision.json", precision)
    base = str(resolve_base(recipe.model.base, run_dir, recipe.model.tiny, recipe.run.seed,
                            chat_template=recipe.model.chat_template).resolve())
    problems = load_problems(recipe)
    for role in ROLES:
        path = getattr(recipe.roles, role).adapter
        if path and not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"key 'roles.{role}.adapter': {path} is not a PEFT adapter directory")
    if not all(getattr(recipe.roles, role).adapter for role in ROLES):  # a fresh adapter wraps rl.lora.target_modules
        check_lora_targets(Path(base), recipe.rl.lora.target_modules, "rl.lora.target_modules", recipe.model.trust_remote_code)
    return recipe, Run(run_dir, run_dir / "checkpoints", base, problems, precision, resume_settings(recipe))


@dataclass
class Session:
    learner: LearnerGroup
    pool: RolloutPool
    start: int  # the step resumed from (0: none)
    probes: dict[str, list[int]]  # each role's prompt for the first problem: the fallback sync probe
    initial: dict[str, float]  # the first sync check's diffs
    placement: dict[str, list[str]] = field(default_factory=dict)
    step: int = 0  # the step running now: named if an actor dies


@contextlib.contextmanager
def session(recipe: Recipe, run: Run, ray_address: str | None) -> Iterator[Session]:
    """Ray (joined, or started here), the learner group resumed from the newest checkpoint written with the same
    settings (a one-line error names the first changed key), and the rollout actors serving its adapters, checked by
    a first sync probe; all shut down on exit. An actor whose process dies ends the run with `WorkerLost`, which
    names it and how to resume."""
    cfg = recipe.rl
    started_ray = connect_ray(ray_address or cfg.ray_address, cfg.ray_num_cpus)  # the command line beats the recipe
    learner: LearnerGroup | None = None
    pool: RolloutPool | None = None
    s: Session | None = None
    try:
        check_resources(recipe, local=started_ray)
        ckpt = resume(run.ckpt_root, run.settings) if recipe.run.resume == "auto" else None
        ref = {r: read_adapter(p) if (p := getattr(recipe.roles, r).adapter) else None for r in ROLES}
        learner = LearnerGroup(run.base, {r: read_adapter(ckpt.adapter(r)) for r in ROLES} if ckpt else ref, ref, recipe)
        if ckpt:
            learner.load_trainer_state(checkpoint.trainer_bytes(ckpt))
            restore_rng(ckpt)
        else:
            random.seed(recipe.run.seed)
        pool = RolloutPool(run.base, recipe, learner, run.ckpt_root)
        probes = initial_probes(recipe, run.base, run.problems)
        initial = verify(learner, pool.workers, probes, cfg.sync_tolerance)
        # The node id of every actor: shows whether a multi-node cluster really spread the work (placement.json).
        placement = {"rollout": ray.get([w.node.remote() for w in pool.workers]),
                     "learner": ray.get([w.node.remote() for w in learner.workers])}
        write_json(run.dir / "placement.json", placement)
        s = Session(learner, pool, ckpt.step if ckpt else 0, probes, initial, placement)
        yield s
    except RayActorError:
        if learner is None:  # died while the learner group was starting
            raise WorkerLost(f"a learner worker died while starting; {resume_hint(run.ckpt_root)}") from None
        raise lost(s.step if s else 0, learner, pool, run.ckpt_root) from None
    finally:
        if pool is not None:
            pool.close()
        if learner is not None:
            learner.shutdown()
        if started_ray and owns_ray():
            ray.shutdown()
