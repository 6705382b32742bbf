"""The RL driver: rollout -> rewards -> per-role advantages -> PPO update -> verified LoRA sync -> log -> checkpoint.

Runs in the process that calls `run_rl` (the `longshort rl` command, or a `ray job submit` entrypoint); the
engines and learners live in Ray actors (actors.py). Everything a resumed run needs is in the checkpoint:
rollout seeds are derived from (run seed, step), the data order from (run seed, epoch), so a run resumed
from step k reproduces the uninterrupted run's steps k+1... when the engine is deterministic (HF engine).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from longshort.config.recipe import Recipe
from longshort.data.rows import read_rows
from longshort.errors import ConfigError, DataError, UserError
from longshort.io import Rejects, append_jsonl, atomic_write_text, validated, write_json
from longshort.rl import checkpoint, operator
from longshort.run import open_run
from longshort.run.checkpoint import restore_rng, resume
from longshort.run.logs import METRICS, TENSORBOARD, MetricsLog, truncate
from longshort.run.schedule import take
from longshort.run.settings import settings
from longshort.rl.actors import LearnerGroup, RolloutWorker, read_adapter
from longshort.rl.advantages import assign_advantages
from longshort.rl.learner import Sample
from longshort.rl.rewards import COMPONENTS, assign_rewards
from longshort.rl.sync import SyncError, push, resolve_precision, verify
from longshort.types import ROLES, Episode

PROBE_TOKENS = 256  # probe length cap: enough positions to expose a stale adapter, cheap to score
OUTPUTS = ("checkpoints", METRICS, "episodes.jsonl", TENSORBOARD, "placement.json", "precision.json", "summary.md")
# Keys that may change between a run and its resume: how long to go on, how often to save or log, where to run.
FREE = tuple(f"rl.{k}" for k in ("steps", "checkpoint_every", "keep_checkpoints", "log_episodes", "ray_address",
                                 "ray_num_cpus", "rollout_actors", "rollout_cpus", "rollout_gpus", "learner_workers",
                                 "learner_cpus", "learner_gpus", "micro_batch_size", "sync_tolerance",
                                 "gradient_checkpointing"))


def resume_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings an RL checkpoint's state depends on: every key the stage reads except `FREE` (the engine's
    settings change how rollouts are computed, not the learner's state)."""
    keys = ("run.seed", "model", "roles", "protocol", "data.train", "data.on_error", *recipe.data.resume_keys(),
            "synthetic", "rl")
    return settings(recipe, keys, FREE)


# -- Ray ------------------------------------------------------------------------------------------
def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join `address` (or RAY_ADDRESS), or start a local cluster without the dashboard UI. True if we started Ray here.

    Ray 2.60 swaps the 127.0.0.1 node address for the machine's reachable IP and its gRPC servers listen on all
    interfaces, guarded by Ray's token authentication (docs/reliability.md).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
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


# -- faults ---------------------------------------------------------------------------------------
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


def _resume_hint(ckpt_root: Path) -> str:
    ck = checkpoint.latest(ckpt_root)
    where = f"checkpoint {ck.path.name}" if ck else "the start (no checkpoint yet)"
    return f"rerun with run.resume=auto to continue from {where}"


class RolloutPool:
    """The rollout actors. One whose process dies is replaced once per step by a fresh actor that serves the
    learner's current adapters (checked with the sync probe), and only its share of the step is redone: with the
    step's seed that share is the same episodes, so nothing is lost or sampled twice. A second death in the same
    step stops the run with `WorkerLost`."""

    def __init__(self, base: str, recipe: Recipe, learner: LearnerGroup, ckpt_root: Path) -> None:
        cfg = recipe.rl
        self.cls = ray.remote(num_cpus=cfg.rollout_cpus, num_gpus=cfg.rollout_gpus)(RolloutWorker)
        self.base, self.recipe, self.learner, self.ckpt_root = base, recipe, learner, ckpt_root
        files = ray.put(learner.export(list(ROLES)))  # rollouts start from the learner's adapters, fresh LoRA included
        self.workers = [self.cls.remote(base, recipe, files, recipe.run.seed + i) for i in range(cfg.rollout_actors)]
        self.pids: list[int] = ray.get([w.pid.remote() for w in self.workers])  # surfaces engine start-up errors here
        self.restarted_at: set[int] = set()

    def replace(self, i: int, step: int, probes: dict[str, list[int]]) -> None:
        """Start a new actor in slot `i` with the learner's current adapters and check it serves them."""
        what = f"rollout worker {i} (pid {self.pids[i]}) died at step {step}"
        if step in self.restarted_at:
            raise WorkerLost(f"{what}, after a restart in the same step; {_resume_hint(self.ckpt_root)}")
        self.restarted_at.add(step)
        print(f"longshort rl: {what}; restarting it and redoing its share of the step", file=sys.stderr)
        ray.kill(self.workers[i], no_restart=True)
        try:
            self.workers[i] = self.cls.remote(self.base, self.recipe, self.learner.export(list(ROLES)), self.recipe.run.seed + i)
            self.pids[i] = ray.get(self.workers[i].pid.remote())
            verify(self.learner, [self.workers[i]], probes, self.recipe.rl.sync_tolerance)
        except RayActorError:
            raise WorkerLost(f"{what} and its replacement failed to start; {_resume_hint(self.ckpt_root)}") from None

    def rollout(self, batch: list[dict[str, Any]], step: int, seed: int, probes: dict[str, list[int]]) -> list[Episode]:
        """The step's episodes: problems split over the workers; a dead worker's share is redone on its replacement."""
        n, g = len(self.workers), self.recipe.rl.group_size
        chunks = [batch[i::n] for i in range(n)]
        futures = [w.rollout.remote(c, g, step, seed) if c else None for w, c in zip(self.workers, chunks)]
        parts: list[list[Episode]] = []
        for i, f in enumerate(futures):
            if f is None:
                continue
            try:
                parts.append(ray.get(f))
            except RayActorError:
                self.replace(i, step, probes)
                try:
                    parts.append(ray.get(self.workers[i].rollout.remote(chunks[i], g, step, seed)))
                except RayActorError:
                    self.replace(i, step, probes)  # raises WorkerLost: the second death in this step
        return [ep for part in parts for ep in part]

    def sync(self, roles: list[str], probes: dict[str, list[int]], step: int) -> tuple[int, dict[str, float]]:
        """Push the updated adapters and measure them with the probe: (bytes sent, {role: max |engine − learner|}).
        The caller judges the diffs against rl.sync_tolerance, so a failed sync is logged (`sync/ok` false) before
        the run stops. A dead rollout worker is replaced and the sync redone."""
        try:
            return push(self.learner, self.workers, roles), verify(self.learner, self.workers, probes, math.inf)
        except RayActorError:
            dead = [i for i, w in enumerate(self.workers) if not _alive(w)]
            if not dead:  # the learner died: the caller names it
                raise
        for i in dead:
            self.replace(i, step, probes)
        try:  # set_adapters is idempotent: workers that already took the new adapters take them again
            return push(self.learner, self.workers, roles), verify(self.learner, self.workers, probes, math.inf)
        except RayActorError:
            raise WorkerLost(f"a rollout worker died again at step {step}; {_resume_hint(self.ckpt_root)}") from None

    def close(self) -> None:
        for w in self.workers:
            try:
                ray.get(w.close.remote(), timeout=60)
            except Exception:  # the worker may already be dead; it is killed next anyway
                pass
            ray.kill(w)


def _lost(step: int, learner: LearnerGroup, pool: RolloutPool | None, ckpt_root: Path) -> WorkerLost:
    """Name the actor whose process died (learner workers first: they hold the optimizer state)."""
    at = f"at step {step}" if step else "before the first step"
    for rank, w in enumerate(learner.workers):
        if not _alive(w):
            return WorkerLost(f"learner worker {rank} (pid {learner.pids[rank]}) died {at}; {_resume_hint(ckpt_root)}")
    for i, w in enumerate(pool.workers if pool else []):
        if not _alive(w):
            return WorkerLost(f"rollout worker {i} (pid {pool.pids[i]}) died {at}; {_resume_hint(ckpt_root)}")
    return WorkerLost(f"a Ray actor became unreachable {at}; {_resume_hint(ckpt_root)}")


# -- data -----------------------------------------------------------------------------------------
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


# -- training batch -------------------------------------------------------------------------------
def roles_to_train(recipe: Recipe, step: int) -> list[str]:
    """`joint`: both roles; `alternate`: alternate_k steps long (short frozen), then alternate_k steps short."""
    if recipe.rl.schedule == "joint":
        return list(ROLES)
    return [ROLES[((step - 1) // recipe.rl.alternate_k) % 2]]


def build_batches(episodes: list[Episode], roles: list[str], recipe: Recipe) -> tuple[dict[str, list[Sample]], dict[str, list[float]]]:
    """Each role's training sequences with their advantages, split in minibatches; the loss normaliser of each.
    Of an operator (pdr) episode only the calls `rl.operator_loss_on` names are trained (`operator.sequences`)."""
    cfg = recipe.rl
    batches: dict[str, list[Sample]] = {}
    norms: dict[str, list[float]] = {}
    for role in roles:
        samples = []
        for ep in episodes:
            if role not in ep.advantages:
                continue
            for seq, _ in operator.sequences(ep, role, cfg.operator_loss_on):
                samples.append(Sample(role, seq.input_ids, seq.mask, ep.advantages[role], engine_logprobs=seq.old_logprobs,
                                      temperatures=seq.temperatures, correct=bool(ep.correct)))
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


def nll_normalisers(batches: dict[str, list[Sample]]) -> dict[str, list[float]]:
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


# -- metrics --------------------------------------------------------------------------------------
def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    m: dict[str, float] = {}
    n = len(episodes)
    solved = [ep for ep in episodes if ep.correct]
    m["accuracy"] = len(solved) / n
    m["tokens"] = sum(ep.generated_tokens for ep in episodes) / n
    m["tokens_per_solved"] = sum(ep.generated_tokens for ep in solved) / len(solved) if solved else None  # null in the log: no solved episode
    m["turns"] = sum(len(ep.turns) for ep in episodes) / n
    m["rethink_rate"] = sum(1 for ep in episodes if ep.rethinks) / n
    m["rethinks"] = sum(ep.rethinks for ep in episodes) / n
    m["format_failures"] = sum(ep.format_failures for ep in episodes) / n
    for role in ROLES:
        eps = [ep for ep in episodes if role in ep.rewards]
        if not eps:
            continue
        k = len(eps)
        m[f"{role}/reward"] = sum(ep.rewards[role]["total"] for ep in eps) / k
        for c in COMPONENTS:
            m[f"{role}/reward/{c}"] = sum(ep.rewards[role][c] for ep in eps) / k
        m[f"{role}/accuracy"] = sum(1 for ep in eps if ep.correct) / k
        m[f"{role}/advantage_abs"] = sum(abs(ep.advantages.get(role, 0.0)) for ep in eps) / k
        m[f"{role}/tokens"] = sum(ep.tokens_by_role().get(role, 0) for ep in eps) / k
        m[f"{role}/turns"] = sum(sum(1 for t in ep.turns if t.role == role) for ep in eps) / k
        m[f"{role}/format_failures"] = sum(sum(1 for t in ep.turns if t.role == role and not t.format_ok) for ep in eps) / k
        if role == "short":
            m["short/rethink_rate"] = sum(1 for ep in eps if ep.rethinks) / k
    return m


def learner_metrics(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    m: dict[str, float] = {}
    for role, s in stats.items():
        tok = max(s["tokens"], 1.0)  # summed over epochs: per-token means
        m[f"{role}/pg_loss"] = s["pg"] / tok
        m[f"{role}/kl"] = s["kl"] / tok
        m[f"{role}/entropy"] = s["entropy"] / tok
        m[f"{role}/clip_frac"] = s["clipped"] / tok
        m[f"{role}/ratio"] = s["ratio"] / tok
        m[f"{role}/grad_norm"] = s["grad_norm"]
        m[f"{role}/lr"] = s["lr"]
        m[f"{role}/logprob_gap"] = s["gap"] / s["gap_tokens"] if s["gap_tokens"] else None
        m[f"{role}/logprob_gap_max"] = s["gap_max"]
        if s.get("nll_tokens"):  # rl.nll_coef > 0 and some episode was correct
            m[f"{role}/nll"] = s["nll"] / s["nll_tokens"]
    return m


def check_rollout_gap(stats: dict[str, dict[str, float]], tolerance: float) -> None:
    """Every sampled token's engine logprob must match the learner's (pre-update) one: the rollouts came from the
    policy being trained, not from a stale adapter or the bare base."""
    for role, s in stats.items():
        if s["gap_max"] > tolerance:
            raise SyncError(
                f"rollout check failed: the {role} tokens sampled this step have engine logprobs up to {s['gap_max']:.3g} "
                f"away from the learner's (tolerance rl.sync_tolerance={tolerance:g}); the rollouts did not come from "
                "the adapter being trained"
            )


# -- the loop -------------------------------------------------------------------------------------
def run_rl(recipe: Recipe, ray_address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) RL of both roles; returns a summary. Raises `SyncError` if a sync check fails."""
    from longshort.models import check_lora_targets, resolve_base
    from longshort.protocols.pdr import ORACLE

    if recipe.protocol.name == "pdr" and recipe.protocol.pdr_distill in ORACLE:  # before anything is written
        raise ConfigError(f"key 'protocol.pdr_distill' is {recipe.protocol.pdr_distill}: an evaluation-only mode (it "
                          "grades drafts against the gold answer), refused in RL rollouts")
    operator.check(recipe)
    run_dir = open_run(recipe, OUTPUTS)  # config.yaml as asked: `auto` stays `auto`
    recipe, precision = resolve_precision(recipe)  # concrete dtypes for every actor and the tolerance they imply
    settings_now = resume_settings(recipe)
    write_json(run_dir / "precision.json", precision)
    cfg = recipe.rl
    base = str(resolve_base(recipe.model.base, run_dir, recipe.model.tiny, recipe.run.seed,
                            chat_template=recipe.model.chat_template).resolve())
    problems = load_problems(recipe)
    for role in ROLES:
        path = getattr(recipe.roles, role).adapter
        if path and not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"key 'roles.{role}.adapter': {path} is not a PEFT adapter directory")
    if not all(getattr(recipe.roles, role).adapter for role in ROLES):  # a fresh adapter wraps rl.lora_targets
        check_lora_targets(Path(base), cfg.lora_targets, "rl.lora_targets", recipe.model.trust_remote_code)

    started_ray = connect_ray(ray_address or cfg.ray_address, cfg.ray_num_cpus)  # the command line beats the recipe
    pool: RolloutPool | None = None
    learner: LearnerGroup | None = None
    ckpt_root = run_dir / "checkpoints"
    step = 0
    try:
        check_resources(recipe, local=started_ray)
        # Resume only what was written with the same settings (a one-line error names the first changed key).
        ckpt = resume(ckpt_root, settings_now) if recipe.run.resume == "auto" else None
        ref = {r: read_adapter(p) if (p := getattr(recipe.roles, r).adapter) else None for r in ROLES}
        init = {r: read_adapter(ckpt.adapter(r)) for r in ROLES} if ckpt else ref
        learner = LearnerGroup(base, init, ref, recipe)
        start_step, cursor = 0, 0
        if ckpt:
            learner.load_trainer_state(checkpoint.trainer_bytes(ckpt))
            start_step, cursor = ckpt.step, int(ckpt.state["cursor"])
            restore_rng(ckpt)
        else:
            random.seed(recipe.run.seed)
        # Every log is cut back to the step resumed from, 0 (no checkpoint) included: no step is logged twice.
        episodes_path = run_dir / "episodes.jsonl"
        truncate(episodes_path, start_step, step_of=lambda ep: ep.get("meta", {}).get("step"))

        pool = RolloutPool(base, recipe, learner, ckpt_root)
        tokenizer_probe = _initial_probes(recipe, base, problems)
        initial = verify(learner, pool.workers, tokenizer_probe, cfg.sync_tolerance)
        # The node id of every actor: shows whether a multi-node cluster really spread the work (placement.json).
        placement = {
            "rollout": ray.get([w.node.remote() for w in pool.workers]),
            "learner": ray.get([w.node.remote() for w in learner.workers]),
        }
        write_json(run_dir / "placement.json", placement)

        metrics_log = MetricsLog(run_dir, start_step, recipe.run.report_to)
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, desc="rl", disable=not progress, dynamic_ncols=True)
        last: dict[str, float] = {}
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            batch = operator.route(recipe, batch_at(problems, cursor, cfg.problems_per_step, recipe.run.seed), cursor)
            cursor += cfg.problems_per_step
            step_seed = (recipe.run.seed * 1_000_003 + step) & 0x7FFFFFFF
            episodes = pool.rollout(batch, step, step_seed, tokenizer_probe)
            t1 = time.perf_counter()

            assign_rewards(episodes, cfg.rewards, recipe.roles.short.max_tokens)
            assign_advantages(episodes, cfg.estimator, ROLES)
            train_roles = roles_to_train(recipe, step)
            batches, norms = build_batches(episodes, train_roles, recipe)
            stats = learner.train(batches, norms, nll_normalisers(batches) if cfg.nll_coef else None) if batches else {}
            diverged = [f"{r} {k} {s[k]}" for r, s in stats.items() for k in ("pg", "grad_norm") if not math.isfinite(s[k])]
            if diverged:  # stop before this step's adapters reach a checkpoint, the engines or the final export
                raise UserError(f"rl: step {step}: training diverged ({', '.join(diverged)} not finite); no checkpoint "
                                "of this step is written (lower rl.lr?)")
            check_rollout_gap(stats, cfg.sync_tolerance)
            t2 = time.perf_counter()

            sent, diffs = pool.sync(list(batches), probes_from(episodes) or tokenizer_probe, step)
            t3 = time.perf_counter()

            row: dict[str, Any] = {"step": step, "cursor": cursor, "trained": sorted(batches)}
            row.update(episode_metrics(episodes))
            row.update(learner_metrics(stats))
            if recipe.protocol.name == operator.OPERATOR:  # per call kind and per rollout protocol
                row.update(operator.metrics(episodes, sorted(batches), cfg.operator_loss_on))
            row.update({f"sync/{r}_max_diff": d for r, d in diffs.items()})
            max_diff = max(diffs.values(), default=0.0)
            sync_ok = all(math.isfinite(d) and d <= cfg.sync_tolerance for d in diffs.values())  # NaN is a failure
            row.update({"sync/ok": sync_ok, "sync/max_abs_diff": max_diff, "sync/bytes": sent, "time/rollout": t1 - t0,
                        "time/learn": t2 - t1, "time/sync": t3 - t2})
            row["time/step"] = t3 - t0
            metrics_log.log(row)
            if not sync_ok:  # logged first, so the failed step's measured diff is on record; never checkpointed
                role = max(diffs, key=lambda r: (not math.isfinite(diffs[r]), diffs[r]))
                raise SyncError(
                    f"sync check failed at step {step}: the rollout engine's {role} adapter gives logprobs up to "
                    f"{diffs[role]:.3g} away from the learner's (tolerance rl.sync_tolerance={cfg.sync_tolerance:g}); "
                    f"the engine is not running the weights being trained (stale or mis-loaded adapter); no checkpoint "
                    f"of step {step} is written; {_resume_hint(ckpt_root)}"
                )
            for ep in episodes[: cfg.log_episodes]:
                append_jsonl(episodes_path, ep.to_dict())
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint.save(ckpt_root, step, learner.state(), {"cursor": cursor, "settings": settings_now}, cfg.keep_checkpoints)
            last = row
            bar.update(1)
            bar.set_postfix(acc=f"{row['accuracy']:.2f}", tok=f"{row['tokens']:.0f}", sync="ok")
        bar.close()
        metrics_log.close()
        summary = {"steps": cfg.steps, "resumed_from": start_step, "initial_sync": initial, "placement": placement,
                   "precision": precision, "last": last}
        _write_summary(run_dir, summary)
        return summary
    except RayActorError:
        if learner is None:  # died while the learner group was starting
            raise WorkerLost(f"a learner worker died while starting; {_resume_hint(ckpt_root)}") from None
        raise _lost(step, learner, pool, ckpt_root) from None
    finally:
        if pool is not None:
            pool.close()
        if learner is not None:
            learner.shutdown()
        if started_ray:
            ray.shutdown()


def _initial_probes(recipe: Recipe, base: str, problems: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Before any rollout: each role's prompt for the first problem (enough to catch a wrong starting adapter)."""
    from longshort.chat import encode, prompt_text
    from longshort.models import load_tokenizer

    tok = load_tokenizer(base)
    return {
        role: encode(tok, prompt_text(tok, getattr(recipe.roles, role).system_prompt, problems[0]["problem"], [], role))[:PROBE_TOKENS]
        for role in ROLES
    }


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    last = summary["last"]
    lines = [f"# RL run {run_dir.name}", "", f"steps: {summary['steps']} (resumed from step {summary['resumed_from']})", ""]
    place = summary["placement"]
    nodes = {n for ids in place.values() for n in ids}
    lines += [f"Ray nodes used: {len(nodes)} (" + "; ".join(f"{k}: {', '.join(v)}" for k, v in place.items()) + ")", ""]
    p = summary["precision"]
    lines += [f"Precision: learner {p['learner']['resolved']} on {p['learner']['device']}, engine {p['engine']['resolved']} on "
              f"{p['engine']['device']}, sync tolerance {p['sync_tolerance']:g} (precision.json)", ""]
    keys = ["accuracy", "tokens", "tokens_per_solved", "rethink_rate", "long/reward", "short/reward", "long/kl", "short/kl"]
    lines += ["| metric | last step |", "|---|---|"] + [f"| {k} | {'-' if last[k] is None else format(last[k], '.4g')} |" for k in keys if k in last]
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")

