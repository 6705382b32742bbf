"""RL's Ray side: joining or starting the cluster, checking the actors fit it, the rollout actors, and what
happens when an actor's process dies (docs/reliability.md, "RL faults")."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from longshort.config.recipe import Recipe
from longshort.errors import ConfigError, UserError
from longshort.rl import checkpoint
from longshort.rl.actors import AdapterFiles, LearnerGroup, RolloutWorker
from longshort.rl.sync import push, verify
from longshort.types import ROLES, Episode


# Inside `shared_ray()`: "active", and "num_cpus" of the local Ray instance it keeps once one is started.
_shared: dict[str, Any] = {}


@contextlib.contextmanager
def shared_ray() -> Iterator[None]:
    """Inside, the RL runs share the local Ray instance the first of them starts, and it stops on exit: the pipeline's
    RL stages (rl, rl_length, rl_operator) pay Ray's start and stop (~6 s on 2 cores) once, not once each."""
    _shared["active"] = True
    try:
        yield
    finally:
        if _shared.pop("num_cpus", None) is not None and ray.is_initialized():
            ray.shutdown()
        _shared.clear()


def owns_ray() -> bool:
    """Whether an RL run that started its local Ray should stop it on exit (not inside `shared_ray()`)."""
    return not _shared


def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join `address` (or RAY_ADDRESS), or start a local cluster without the dashboard UI. True if the run is on a
    local Ray instance we started (here, or for an earlier run inside `shared_ray()` with the same `num_cpus`).

    Ray 2.60 swaps the 127.0.0.1 node address for the machine's reachable IP and its gRPC servers listen on all
    interfaces, guarded by Ray's token authentication (docs/reliability.md).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        if "num_cpus" not in _shared:  # the caller's Ray, or a cluster joined before
            return False
        if _shared["num_cpus"] == num_cpus and not address:
            return True
        ray.shutdown()  # the shared local instance is not what this run asks for
        del _shared["num_cpus"]
    if address:
        from ray.exceptions import AuthenticationError

        token = ("set RAY_AUTH_MODE=token and the cluster's token: RAY_AUTH_TOKEN, or the token file "
                 "~/.ray/auth_token (or the path in RAY_AUTH_TOKEN_PATH)")
        try:
            ray.init(address=address, log_to_driver=False)
        except AuthenticationError:
            raise UserError(f"the Ray cluster at {address} needs its authentication token: {token}") from None
        except ConnectionError as e:  # what Ray raises for a token cluster when RAY_AUTH_MODE is not `token`
            raise UserError(f"cannot join the Ray cluster at {address} ({e}); if it uses token authentication, {token}") from None
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    if _shared:
        _shared["num_cpus"] = num_cpus
    return True


def check_resources(recipe: Recipe, local: bool) -> None:
    """The actors' CPU/GPU reservations must fit the cluster: Ray would otherwise wait for them forever.

    On a cluster we joined, an autoscaler may still add nodes, so a shortfall is only a warning there.
    """
    cfg = recipe.rl
    have = ray.cluster_resources()
    for kind, key in (("CPU", "cpus"), ("GPU", "gpus")):
        need = cfg.rollout_actors * getattr(cfg, f"rollout_{key}") + cfg.learner_workers * getattr(cfg, f"learner_{key}")
        avail = float(have.get(kind, 0.0))
        if need <= avail + 1e-9:
            continue
        msg = (
            f"keys 'rl.rollout_{key}'/'rl.learner_{key}': the actors reserve {need:g} {kind}s (rl.rollout_actors × "
            f"rl.rollout_{key} + rl.learner_workers × rl.learner_{key}) but the Ray cluster has {avail:g}"
        )
        if local:
            raise ConfigError(msg)
        print(f"longshort rl: warning: {msg}; waiting for the cluster to grow", file=sys.stderr)


class WorkerLost(RuntimeError):
    """A Ray actor's process died and the run cannot go on in place; the message says how to resume."""


def _alive(actor: Any) -> bool:
    """False once `actor`'s process is gone (a busy actor that does not answer in time counts as alive)."""
    try:
        ray.get(actor.pid.remote(), timeout=10)
        return True
    except GetTimeoutError:
        return True
    except RayActorError:
        return False


def resume_hint(ckpt_root: Path) -> str:
    ck = checkpoint.latest(ckpt_root)
    where = f"checkpoint {ck.path.name}" if ck else "the start (no checkpoint yet)"
    return f"rerun with run.resume=auto to continue from {where}"


@dataclass
class Rollout:
    """A step's rollout in flight: its problems split over the workers, and the adapters the engines served when
    it started (the policy that samples it: the learner's current one unless the step was started early)."""

    step: int
    seed: int
    chunks: list[list[dict[str, Any]]]
    futures: list[Any]
    adapters: dict[str, AdapterFiles]
    early: bool = False  # started while the learner trained the step before (rl.offpolicy_steps: 1)


class RolloutPool:
    """The rollout actors. One whose process dies is replaced once per step by a fresh actor that serves the
    learner's current adapters (checked with the sync probe), and only its share of the step is redone: with the
    step's seed that share is the same episodes, so nothing is lost or sampled twice. A second death in the same
    step stops the run with `WorkerLost`."""

    def __init__(self, base: str, recipe: Recipe, learner: LearnerGroup, ckpt_root: Path) -> None:
        cfg = recipe.rl
        self.cls = ray.remote(num_cpus=cfg.rollout_cpus, num_gpus=cfg.rollout_gpus)(RolloutWorker)
        self.base, self.recipe, self.learner, self.ckpt_root = base, recipe, learner, ckpt_root
        self.served = learner.export(list(ROLES))  # what the engines serve: rollouts start from the learner's adapters
        files = ray.put(self.served)
        self.workers = [self.cls.remote(base, recipe, files, recipe.run.seed + i) for i in range(cfg.rollout_actors)]
        self.pids: list[int] = ray.get([w.pid.remote() for w in self.workers])  # surfaces engine start-up errors here
        self.restarted_at: set[int] = set()

    def replace(self, i: int, step: int, probes: dict[str, list[int]]) -> None:
        """Start a new actor in slot `i` with the learner's current adapters and check it serves them."""
        what = f"rollout worker {i} (pid {self.pids[i]}) died at step {step}"
        if step in self.restarted_at:
            raise WorkerLost(f"{what}, after a restart in the same step; {resume_hint(self.ckpt_root)}")
        self.restarted_at.add(step)
        print(f"longshort rl: {what}; restarting it and redoing its share of the step", file=sys.stderr)
        ray.kill(self.workers[i], no_restart=True)
        try:
            self.workers[i] = self.cls.remote(self.base, self.recipe, self.learner.export(list(ROLES)), self.recipe.run.seed + i)
            self.pids[i] = ray.get(self.workers[i].pid.remote())
            verify(self.learner, [self.workers[i]], probes, self.recipe.rl.sync_tolerance)
        except RayActorError:
            raise WorkerLost(f"{what} and its replacement failed to start; {resume_hint(self.ckpt_root)}") from None

    def start(self, batch: list[dict[str, Any]], step: int, seed: int, early: bool = False) -> Rollout:
        """Send step `step`'s problems to the workers (split between them) and return without waiting."""
        n, g = len(self.workers), self.recipe.rl.group_size
        chunks = [batch[i::n] for i in range(n)]
        futures = [w.rollout.remote(c, g, step, seed) if c else None for w, c in zip(self.workers, chunks)]
        return Rollout(step, seed, chunks, futures, dict(self.served), early)

    def collect(self, r: Rollout, probes: dict[str, list[int]]) -> list[Episode] | None:
        """The episodes of `r`. A dead worker's share is redone on its replacement, which serves the learner's current
        adapters: for a rollout started early those are not the ones that sampled the rest, so that rollout is
        given up (None) and the caller rolls the step out again after the sync."""
        parts: list[list[Episode]] = []
        for i, f in enumerate(r.futures):
            if f is None:
                continue
            try:
                parts.append(ray.get(f))
            except RayActorError:
                self.replace(i, r.step, probes)
                if r.early:
                    return None
                try:
                    parts.append(ray.get(self.workers[i].rollout.remote(r.chunks[i], self.recipe.rl.group_size, r.step, r.seed)))
                except RayActorError:
                    self.replace(i, r.step, probes)  # raises WorkerLost: the second death in this step
        return [ep for part in parts for ep in part]

    def sync(self, roles: list[str], probes: dict[str, list[int]], step: int) -> tuple[int, dict[str, float]]:
        """Push the updated adapters and measure them with the probe: (bytes sent, {role: max |engine − learner|}).
        The caller judges the diffs against rl.sync_tolerance, so a failed sync is logged (`sync/ok` false) before
        the run stops. A dead rollout worker is replaced and the sync redone."""
        files = self.learner.export(roles) if roles else {}
        self.served.update(files)
        try:
            return push(self.workers, files), verify(self.learner, self.workers, probes, math.inf)
        except RayActorError:
            dead = [i for i, w in enumerate(self.workers) if not _alive(w)]
            if not dead:  # the learner died: the caller names it
                raise
        for i in dead:
            self.replace(i, step, probes)
        try:  # set_adapters is idempotent: workers that already took the new adapters take them again
            return push(self.workers, files), verify(self.learner, self.workers, probes, math.inf)
        except RayActorError:
            raise WorkerLost(f"a rollout worker died again at step {step}; {resume_hint(self.ckpt_root)}") from None

    def close(self) -> None:
        for w in self.workers:
            try:
                ray.get(w.close.remote(), timeout=60)
            except Exception:  # the worker may already be dead; it is killed next anyway
                pass
            ray.kill(w)


def lost(step: int, learner: LearnerGroup, pool: RolloutPool | None, ckpt_root: Path) -> WorkerLost:
    """Name the actor whose process died (learner workers first: they hold the optimizer state)."""
    at = f"at step {step}" if step else "before the first step"
    for rank, w in enumerate(learner.workers):
        if not _alive(w):
            return WorkerLost(f"learner worker {rank} (pid {learner.pids[rank]}) died {at}; {resume_hint(ckpt_root)}")
    for i, w in enumerate(pool.workers if pool else []):
        if not _alive(w):
            return WorkerLost(f"rollout worker {i} (pid {pool.pids[i]}) died {at}; {resume_hint(ckpt_root)}")
    return WorkerLost(f"a Ray actor became unreachable {at}; {resume_hint(ckpt_root)}")
